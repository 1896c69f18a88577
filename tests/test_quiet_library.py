"""A library is quiet: building a pack and querying it prints nothing, on stdout or stderr, at any log level."""

import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import DATA_QA

ROOT = Path(__file__).resolve().parents[1]

APP = textwrap.dedent(
    """
    import logging, sys
    logging.basicConfig(level=logging.INFO)  # an app that logs INFO: sentence-transformers would show "Batches" bars
    import pandas as pd
    from llama_index.core import Document
    from llama_index_lancedb_tuning import FinetunedLanceDBRetrieverPack

    rows = pd.read_csv(sys.argv[1]).drop_duplicates("context").head(6)
    docs = [Document(text=t, doc_id=f"d{i}") for i, t in enumerate(rows["context"])]
    pack = FinetunedLanceDBRetrieverPack(documents=docs, uri=sys.argv[2], table_name="docs")
    for query_type, retriever in pack.get_modules()["retrievers"].items():
        for query in rows["query"]:
            assert retriever.retrieve(query), query_type
    assert pack.run("How was Llama 2-Chat made safer?")
    """
)


def test_building_and_querying_a_pack_prints_nothing(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", APP, str(DATA_QA), str(tmp_path / "lancedb")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "HOME": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # Our own loggers may speak at INFO in an app that asks for it; nothing else may print.
    noise = [line for line in (done.stdout + done.stderr).splitlines() if not line.startswith("INFO:llama_index_lancedb_tuning")]
    noise = [line for line in noise if not line.startswith("INFO:")]  # other libraries' INFO records the app asked for
    assert noise == [], "\n".join(noise[:20])
