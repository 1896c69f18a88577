"""Fine-tunes on a slice of data_qa in each process torchrun starts; tests/test_distributed.py launches it.

    torchrun --standalone --nproc_per_node 2 tests/ddp_train.py DATA_QA_CSV OUT_DIR

Both recipes, one after the other in the same processes (one start-up): full tuning, which
validates each epoch, records its selection and refits, into OUT_DIR/full; and query-only
tuning (`QueryOnlyLoss`, validated against the frozen passages) into OUT_DIR/query.
"""

from __future__ import annotations

import sys
from pathlib import Path

from llama_index_lancedb_tuning import EmbeddingFinetuner, FinetuneConfig, QADataset, load_labeled_csv

data_path, out = sys.argv[1], Path(sys.argv[2])
full = load_labeled_csv(data_path)
ids = full.query_ids[:40]
docs = {d for q in ids for d in full.relevant_docs[q]}
train = QADataset(
    {q: full.queries[q] for q in ids},
    {d: t for d, t in full.corpus.items() if d in docs},
    {q: full.relevant_docs[q] for q in ids},
)
EmbeddingFinetuner(FinetuneConfig(epochs=1, batch_size=8, refit=True, show_progress=False)).fit(train, out / "full")
EmbeddingFinetuner(FinetuneConfig(epochs=1, batch_size=8, show_progress=False, freeze_passages=True)).fit(train, out / "query")
