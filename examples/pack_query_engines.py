"""Compose FinetunedLanceDBRetrieverPack into LlamaIndex query engines, a chat engine and a fusion retriever.

Runs offline: it writes a tiny corpus to a temporary folder, indexes it with the bundled
embedding model (or --model PATH, e.g. your fine-tuned one) in a temporary LanceDB, and uses
LlamaIndex's MockLLM where an LLM is needed. Swap MockLLM for a real LLM in your app.

    python examples/pack_query_engines.py [--docs DIR] [--model PATH]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from llama_index.core import SimpleDirectoryReader
from llama_index.core.chat_engine import CondensePlusContextChatEngine
from llama_index.core.llms import MockLLM
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.retrievers import QueryFusionRetriever

from llama_index_lancedb_tuning.pack import FinetunedLanceDBRetrieverPack

CORPUS = {
    "lancedb.txt": "LanceDB is an embedded vector database built on the Lance columnar format. "
    "It stores vectors next to the text and metadata, and supports full-text search with BM25.",
    "finetuning.txt": "Fine-tuning an embedding model on question and passage pairs from your own documents "
    "usually raises retrieval hit-rate, because the model learns the vocabulary of the domain.",
    "hybrid.txt": "Hybrid search runs a vector query and a keyword query and fuses the two ranked lists, "
    "for example with reciprocal rank fusion, so exact terms and paraphrases both match.",
    "rerank.txt": "A reranker reorders the candidates a retriever returns. Cross-encoders and hosted "
    "rerankers such as Cohere look at the query and the passage together.",
    "llamaindex.txt": "LlamaIndex composes retrievers, node postprocessors and response synthesizers into "
    "query engines and chat engines that answer questions over your data.",
}
QUESTION = "How does hybrid search combine keyword and vector results?"


def show(title: str, nodes) -> None:
    print(f"\n== {title}")
    for n in nodes:
        print(f"  {n.score:8.4f}  {n.node.get_content()[:70]!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", help="index this folder instead of the built-in tiny corpus")
    parser.add_argument("--model", help="embedding model directory or hub id (default: the bundled MiniLM)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        docs_dir = Path(args.docs) if args.docs else Path(tmp) / "docs"
        if not args.docs:
            docs_dir.mkdir()
            for name, text in CORPUS.items():
                (docs_dir / name).write_text(text, encoding="utf-8")
        documents = SimpleDirectoryReader(str(docs_dir)).load_data()
        pack = FinetunedLanceDBRetrieverPack(
            documents=documents, embed_model=args.model, uri=str(Path(tmp) / "lancedb"), table_name="docs", similarity_top_k=3
        )
        modules = pack.get_modules()
        retrievers = modules["retrievers"]
        print("pack modules:", ", ".join(sorted(modules)))

        # 1. The pack on its own: without an LLM, run() returns the retrieved nodes.
        show("pack.run (hybrid, no LLM)", pack.run(QUESTION))

        # 2. One of the pack's retrievers inside LlamaIndex's RetrieverQueryEngine.
        engine = RetrieverQueryEngine.from_args(retrievers["reranked_vector"], llm=MockLLM(max_tokens=16))
        response = engine.query(QUESTION)
        show("RetrieverQueryEngine over reranked_vector", response.source_nodes)

        # 3. The pack's VectorStoreIndex (LlamaIndex's own LanceDBVectorStore on the same table).
        response = modules["index"].as_query_engine(llm=MockLLM(max_tokens=16), similarity_top_k=3).query(QUESTION)
        show("index.as_query_engine", response.source_nodes)

        # 4. A chat engine that retrieves with the pack's hybrid retriever on every turn.
        chat = CondensePlusContextChatEngine.from_defaults(retrievers["hybrid"], llm=MockLLM(max_tokens=16))
        chat.chat("Tell me about LanceDB.")
        reply = chat.chat("And how does it do keyword search?")
        show("CondensePlusContextChatEngine (second turn)", reply.source_nodes)
        context = modules["index"].as_chat_engine(chat_mode="context", llm=MockLLM(max_tokens=16))
        show("index.as_chat_engine(chat_mode='context')", context.chat(QUESTION).source_nodes)

        # 5. LlamaIndex's QueryFusionRetriever over the pack's vector and full-text retrievers.
        # num_queries=1 uses the question as is, so the LLM is never asked to write variants.
        fusion = QueryFusionRetriever(
            [retrievers["vector"], retrievers["fts"]],
            llm=MockLLM(),
            mode="reciprocal_rerank",
            similarity_top_k=3,
            num_queries=1,
            use_async=False,
        )
        show("QueryFusionRetriever(vector + fts)", fusion.retrieve(QUESTION))
        print("\nok")


if __name__ == "__main__":
    main()
