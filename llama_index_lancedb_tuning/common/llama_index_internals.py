"""The private parts of LlamaIndex integrations this package reads, in one place.

`HuggingFaceEmbedding` keeps its sentence-transformers model in `_model` and `CohereRerank` its
Cohere client in `_client`; neither offers a public way to them. Encoding in parallel replicas
needs the first, and bounding Cohere's timeouts and retries needs to replace the second. They are
read and written here only, where `tests/test_llama_index_internals.py` checks them against the
installed packages, so a release that renames one fails that test instead of a user's app.
"""

from __future__ import annotations

from typing import Any

COHERE_CLIENT = "_client"
SENTENCE_TRANSFORMER = "_model"


def sentence_transformer_of(embed_model: Any) -> Any | None:
    """The sentence-transformers model behind a `HuggingFaceEmbedding`; None for any other embedding.

    Args:
        embed_model: a LlamaIndex embedding.
    """
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

    if not isinstance(embed_model, HuggingFaceEmbedding):
        return None
    return getattr(embed_model, SENTENCE_TRANSFORMER, None)


def replace_cohere_client(reranker: Any, client: Any) -> None:
    """Make a `CohereRerank` send its requests through `client`, which speaks `cohere.ClientV2`'s `rerank`.

    Args:
        reranker: the `CohereRerank` postprocessor.
        client: the client it uses from now on.
    """
    if COHERE_CLIENT not in type(reranker).__private_attributes__:
        raise AttributeError(f"{type(reranker).__name__} no longer keeps its client in `{COHERE_CLIENT}`")
    setattr(reranker, COHERE_CLIENT, client)
