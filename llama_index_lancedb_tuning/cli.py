"""`lancedb-tune`: run the whole loop, or score one model, from the command line.

Arguments (here) and files (input_checks) are checked before torch and sentence-transformers are imported,
so a mistake is answered in a fraction of a second.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import fields, replace
from pathlib import Path
from types import UnionType
from typing import Any, Literal, NoReturn, Union, get_args, get_origin, get_type_hints

from .common.redaction import RedactSecrets, redact
from .common.wording import counted
from .config import ChunkingConfig, FinetuneConfig, InvalidSetting, RunConfig, SearchConfig, recommended_finetune
from .data.beir import is_beir_folder
from .errors import TuningError
from .tuning.input_checks import check_inputs

_EXAMPLES = {
    "run": "example:\n  lancedb-tune run examples/sample_qa.csv --out runs/sample\n"
    "  lancedb-tune run lyft_train.json --eval-data uber_test.json --out runs/lyft_uber\n"
    "  lancedb-tune run docs/ --queries labels.csv --out runs/docs --pairs offline\n"
    "  lancedb-tune run examples/sample_qa.csv --tune query --out runs/query\n"
    "  lancedb-tune run --table ./lancedb --table-name vectors --queries labels.csv --tune query --out runs/app",
    "evaluate": "example:\n  lancedb-tune evaluate examples/sample_qa.csv --model runs/sample/model --out runs/sample-eval",
    "generate": "example:\n  lancedb-tune generate docs/ --out pairs.json --llm offline",
    "download-pack": "example:\n  lancedb-tune download-pack my_pack/",
    "history": "example:\n  lancedb-tune history --uri ./lancedb --table-name docs",
    "rollback": "example:\n  lancedb-tune rollback --uri ./lancedb --table-name docs",
}


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a mistake is one line (argparse prints the whole usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def _with_default(text: str, default: Any) -> str:
    return text if "(default" in text else f"{text} (default: {default})"


def _flag_of(name: str) -> str:
    """The CLI option for a config field, or the field's own name where it has none."""
    for cls in (RunConfig, FinetuneConfig):
        for f in fields(cls):
            if f.name == name and f.metadata.get("flag"):
                return f.metadata["flag"]
    return name


def _recipe_default(name: str) -> str:
    """A fine-tuning default as the help shows it: it depends on the source of pairs."""
    labeled, generated = getattr(recommended_finetune("labeled"), name), getattr(recommended_finetune("offline"), name)
    return str(labeled) if labeled == generated else f"{labeled} for labeled pairs, {generated} for offline/llm pairs"


def _add_fields(parser: argparse.ArgumentParser, cls: type, names: Sequence[str] | None = None, recipe: bool = False) -> None:
    """Options for `cls`'s fields that carry a `flag` (dest: the field name), typed and with choices from the annotation.

    `recipe`: the help shows the defaults of recommended_finetune, which depend on the source of pairs.
    """
    hints = get_type_hints(cls)
    for f in fields(cls):
        flag = f.metadata.get("flag")
        if flag is None or (names is not None and f.name not in names):
            continue
        # default None: a flag not given leaves the config's own default.
        kind, help_text = hints[f.name], f.metadata["help"]
        if kind is bool:
            action = "store_false" if f.default else "store_true"
            state = "on by default; this flag turns it off" if f.default else "off by default; this flag turns it on"
            parser.add_argument(flag, dest=f.name, action=action, default=None, help=f"{help_text} ({state})")
            continue
        if get_origin(kind) in (Union, UnionType):  # `str | None`: the flag takes a str
            kind = next(a for a in get_args(kind) if a is not type(None))
        shown = _recipe_default(f.name) if recipe else ("none" if f.default is None else str(f.default))
        options: dict[str, Any] = {"dest": f.name, "default": None, "help": _with_default(help_text, shown)}
        if get_origin(kind) is Literal:
            options["choices"] = get_args(kind)
        else:
            options["type"] = kind if kind in (int, float) else str
            options["metavar"] = flag.lstrip("-").upper().replace("-", "_")
        parser.add_argument(flag, **options)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="run directory for report.md/json/png and the LanceDB tables (required)")
    p.add_argument("--query-column", default="query", help=_with_default("CSV column holding the queries", "query"))
    p.add_argument(
        "--context-column", default="context", help=_with_default("CSV column holding the passage that answers", "context")
    )
    _add_fields(p, SearchConfig)
    _add_fields(p, ChunkingConfig)
    p.add_argument(
        "--no-chunking",
        dest="chunk_size",
        action="store_const",
        const=0,
        help="one node per document, the same as --chunk-size 0 (default: off; on for a BEIR folder)",
    )
    p.add_argument("--force", action="store_true", help="redo a finished report, removing only the run's files (default: off)")
    p.add_argument("--quiet", action="store_true", help="no progress bars (default: off)")


