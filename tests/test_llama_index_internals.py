"""The private parts of LlamaIndex integrations read in `llama_index_internals` still exist in the
installed packages: a release that renames one fails here, not in a user's app."""

from __future__ import annotations

import pytest
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
from llama_index.embeddings.huggingface import HuggingFaceEmbedding
from llama_index.postprocessor.cohere_rerank import CohereRerank
from sentence_transformers import SentenceTransformer

from llama_index_lancedb_tuning.common.llama_index_internals import replace_cohere_client, sentence_transformer_of


def test_a_huggingface_embedding_exposes_its_sentence_transformer(default_model_path):
    model = HuggingFaceEmbedding(model_name=default_model_path, device="cpu")
    inner = sentence_transformer_of(model)
    assert isinstance(inner, SentenceTransformer), "HuggingFaceEmbedding no longer keeps its model in _model"
    assert inner.tokenizer is not None
    assert sentence_transformer_of(MockEmbedding(embed_dim=4)) is None


def test_a_cohere_reranker_takes_a_replacement_client():
    class Recorder:
        def __init__(self) -> None:
            self.calls = 0

        def rerank(self, **kwargs):
            self.calls += 1
            raise RuntimeError("called")

    reranker = CohereRerank(api_key="not-used", top_n=1)
    recorder = Recorder()
    replace_cohere_client(reranker, recorder)
    with pytest.raises(RuntimeError, match="called"):
        reranker.postprocess_nodes([NodeWithScore(node=TextNode(text="a"))], QueryBundle("q"))
    assert recorder.calls == 1, "CohereRerank no longer sends its requests through _client"
