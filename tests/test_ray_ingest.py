"""Ingest on Ray: a local Ray cluster writes the table the single-process writer writes."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from conftest import DATA_QA
from test_object_store import BUCKET, s3  # noqa: F401  (the s3 fixture: moto's S3 server)

from llama_index_lancedb_tuning import LanceDBIndex, TuningError
from llama_index_lancedb_tuning.cli import main
from llama_index_lancedb_tuning.store.table import connect, write_nodes


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="ray[data] is in the test extra")
    pytest.importorskip("lance_ray", reason="lance-ray is in the test extra")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_table_equals_the_single_process_table(ray_cluster, tmp_path, small_nodes, small_dataset, embed_model):
    uri = str(tmp_path / "db")
    ray_index = LanceDBIndex.build(small_nodes, None, uri=uri, table_name="ray", engine="ray", show_progress=False)
    local = write_nodes(small_nodes, embed_model, connect(uri), "local", show_progress=False)

    ray_rows, local_rows = ray_index.table.to_arrow().sort_by("id"), local.to_arrow().sort_by("id")
    assert ray_rows.schema == local_rows.schema
    assert ray_rows.num_rows == len(small_nodes)
    # Ids, texts and metadata (the nodes themselves) are identical; vectors agree to float noise.
    assert ray_rows.drop(["vector"]).equals(local_rows.drop(["vector"]))
    vectors = [np.asarray(t.column("vector").to_pylist(), dtype=np.float32) for t in (ray_rows, local_rows)]
    assert np.abs(vectors[0] - vectors[1]).max() < 1e-5
    assert [i.index_type for i in ray_index.table.list_indices()] == ["FTS"]

    local_index = LanceDBIndex(local, embed_model)
    for query_type in ("vector", "fts", "hybrid"):
        ray_retriever, local_retriever = ray_index.retriever(query_type), local_index.retriever(query_type)
        for query in list(small_dataset.queries.values())[:5]:
            got = [n.node.node_id for n in ray_retriever.retrieve(query)]
            assert got == [n.node.node_id for n in local_retriever.retrieve(query)], (query_type, query)


def test_ray_appends_to_a_table_on_s3_and_refuses_to_create_over_it(ray_cluster, s3, small_nodes, embed_model):  # noqa: F811
    client, options = s3
    uri = f"s3://{BUCKET}/ray"
    first, rest = small_nodes[:10], small_nodes[10:20]
    write_nodes(first, embed_model, connect(uri, options), show_progress=False)
    with pytest.raises(TuningError, match="already exists.*mode='append'"):
        LanceDBIndex.build(rest, None, uri=uri, storage_options=options, engine="ray", show_progress=False)
    index = LanceDBIndex.build(rest, None, uri=uri, mode="append", storage_options=options, engine="ray", show_progress=False)
    assert sorted(index.table.to_arrow().column("id").to_pylist()) == sorted(n.node_id for n in first + rest)
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix="ray/").get("Contents", [])]
    assert any(k.startswith("ray/nodes.lance/data/") for k in keys), keys  # the workers wrote into the bucket
    # The appended rows are searchable by text at once: the full-text index was rebuilt over them.
    assert rest[3].node_id in [n.node.node_id for n in index.retriever("fts", 20).retrieve(rest[3].text)]


def test_without_ray_the_option_says_how_to_install_it(monkeypatch, tmp_path, capsys, small_nodes):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real_find_spec(name, *a))
    with pytest.raises(TuningError, match=r"needs ray: pip install 'llama-index-lancedb-tuning\[ray\]'"):
        LanceDBIndex.build(small_nodes[:2], None, uri=str(tmp_path / "db"), engine="ray")
    assert main(["evaluate", str(DATA_QA), "--out", str(tmp_path / "out"), "--engine", "ray"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "[ray]" in err