def _subcommand(sub: Any, name: str, summary: str, description: str) -> argparse.ArgumentParser:
    # Raw: the examples keep their lines; the description is wrapped here.
    return sub.add_parser(
        name,
        help=summary,
        description=textwrap.fill(description, 88),
        epilog=_EXAMPLES[name],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="lancedb-tune", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = _subcommand(
        sub,
        "run",
        "baseline -> fine-tune -> index -> evaluate on held-out queries",
        "Score the base model on held-out queries, fine-tune it on the rest (or on pairs generated from documents), "
        "score the tuned model the same way, and write report.md/json/png. A killed run resumes when rerun. "
        "With --table, the corpus is an existing LanceDB table's rows; that table is never modified: --tune query "
        "only reads it, --tune full writes the re-embedded copy into OUT/lancedb.",
    )
    run.add_argument(
        "data",
        nargs="?",
        default=None,
        help="labeled CSV (query and context columns), QA dataset JSON, BEIR folder (trains on its train qrels, scores "
        "test when it has them), or documents with --queries; none with --table",
    )
    run.add_argument(
        "--table",
        default=None,
        metavar="URI",
        help="an existing LanceDB (directory, s3://, gs://) whose table --table-name is the corpus to tune, as this "
        "package or LlamaIndex's LanceDBVectorStore wrote it; --queries labels it by document id. Never modified: "
        "query tuning only reads it, full tuning writes the re-embedded copy into OUT/lancedb (default: none)",
    )
    run.add_argument("--table-name", default=None, metavar="NAME", help="the table at --table to tune (default: none)")
    _add_common(run)
    _add_fields(run, RunConfig, ["test_size", "seed", "pairs", "llm", "tune", "adapt", "gate"])
    _add_fields(run, FinetuneConfig, recipe=True)
    run.add_argument(
        "--no-resume", action="store_true", help="do not continue from checkpoints left by a killed run (default: off)"
    )
    run.add_argument(
        "--queries",
        default=None,
        help="labeled CSV to evaluate on when DATA is a documents directory or file; with --table, labeled queries "
        "split into training and held-out ones, or with --pairs offline|llm all scored (default: none)",
    )
    run.add_argument(
        "--eval-data",
        default=None,
        help="labeled CSV or QA dataset JSON to score on, with its own corpus, instead of a held-out split of DATA; "
        "DATA then trains in full (default: none)",
    )

    gen = _subcommand(
        sub,
        "generate",
        "training pairs from raw documents (PDF, Markdown, text, CSV)",
        "Chunk documents in the model's tokens and write (question, passage) pairs as a QA dataset JSON, offline or "
        "with an LLM; an interrupted LLM generation resumes from its .progress.jsonl.",
    )
    gen.add_argument("docs", help="a documents directory or file")
    gen.add_argument("--out", required=True, help="QA dataset JSON to write (required; resumes from its .progress.jsonl)")
    gen.add_argument("--llm", default="offline", help=_with_default("openai:MODEL, ollama:MODEL or offline", "offline"))
    gen.add_argument("--questions-per-chunk", type=int, default=2, help=_with_default("questions the LLM writes per node", 2))
    gen.add_argument("--max-concurrency", type=int, default=4, help=_with_default("LLM requests in flight at once", 4))
    _add_fields(gen, ChunkingConfig)
    gen.add_argument("--base-model", default=None, help="model whose tokenizer sizes the chunks (default: bundled MiniLM)")
    _add_fields(gen, RunConfig, ["seed"])
    gen.add_argument("--quiet", action="store_true", help="no progress bars (default: off)")

    dl = _subcommand(
        sub,
        "download-pack",
        "write FinetunedLanceDBRetrieverPack's source into a folder to edit",
        "Copy the pack's source files into a folder, to import from there and change freely.",
    )
    dl.add_argument("dest", help="folder to write (must be empty unless --overwrite)")
    dl.add_argument("--overwrite", action="store_true", help="replace the pack files in a non-empty folder (default: off)")

    for name, summary, description in (
        (
            "history",
            "list the tuned models a table has served, with their validation figures",
            "List every promotion of a tuned model to the table (FinetunedLanceDBRetrieverPack.finetune): its table "
            "version, recipe, encoders and the gate's validation figures; the one serving now is marked.",
        ),
        (
            "rollback",
            "serve again what a table served before its last promotion",
            "Restore the table version the last promotion replaced (rows, vectors, indices and recorded encoders, "
            "as they were) as a new version; an app reopening the table gets the encoders that served then.",
        ),
    ):
        versions = _subcommand(sub, name, summary, description)
        versions.add_argument("--uri", required=True, help="the LanceDB (directory, s3://, gs://) holding the table (required)")
        versions.add_argument("--table-name", required=True, metavar="NAME", help="the table (required)")

    ev = _subcommand(
        sub,
        "evaluate",
        "score one model on a labeled CSV (all queries are test queries)",
        "Index a labeled dataset's passages with one model and score the five query types on every query.",
    )
    ev.add_argument("data", help="labeled CSV (query and context columns), QA dataset JSON or BEIR folder")
    ev.add_argument("--split", default=None, help="the qrels of a BEIR folder to score (default: test)")
    _add_common(ev)
    ev.add_argument("--model", default=None, help="HF id or local path (default: bundled all-MiniLM-L6-v2)")
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llama-index-lancedb-tuning")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _config_values(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    return {
        f.name: getattr(args, f.name) for f in fields(cls) if f.metadata.get("flag") and getattr(args, f.name, None) is not None
    }


