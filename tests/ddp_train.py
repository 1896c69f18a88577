"""Fine-tunes on a slice of data_qa in each process torchrun starts; tests/test_distributed.py launches it.

torchrun --nproc_per_node 2 tests/ddp_train.py DATA_QA_CSV OUT_DIR
"""

from __future__ import annotations

import sys

from llama_index_lancedb_tuning import EmbeddingFinetuner, FinetuneConfig, QADataset, load_labeled_csv

data_path, out = sys.argv[1], sys.argv[2]
full = load_labeled_csv(data_path)
ids = full.query_ids[:40]
docs = {d for q in ids for d in full.relevant_docs[q]}
train = QADataset(
    {q: full.queries[q] for q in ids},
    {d: t for d, t in full.corpus.items() if d in docs},
    {q: full.relevant_docs[q] for q in ids},
)
# One epoch of selection and one of refit: both stages, the selection record and the checkpoint removal run under DDP.
EmbeddingFinetuner(FinetuneConfig(epochs=1, batch_size=8, show_progress=False)).fit(train, out)
