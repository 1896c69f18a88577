"""The do-no-harm gate, versions and rollback on the data_qa table, checked end to end (`done_when`).

The pack indexes data_qa.csv's contexts (the bundled model, 128-token nodes) and serves
`--query-type` (default hybrid) at k=5; the gate scores that query type. On the run's split (test_size 0.2, seed 42: 176 training, 44 held-out queries),
the gate's validation queries are a fifth of the training ones (seed 42), labeled correctly,
given to both tunes as `eval_dataset`; the other 140 train:

1. a harmful tune: those 140 queries' labels shuffled among them, 4 epochs at lr 5e-4; the gate
   must refuse it, and the pack's answers to the 44 held-out queries stay as they were (carved
   from the shuffled labels, the gate's queries would be wrong too, and no model could be
   judged on them);
2. a real tune of the 140 with the recommended recipe: it must be promoted to a higher table
   version, and the answers change;
3. `rollback()`: the answers must be exactly the first ones again.

    python benchmarks/swap_gate.py [--data ../shared/data/data_qa.csv] [--mode query|full] [--query-type T] [--epochs E]
    python benchmarks/swap_gate.py --swap-rows N

`--swap-rows N` measures only the swap itself, on N synthetic 384-dim rows with data_qa-sized
text: a promotion as a new version of the table (`versions.promote`: pending record, one commit
of every row, settled record, full-text index) against writing the same rows into a new table
with its full-text index, the alternative a swap of tables would need (LanceDB OSS has no
`rename_table`, so readers would also have to move to the new table's name).

`--mode` picks the recipe of both tunes (default query: nothing is re-embedded, the fast one on
a CPU); `--epochs` overrides the real tune's epochs. Prints one line per step and, last, one
JSON object: each verdict, the table versions, the held-out hit@5 of the served query type
before and after, whether the answers changed, and the seconds each step took. When the real
tune is refused there is nothing to roll back, and `done_when` is false.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from llama_index_lancedb_tuning import (
    QUERY_TYPES,
    FinetunedLanceDBRetrieverPack,
    QADataset,
    chunk_corpus,
    load_labeled_csv,
    model_tokenizer,
    resolve_model,
)

ROOT = Path(__file__).resolve().parents[1]


def shuffled_labels(dataset: QADataset, seed: int = 0) -> QADataset:
    """The same queries and corpus, each query pointing at another query's documents."""
    targets = [dataset.relevant_docs[q] for q in dataset.query_ids]
    random.Random(seed).shuffle(targets)
    return QADataset(dict(dataset.queries), dataset.corpus, dict(zip(dataset.query_ids, targets)))


def answers(pack: FinetunedLanceDBRetrieverPack, test: QADataset) -> list[list[str]]:
    return [[hit.node.node_id for hit in pack.run(test.queries[q])] for q in test.query_ids]


