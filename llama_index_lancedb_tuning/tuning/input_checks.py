"""The files and table a `lancedb-tune` command names, checked before torch, sentence-transformers or
LanceDB is imported: a wrong path is answered with one line in a fraction of a second.

Standard library only.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..data.beir import DEFAULT_SPLIT, TRAIN_SPLIT, check_beir_folder, is_beir_folder
from ..errors import TuningError
from .run_files import REPORT_FILE, check_run_directory


def _check_labeled_file(path: str, command: str, flag: str = "", split: str = DEFAULT_SPLIT) -> None:
    """A readable labeled CSV or JSON file, or a BEIR folder with `split`'s qrels, checked before the
    loaders (and torch) are imported.

    `flag`: the option that named the file, to start the message with.
    """
    target, named = Path(path), f"{flag} {path}".lstrip()
    if is_beir_folder(target):
        check_beir_folder(target, split)
        return
    if target.is_dir():
        if command == "run":
            raise TuningError(f"{named} is a documents directory; pass a labeled CSV to evaluate on with --queries")
        raise TuningError(f"{named} is a directory; pass a labeled CSV file")
    if not target.exists():
        raise TuningError(f"{named}: no such file; check the path")
    try:
        target.open("rb").close()
    except OSError as exc:
        raise TuningError(f"{named}: cannot read ({exc.strerror}); check its permissions") from None


def _check_writable_file(path: str) -> None:
    """`path` can be written: not a directory, its nearest existing folder takes a new file."""
    import tempfile

    target = Path(path)
    if target.is_dir():
        raise TuningError(f"--out {path} is a directory; pass the JSON file to write")
    folder = target.parent
    while not folder.exists():
        folder = folder.parent
    try:
        if not folder.is_dir():
            raise NotADirectoryError(20, "not a directory")
        tempfile.TemporaryFile(dir=folder).close()  # the one sure test: permissions, read-only mounts, quotas
    except OSError as exc:
        raise TuningError(f"cannot write --out {path}: {folder} ({exc.strerror}); choose another --out") from None


def _check_table(uri: str, name: str, flag: str = "--table") -> None:
    """A local table is there (a LanceDB table is the directory NAME.lance); a remote one is checked on opening.

    `flag`: the option that named the LanceDB, to start the message with.
    """
    if "://" in uri:
        return
    folder = Path(uri).expanduser()
    if folder.is_file():
        raise TuningError(f"{flag} {uri} is a file, not a LanceDB directory; pass the folder that holds the table")
    if not folder.is_dir():
        raise TuningError(f"{flag} {uri}: no such LanceDB directory; check the path")
    if not (folder / f"{name}.lance").is_dir():
        held = ", ".join(sorted(p.name.removesuffix(".lance") for p in folder.glob("*.lance"))) or "no tables"
        raise TuningError(f"{flag} {uri} has no table '{name}' (it holds: {held}); check --table-name")


def _check_model_path(model: str | None, flag: str) -> None:
    """A run directory passed where its model is meant: name the model folder inside it."""
    if model is None:
        return
    folder = Path(model).expanduser()
    if (folder / REPORT_FILE).is_file() and (folder / "model").is_dir():
        raise TuningError(f"{flag} {model} is a lancedb-tune run directory; pass {folder / 'model'}, the model it saved")


def _check_out(args: argparse.Namespace) -> None:
    """`--out` names a place: an empty one would be the current folder, silently."""
    if not args.out.strip():
        what = "the JSON file to write" if args.command == "generate" else "a directory for the run (e.g. --out runs/first)"
        raise TuningError(f"--out is empty; pass {what}")
    if args.command in ("run", "evaluate"):
        check_run_directory(Path(args.out), args.force)


def _check_table_inputs(args: argparse.Namespace) -> None:
    if args.data is not None:
        raise TuningError(f"--table is the corpus, so DATA ({args.data}) has no part; drop one of them")
    if not args.table_name:
        raise TuningError("--table needs --table-name NAME: the table to tune")
    if args.eval_data:
        raise TuningError("--eval-data brings its own corpus, but --table is the corpus; label the table with --queries")
    if not args.queries:
        raise TuningError(
            "--table needs --queries LABELED.csv: labeled queries over the table's documents, to train on and score "
            "(with --pairs offline|llm, to score on)"
        )
    _check_labeled_file(args.queries, "evaluate", "--queries")
    _check_table(args.table, args.table_name)


def check_inputs(args: argparse.Namespace) -> None:
    """Files the command reads or writes, before anything heavy is imported."""
    if args.command in ("history", "rollback"):
        _check_table(args.uri, args.table_name, "--uri")
        return
    _check_out(args)
    if args.command == "generate":
        if not Path(args.docs).exists():
            raise TuningError(f"{args.docs}: no such file or directory; check the path")
        _check_writable_file(args.out)
        _check_model_path(args.base_model, "--base-model")
        return
    if args.command == "run" and args.table:
        _check_table_inputs(args)
    elif args.command == "run" and args.table_name:
        raise TuningError("--table-name names a table at --table URI; pass --table too")
    elif args.command == "run" and args.data is None:
        raise TuningError("pass DATA (a labeled CSV, QA dataset JSON or documents) or --table URI --table-name NAME")
    elif args.command == "run" and args.eval_data:
        if args.queries:
            raise TuningError("--queries and --eval-data both name the queries to score on; pass one of them")
        if args.test_size is not None:
            raise TuningError("--test-size splits DATA, but --eval-data scores on another file; drop one of them")
        _check_labeled_file(args.data, args.command, split=TRAIN_SPLIT)
        _check_labeled_file(args.eval_data, "evaluate", "--eval-data")
    elif args.command == "run" and args.queries:
        if not Path(args.data).exists():
            raise TuningError(f"{args.data}: no such file or directory; check the path")
        _check_labeled_file(args.queries, "evaluate")
    elif args.command == "run":
        _check_labeled_file(args.data, args.command, split=TRAIN_SPLIT)
    else:
        if args.split and not is_beir_folder(args.data):
            raise TuningError(f"--split names the qrels of a BEIR folder, but {args.data} is not one; drop --split")
        _check_labeled_file(args.data, args.command, split=args.split or DEFAULT_SPLIT)
    if args.command == "evaluate":
        _check_model_path(args.model, "--model")
    else:
        _check_model_path(args.base_model, "--base-model")