def _run_config(args: argparse.Namespace) -> RunConfig:
    """The run's settings from the parsed flags; a value out of range is named by its flag."""
    try:
        values = _config_values(args, RunConfig)
        if args.command in ("run", "evaluate") and "chunk_size" not in values and args.data and is_beir_folder(args.data):
            values["chunk_size"] = 0  # as BEIR and MTEB score it; on SciFact's validation carve it also tunes better
        if args.command == "run":
            # Beside documents, --queries only scores; an existing table's labeled queries train as well.
            queries_score_only = args.queries and not args.table
            values["pairs"] = args.pairs or ("llm" if args.llm else "offline" if queries_score_only else "labeled")
            tuning = replace(
                recommended_finetune(values["pairs"]), **_config_values(args, FinetuneConfig), show_progress=not args.quiet
            )
            values["finetune"] = tuning
        return RunConfig(**values)
    except InvalidSetting as exc:
        raise exc.worded(_flag_of) from None


def _generate(args: argparse.Namespace) -> int:
    config = _run_config(args)  # its chunking and seed
    check_inputs(args)
    from .data.documents import load_documents
    from .encoding.model_ids import resolve_model

    documents = load_documents(args.docs)  # document mistakes are reported before torch is imported
    resolve_model(args.base_model)
    from .pairs.llm_pairs import generate_llm_pairs, llm_from_spec
    from .pairs.offline_pairs import generate_offline_pairs
    from .tuning.run_loop import build_nodes

    nodes = build_nodes(documents, args.base_model, config)
    llm = llm_from_spec(args.llm)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    if llm is None:
        pairs = generate_offline_pairs(nodes, seed=config.seed)
        pairs.save_json(args.out)
    else:
        pairs = generate_llm_pairs(
            nodes, llm, args.out, args.questions_per_chunk, max_concurrency=args.max_concurrency, show_progress=not args.quiet
        )
    counts = f"{counted(len(pairs), 'training pair')} from {counted(len(nodes), 'node')} of {counted(len(documents), 'document')}"
    print(f"{counts} -> {args.out}")
    return 0


