"""The data a `lancedb-tune run` or `evaluate` names, loaded: a labeled file, a BEIR folder, documents
with labeled queries, or an existing table with labeled queries.

A BEIR folder trains on its `train` qrels; `run` scores its `test` qrels when it has them, else a
seeded split of `train`, and `evaluate` scores `test` or the split `--split` names.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..config import RunConfig
from ..data.beir import DEFAULT_SPLIT, TRAIN_SPLIT, beir_splits, is_beir_folder, load_beir, load_beir_splits
from ..data.documents import load_documents
from ..data.labeled_csv import load_qa_dataset
from ..data.qa_dataset import QADataset
from ..evaluation.caveats import check_data_size

if TYPE_CHECKING:
    import lancedb


@dataclass
class RunData:
    """What `tune_and_evaluate` is given: see its arguments of the same names."""

    dataset: QADataset
    dataset_path: str
    eval_dataset: QADataset | None = None
    documents: dict[str, str] | None = None
    source_table: lancedb.table.Table | None = None
    split: tuple[QADataset, QADataset] | None = None


def run_data(args: argparse.Namespace, config: RunConfig) -> RunData:
    """The datasets `lancedb-tune run` trains and scores on, checked against the run's settings."""
    labeled = args.data
    if args.table:
        from ..store.table import connect, open_table

        data = RunData(load_qa_dataset(args.queries, args.query_column, args.context_column), args.queries)
        data.source_table = open_table(connect(args.table), args.table_name)
    elif args.queries:
        data = RunData(load_qa_dataset(args.queries, args.query_column, args.context_column), args.queries)
        data.documents = load_documents(labeled)
    elif is_beir_folder(labeled):
        scores_test = DEFAULT_SPLIT in beir_splits(labeled) and args.eval_data is None
        train, *test = load_beir_splits(labeled, [TRAIN_SPLIT, DEFAULT_SPLIT] if scores_test else [TRAIN_SPLIT])
        data = RunData(train, labeled, split=(train, test[0]) if test else None)
    else:
        data = RunData(load_qa_dataset(labeled, args.query_column, args.context_column), labeled)
    if args.eval_data:
        data.eval_dataset = load_qa_dataset(args.eval_data, args.query_column, args.context_column)
    scored = data.eval_dataset or (data.split[1] if data.split else data.dataset)
    carves = config.pairs == "labeled" and data.eval_dataset is None and data.split is None
    check_data_size(scored, config.k, config.test_size if carves else None)
    return data


def evaluate_data(args: argparse.Namespace, config: RunConfig) -> QADataset:
    """The labeled queries `lancedb-tune evaluate` scores, all of them."""
    if is_beir_folder(args.data):
        dataset = load_beir(args.data, args.split or DEFAULT_SPLIT)
    else:
        dataset = load_qa_dataset(args.data, args.query_column, args.context_column)
    check_data_size(dataset, config.k, None)
    return dataset
