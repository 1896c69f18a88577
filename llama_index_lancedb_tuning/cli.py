"""`lancedb-tune`: run the whole loop, or score one model, from the command line."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from .errors import TuningError


def _add_chunking(p: argparse.ArgumentParser) -> None:
    p.add_argument("--chunk-size", type=int, default=128, help="node size in model tokens (default 128)")
    p.add_argument("--chunk-overlap", type=int, default=16)
    p.add_argument("--keep-glued-words", dest="fix_glued_words", action="store_false",
                   help="index the text as extracted; by default words PDF extraction ran together are re-spaced")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", help="labeled CSV (query and context columns) or a QA dataset JSON")
    p.add_argument("--out", required=True, help="output directory for report.md/json/png")
    p.add_argument("--query-column", default="query")
    p.add_argument("--context-column", default="context")
    p.add_argument("--k", type=int, default=5, help="hit-rate@k and MRR@k (default 5)")
    _add_chunking(p)
    p.add_argument("--reranker", default="fusion", help="fusion (offline, default), cohere[:MODEL], cross-encoder:PATH")
    p.add_argument("--hybrid", choices=["rrf", "linear"], default="rrf", help="LanceDB fusion for hybrid search")
    p.add_argument("--backend", choices=["torch", "onnx", "onnx-int8"], default="torch",
                   help="encoder runtime for indexing and queries: torch (default), onnx (ONNX Runtime, same vectors), "
                   "onnx-int8 (faster, slightly less exact; needs the [onnx] extra)")
    p.add_argument("--force", action="store_true", help="redo a directory that holds a finished report")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lancedb-tune", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="baseline -> fine-tune -> index -> evaluate on held-out queries")
    _add_common(run)
    run.add_argument("--base-model", default=None, help="HF id or local path (default: bundled all-MiniLM-L6-v2)")
    run.add_argument("--test-size", type=float, default=0.2)
    run.add_argument("--seed", type=int, default=42)
    run.add_argument("--epochs", type=int, default=None)
    run.add_argument("--batch-size", type=int, default=None)
    run.add_argument("--lr", type=float, default=None)
    run.add_argument("--loss", choices=["mnrl", "cached_mnrl", "gist"], default=None)
    run.add_argument("--hard-negatives", type=int, default=None, help="mined hard negatives per pair (0: none)")
    run.add_argument("--no-resume", action="store_true", help="do not continue from checkpoints left by a killed run")
    run.add_argument(
        "--pairs",
        choices=["labeled", "offline", "llm"],
        default=None,
        help="where training pairs come from (default: labeled for a labeled CSV, else offline; llm with --llm)",
    )
    run.add_argument("--llm", default=None, help="openai:MODEL or ollama:MODEL, for --pairs llm")
    run.add_argument("--queries", default=None, help="labeled CSV to evaluate on when DATA is a documents directory or file")

    gen = sub.add_parser("generate", help="training pairs from raw documents (PDF, Markdown, text, CSV)")
    gen.add_argument("docs", help="a documents directory or file")
    gen.add_argument("--out", required=True, help="QA dataset JSON to write (resumes from its .progress.jsonl)")
    gen.add_argument("--llm", default="offline", help="openai:MODEL, ollama:MODEL or offline (default)")
    gen.add_argument("--questions-per-chunk", type=int, default=2)
    gen.add_argument("--max-concurrency", type=int, default=4)
    _add_chunking(gen)
    gen.add_argument("--base-model", default=None, help="model whose tokenizer sizes the chunks (default: bundled MiniLM)")
    gen.add_argument("--seed", type=int, default=42)
    gen.add_argument("--quiet", action="store_true", help="no progress bars")

    dl = sub.add_parser("download-pack", help="write FinetunedLanceDBRetrieverPack's source into a folder to edit")
    dl.add_argument("dest", help="folder to write (must be empty unless --force)")
    dl.add_argument("--overwrite", action="store_true", help="replace the pack files in a non-empty folder")

    ev = sub.add_parser("evaluate", help="score one model on a labeled CSV (all queries are test queries)")
    _add_common(ev)
    ev.add_argument("--model", default=None, help="HF id or local path (default: bundled all-MiniLM-L6-v2)")
    return parser


def _run_config(args: argparse.Namespace):
    from dataclasses import replace

    from .pipeline import RunConfig

    config = RunConfig(k=args.k, chunk_size=args.chunk_size, chunk_overlap=args.chunk_overlap, reranker=args.reranker, hybrid=args.hybrid,
                       backend=args.backend, fix_glued_words=args.fix_glued_words)
    if args.command == "run":
        pairs = args.pairs or ("llm" if args.llm else "offline" if args.queries else "labeled")
        config = replace(config, pairs=pairs, finetune=None)  # the fine-tuning defaults depend on the pairs
        overrides = {
            "base_model": args.base_model,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "learning_rate": args.lr,
            "loss": args.loss,
            "hard_negatives": args.hard_negatives,
        }
        config.finetune = replace(config.finetune, **{k: v for k, v in overrides.items() if v is not None}, k=args.k, seed=args.seed, show_progress=not args.quiet)
        config.test_size, config.seed = args.test_size, args.seed
        config.llm = args.llm
    return config


def _generate(args: argparse.Namespace) -> int:
    from .chunking import chunk_corpus, model_tokenizer
    from .documents import load_documents
    from .llm_pairs import generate_llm_pairs, llm_from_spec
    from .offline_pairs import generate_offline_pairs
    from .models import resolve_model

    documents = load_documents(args.docs)
    nodes = chunk_corpus(documents, model_tokenizer(resolve_model(args.base_model)), args.chunk_size, args.chunk_overlap, args.fix_glued_words)
    llm = llm_from_spec(args.llm)
    if llm is None:
        pairs = generate_offline_pairs(nodes, seed=args.seed)
        pairs.save_json(args.out)
    else:
        pairs = generate_llm_pairs(nodes, llm, args.out, args.questions_per_chunk, max_concurrency=args.max_concurrency, show_progress=not args.quiet)
    print(f"{len(pairs)} training pairs from {len(nodes)} nodes of {len(documents)} documents -> {args.out}")
    return 0


def _check_numbers(args: argparse.Namespace) -> None:
    """Out-of-range numbers fail here, not deep inside training after the baseline was scored."""
    limits = [("--chunk-size", args.chunk_size, 1), ("--chunk-overlap", args.chunk_overlap, 0)]
    if args.command == "run":
        # One pair per batch leaves MNRL no in-batch negatives: the loss is 0 and nothing is learned.
        limits += [("--epochs", args.epochs, 1), ("--batch-size", args.batch_size, 2), ("--hard-negatives", args.hard_negatives, 0)]
        if args.lr is not None and not args.lr > 0:
            raise TuningError(f"--lr must be a positive number, got {args.lr}")
    for flag, value, least in limits:
        if value is not None and value < least:
            raise TuningError(f"{flag} must be at least {least}, got {value}")
    if args.chunk_overlap >= args.chunk_size:
        raise TuningError(f"--chunk-overlap ({args.chunk_overlap}) must be smaller than --chunk-size ({args.chunk_size})")


_SECRET_ENV = ("OPENAI_API_KEY", "COHERE_API_KEY", "CO_API_KEY")


def _redact(text: str) -> str:
    """Never echo an API key, even when a server quotes it back in its error."""
    import os

    for name in _SECRET_ENV:
        secret = os.environ.get(name, "")
        if len(secret) >= 8:
            text = text.replace(secret, f"<{name}>")
    return text


class _RedactSecrets(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = _redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


def _dispatch(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .documents import load_documents
    from .labeled_csv import load_dataset
    from .pipeline import evaluate_model, tune_and_evaluate

    if args.command == "generate":
        return _generate(args)
    if args.command == "download-pack":
        from .pack import write_pack_source

        print(f"pack source written to {write_pack_source(args.dest, overwrite=args.overwrite)}; import it from there and edit freely")
        return 0
    if args.k < 1:
        raise TuningError(f"--k must be at least 1, got {args.k}")
    _check_numbers(args)
    config = _run_config(args)
    if args.command == "run":
        documents = None
        labeled = args.data
        if getattr(args, "queries", None):
            documents, labeled = load_documents(args.data), args.queries
        elif Path(args.data).is_dir():
            raise TuningError(f"{args.data} is a documents directory; pass a labeled CSV to evaluate on with --queries")
        dataset = load_dataset(labeled, args.query_column, args.context_column)
        report = tune_and_evaluate(dataset, args.out, config, documents, dataset_path=labeled, force=args.force, resume=not args.no_resume)
    else:
        dataset = load_dataset(args.data, args.query_column, args.context_column)
        report = evaluate_model(dataset, args.model, args.out, config, dataset_path=args.data, force=args.force)
    print(report["table"])
    print(f"\nreport: {args.out}/report.md, report.json, report.png")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _RedactSecrets) for f in handler.filters):
            handler.addFilter(_RedactSecrets())
    import os

    # LanceDB's Rust logger prints a deprecation notice per hybrid query at WARN; errors still show.
    os.environ.setdefault("LANCEDB_LOG", "error")
    if getattr(args, "quiet", False):
        os.environ["TQDM_DISABLE"] = "1"
    try:
        return _dispatch(args)
    except TuningError as exc:
        print(f"lancedb-tune: error: {_redact(' '.join(str(exc).split()))}", file=sys.stderr)  # always one line
        return 2
    except KeyboardInterrupt:
        print("lancedb-tune: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
