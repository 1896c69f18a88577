"""The five query types as LlamaIndex retrievers, the rerankers, and the `LanceDBIndex` facade.

Imports nothing: the CLI checks its arguments before torch loads."""
