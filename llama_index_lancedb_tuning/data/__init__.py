"""Input: labeled CSV, QA JSON and documents as a `QADataset`, and chunking into model-sized nodes that keep their source id.

Imports nothing: the CLI checks its arguments before torch loads."""