def swap_seconds(n: int) -> dict:
    """Seconds to promote n re-embedded rows as a version, and to write them as a new table instead."""
    from llama_index_lancedb_tuning.store.encoder_record import EncoderNames, record_encoders
    from llama_index_lancedb_tuning.store.table import connect, ensure_fts_index, table_schema
    from llama_index_lancedb_tuning.store.versions import promote

    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(5000)]

    def rows(seed: int) -> pa.Table:
        vectors = np.random.default_rng(seed).standard_normal((n, 384)).astype(np.float32)
        return pa.Table.from_pydict(
            {
                "id": [f"n{i}" for i in range(n)],
                "doc_id": [f"d{i // 4}" for i in range(n)],
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), 384),
                "text": [" ".join(rng.choice(words, 100)) for _ in range(n)],
                "metadata": [None] * n,
            },
            schema=table_schema(384),
        )

    with tempfile.TemporaryDirectory() as tmp:
        db = connect(tmp)
        table = db.create_table("docs", rows(1))
        record_encoders(table, EncoderNames("a", "a"))
        ensure_fts_index(table)
        new = table.to_arrow().set_column(2, table.schema.field("vector"), rows(2).column("vector"))
        t = time.perf_counter()
        promote(table, EncoderNames("b", "b"), EncoderNames("a", "a"), {}, new)
        as_version = time.perf_counter() - t
        t = time.perf_counter()
        ensure_fts_index(db.create_table("docs_new", new))
        as_table = time.perf_counter() - t
    return {"rows": n, "promote_as_version_s": round(as_version, 2), "write_new_table_s": round(as_table, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "data_qa.csv"))
    parser.add_argument("--mode", choices=["query", "full"], default="query")
    parser.add_argument("--query-type", default="hybrid", choices=list(QUERY_TYPES))
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--swap-rows", type=int, default=None)
    args = parser.parse_args()
    if args.swap_rows:
        print(json.dumps(swap_seconds(args.swap_rows)))
        return

    start = time.perf_counter()
    labeled = load_labeled_csv(args.data)
    train, test = labeled.split(0.2, seed=42)
    fit, validation = train.split(0.2, seed=42)
    model = resolve_model(None)
    nodes = chunk_corpus(labeled.corpus, model_tokenizer(model), 128, 16)
    out: dict = {
        "mode": args.mode,
        "n_train": len(fit),
        "n_validation": len(validation),
        "n_test": len(test),
        "n_nodes": len(nodes),
    }
    with tempfile.TemporaryDirectory() as tmp:
        pack = FinetunedLanceDBRetrieverPack(
            nodes=nodes, embed_model=model, uri=tmp, table_name="docs", query_type=args.query_type
        )
        first = answers(pack, test)

        def served_hit_rate() -> float:
            return next(r.hit_rate for r in pack.evaluate(test) if r.query_type == args.query_type)

        hit = {"before": served_hit_rate()}
        out["version_before"] = pack.get_modules()["table"].version

        t = time.perf_counter()
        harmful = pack.finetune(
            shuffled_labels(fit), args.mode, Path(tmp) / "harmful", eval_dataset=validation, epochs=4, learning_rate=5e-4
        )
        out["harmful"] = {
            "promoted": harmful.promoted,
            "reason": harmful.reason,
            "version": harmful.version,
            "answers_unchanged": answers(pack, test) == first,
            "seconds": round(time.perf_counter() - t, 1),
        }
        print("harmful:", harmful.reason)

        t = time.perf_counter()
        overrides = {} if args.epochs is None else {"epochs": args.epochs}
        real = pack.finetune(fit, args.mode, Path(tmp) / "real", eval_dataset=validation, **overrides)
        tuned_answers = answers(pack, test)
        hit["after_real"] = served_hit_rate()
        out["real"] = {
            "promoted": real.promoted,
            "reason": real.reason,
            "version": real.version,
            "answers_changed": tuned_answers != first,
            "seconds": round(time.perf_counter() - t, 1),
        }
        print("real:", real.reason)

        if real.promoted:
            t = time.perf_counter()
            version = pack.rollback()
            out["rollback"] = {
                "version": version,
                "answers_exactly_first": answers(pack, test) == first,
                "seconds": round(time.perf_counter() - t, 1),
            }
            print(f"rollback: version {version}, answers exactly the first: {out['rollback']['answers_exactly_first']}")
        out["history"] = [
            {"number": p.number, "version": p.version, "mode": p.mode, "serving": p.serving, "figures": p.figures}
            for p in pack.history()
        ]
    out["query_type"] = args.query_type
    out["test_hit@5"] = hit
    out["done_when"] = (
        not out["harmful"]["promoted"]
        and out["harmful"]["answers_unchanged"]
        and out["real"]["promoted"]
        and out["real"]["version"] > out["version_before"]
        and out["real"]["answers_changed"]
        and out.get("rollback", {}).get("answers_exactly_first", False)
    )
    out["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
