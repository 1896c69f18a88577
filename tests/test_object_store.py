"""The index on S3-compatible object storage (moto's server on 127.0.0.1), through LanceDB's own storage options."""

from __future__ import annotations

import hashlib
import re
import socket

import numpy as np
import pytest
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode

from llama_index_lancedb_tuning.search.index import LanceDBIndex

moto_server = pytest.importorskip("moto.server", reason="moto[server] is in the test extra")
boto3 = pytest.importorskip("boto3")

BUCKET = "tuning-index"


class HashEmbedding(BaseEmbedding):
    """Bag of hashed words: deterministic, offline, and a text's nearest neighbour is itself."""

    def _vector(self, text: str) -> list[float]:
        v = np.zeros(64)
        for word in re.findall(r"\w+", text.lower()):
            v[int(hashlib.md5(word.encode()).hexdigest(), 16) % 64] += 1.0
        return (v / max(np.linalg.norm(v), 1e-9)).tolist()

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._vector(query)

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._vector(text)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._vector(query)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3():
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="x", aws_secret_access_key="x", region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    options = {
        "aws_endpoint": endpoint,
        "aws_access_key_id": "x",
        "aws_secret_access_key": "x",
        "aws_region": "us-east-1",
        "allow_http": "true",
    }
    yield client, options
    server.stop()


def _nodes(prefix: str, n: int) -> list[TextNode]:
    topics = ["freight", "riders", "drivers", "safety", "revenue", "delivery", "insurance", "regulation"]
    return [
        TextNode(
            id_=f"{prefix}{i}",
            text=f"Section {prefix}{i} covers {topics[i % len(topics)]} and the code word zq{prefix}{i}x in quarter {i % 4 + 1}.",
            relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=f"doc{i // 3}")},
        )
        for i in range(n)
    ]


def test_build_query_reopen_append_on_s3(s3):
    client, options = s3
    uri = f"s3://{BUCKET}/indexes"
    nodes = _nodes("a", 24)
    index = LanceDBIndex.build(nodes, HashEmbedding(), uri=uri, table_name="nodes", storage_options=options, show_progress=False)
    assert index.table.count_rows() == len(nodes)
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix="indexes/").get("Contents", [])]
    assert any(k.startswith("indexes/nodes.lance/") for k in keys), keys  # the data really lives in the bucket

    target = nodes[5]
    hits = index.retriever("vector", 3).retrieve(target.text)
    assert hits[0].node.node_id == target.node_id
    assert hits[0].node.ref_doc_id == target.ref_doc_id  # LlamaIndex node round-trips through S3

    # Full-text search: LanceDB's native FTS index is stored beside the data, so it works on S3 too.
    fts = index.retriever("fts", 3).retrieve("zqa7x")
    assert [h.node.node_id for h in fts][:1] == ["a7"]
    hybrid = index.retriever("hybrid", 3).retrieve(nodes[9].text)
    assert nodes[9].node_id in [h.node.node_id for h in hybrid]

    # Reopen from the bucket without re-embedding, append, and find the new text at once.
    reopened = LanceDBIndex.open(HashEmbedding(), uri=uri, table_name="nodes", storage_options=options)
    reopened.add(_nodes("b", 6))
    assert reopened.table.count_rows() == len(nodes) + 6
    assert [h.node.node_id for h in reopened.retriever("fts", 1).retrieve("zqb4x")] == ["b4"]
    assert reopened.retriever("vector", 1).retrieve(_nodes("b", 6)[2].text)[0].node.node_id == "b2"