def _versions(args: argparse.Namespace) -> int:
    from .store.table import connect, open_table
    from .store.versions import history, rollback

    table = open_table(connect(args.uri), args.table_name)
    if args.command == "rollback":
        version, names = rollback(table)
        pair = "" if names is None else f"; encoders: queries {names.query_encoder}, documents {names.document_encoder}"
        print(f"table '{args.table_name}' serves version {version}, as before its last promotion{pair}")
        return 0
    promotions = history(table)
    if not promotions:
        print(f"table '{args.table_name}' has served no tuned model yet")
    for p in promotions:
        figures = p.figures
        gate = (
            f"{figures['query_type']} hit on {counted(figures['n'], 'validation query')}: "
            f"{figures['serving']['hit_rate']:.3f} -> {figures['tuned']['hit_rate']:.3f}"
            if figures
            else "no gate"
        )
        where = "not tagged" if p.version is None else f"version {p.version}"
        print(
            f"#{p.number} {where} (replaced {p.previous_version}) {p.mode}{' [serving]' if p.serving else ''}: "
            f"queries {p.encoders.query_encoder}, documents {p.encoders.document_encoder}; {gate}"
        )
    return 0


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "generate":
        return _generate(args)
    if args.command in ("history", "rollback"):
        check_inputs(args)  # a local --uri must exist: connecting would create it
        return _versions(args)
    if args.command == "download-pack":
        from .pack import write_pack_source

        print(
            f"pack source written to {write_pack_source(args.dest, overwrite=args.overwrite)}; import it from there and edit freely"
        )
        return 0
    config = _run_config(args)
    check_inputs(args)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise TuningError(
            "lancedb-tune runs as one process, not under torchrun or accelerate launch; launch a script that calls "
            "EmbeddingFinetuner.fit instead (docs/scaling.md)"
        )
    if config.engine == "ray":
        from .store.ray_ingest import check_ray

        check_ray()
    from .encoding.model_ids import resolve_model
    from .tuning.command_data import evaluate_data, run_data

    if args.command == "run":
        data = run_data(args, config)
        resolve_model(config.finetune.base_model)
        from .tuning.run_loop import tune_and_evaluate

        report = tune_and_evaluate(
            data.dataset,
            args.out,
            config,
            data.documents,
            dataset_path=data.dataset_path,
            force=args.force,
            resume=not args.no_resume,
            split=data.split,
            eval_dataset=data.eval_dataset,
            eval_path=args.eval_data or "",
            source_table=data.source_table,
            documents_path=args.data if data.documents is not None else "",
        )
    else:
        dataset = evaluate_data(args, config)
        resolve_model(args.model)
        from .tuning.run_loop import evaluate_model

        report = evaluate_model(dataset, args.model, args.out, config, dataset_path=args.data, force=args.force)
    print(report["table"])
    if "promotion" in report:
        print(f"\n{report['promotion']['reason']}" + ("" if report["promoted"] else f"; the model is saved in {args.out}/model"))
    print(f"\nreport: {args.out}/report.md, report.json, report.png")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactSecrets) for f in handler.filters):
            handler.addFilter(RedactSecrets())
    if getattr(args, "quiet", False):
        os.environ["TQDM_DISABLE"] = "1"
    try:
        return _dispatch(args)
    except TuningError as exc:
        print(f"lancedb-tune: error: {redact(' '.join(str(exc).split()))}", file=sys.stderr)  # always one line
        return 2
    except KeyboardInterrupt:
        print("lancedb-tune: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
