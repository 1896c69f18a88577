"""The run directory's bookkeeping: one run at a time holds its lock, a finished report is
never overwritten unless forced, an unfinished one resumes only with the same settings, and the
LanceDB tables it writes are claimed before they are created. Finished stages leave their
results here to be reused by a resumed run, and the report, written last, marks the run finished.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from filelock import FileLock, Timeout

from ..common.jsonfile import write_json
from ..common.wording import counted
from ..config import MetricName, RunConfig, SearchConfig
from ..data.qa_dataset import QADataset
from ..errors import TuningError
from ..evaluation.metrics import EvalResult
from ..evaluation.report import comparison_plot, comparison_table
from .run_files import (
    LANCEDB_DIR,
    LOCK_FILE,
    MANIFEST_FILE,
    REPORT_FILE,
    SETTINGS_FILE,
    TABLES_FILE,
    check_run_directory,
    claimed_tables,
    clear,
    owned_entries,
    remove_bookkeeping,
    take,
)

if TYPE_CHECKING:
    from .source_table import SourceTable


def claim_tables(out: Path, table_names: list[str]) -> str:
    """The LanceDB uri under `out` where these tables may be overwritten: each was created there
    by this tool, or is not there yet.

    The tables it creates are recorded in `out/tables.json` before they are written, so a table
    a user keeps in `out/lancedb` is never replaced.
    """
    uri = out / LANCEDB_DIR
    owned = claimed_tables(out)
    for name in table_names:
        # A local LanceDB table is the directory NAME.lance under the uri.
        if name not in owned and (uri / f"{name}.lance").exists():
            raise TuningError(f"{uri} already holds a table '{name}' that lancedb-tune did not create; choose another --out")
    write_json(out / TABLES_FILE, sorted({*owned, *table_names}))
    return str(uri)


@contextmanager
def locked_output(out: Path) -> Iterator[None]:
    """Create `out` and hold its lock: a second run into the same directory is refused while this one runs.

    On leaving, the lock file goes, and so do the bookkeeping files of a run that finished no stage,
    with `out` itself if this call made it and nothing else is left in it.
    """
    if out.exists() and not out.is_dir():
        raise TuningError(f"--out {out} is a file; pass a directory for the report")
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TuningError(f"cannot create output directory {out} ({exc.strerror}); choose another --out") from None
    lock_path = out / LOCK_FILE
    lock = FileLock(lock_path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise TuningError(f"{out} is in use by another lancedb-tune run; wait for it to finish or choose another --out") from None
    try:
        yield
    finally:
        try:
            remove_bookkeeping(out)
        finally:
            # Unlinked while still held: a run that opened this file just before finds, once it
            # gets the lock, that the file has no name left, and is refused (filelock checks that).
            with suppress(OSError):
                lock_path.unlink()
            lock.release()
        if created:
            with suppress(OSError):
                out.rmdir()  # only when empty: never a directory that holds anything


def prepare_output(out: Path, force: bool, settings: dict | None = None) -> None:
    """Refuse a finished report (unless forced) or a run entry this package did not write; resume an
    unfinished run only if made with the same `settings`. `force` and a change of settings remove
    only what a run wrote (see run_files): any other file in `out` stays.

    Call it inside `locked_output(out)`.
    """
    check_run_directory(out, force)
    out.mkdir(parents=True, exist_ok=True)
    take(out)
    if (out / REPORT_FILE).exists():
        clear(out)  # forced: check_run_directory refused it otherwise
    settings_path = out / SETTINGS_FILE
    if settings is not None and settings_path.exists() and json.loads(settings_path.read_text()) != settings:
        cached = any((out / name).exists() for name in owned_entries(out) if name not in (SETTINGS_FILE, MANIFEST_FILE))
        if not force and cached:
            raise TuningError(
                f"{out} holds an unfinished run made with other data or settings; rerun that command to resume it, "
                "pass --force to start over, or choose another --out"
            )
        clear(out)  # nothing cached yet, or forced: start over
    if settings is not None and not settings_path.exists():
        write_json(settings_path, settings, indent=2)  # cached stages below are only reused for these settings


def cached_results(path: Path) -> list[EvalResult] | None:
    """A finished stage's results, or None when the stage has not finished."""
    if not path.exists():
        return None
    rows = json.loads(path.read_text())
    return [EvalResult.from_dict(r) for r in rows]


def save_results(path: Path, results: list[EvalResult]) -> None:
    write_json(path, [{**r.to_dict(), "per_query": r.per_query, "per_query_metrics": r.per_query_metrics} for r in results])


def run_settings(
    dataset: QADataset,
    config: RunConfig,
    documents: dict[str, str] | None,
    split: tuple[QADataset, QADataset] | None = None,
    eval_dataset: QADataset | None = None,
    source: SourceTable | None = None,
) -> dict:
    """What a resumed run must share with the killed one: a digest of the data and the config."""
    cfg = asdict(config)
    cfg["finetune"].pop("show_progress", None)
    for shown_only in ("metrics", "gate_metric"):  # they decide the report and the verdict, made anew by a resumed run
        cfg.pop(shown_only, None)
    if eval_dataset is None:  # `adapt` acts on eval data only: other runs keep the digest they had before it
        cfg.pop("adapt", None)
    folds = [part.query_ids for part in split] if split else None
    parts = [dataset.to_dict(), documents, folds]
    if eval_dataset is not None:  # appended only when given, so runs without eval data keep the digest they had
        parts.append(eval_dataset.to_dict())
    if source is not None:  # likewise: the table's identity, for runs over an existing table only
        parts.append(source.identity())
    data = json.dumps(parts, sort_keys=True, ensure_ascii=False)
    return json.loads(json.dumps({"data_sha1": hashlib.sha1(data.encode("utf-8")).hexdigest(), "config": cfg}, default=str))


def training_source(pairs: str, paths: tuple[str, str | None, str], documents: dict | None, source: SourceTable | None) -> dict:
    """`train_source` and `train_path` for report.json: what the model was trained on and where it was read.

    Args:
        pairs: the run's `--pairs`; generated pairs come from the documents, else the table's rows,
            else the labeled data's passages (its queries are then only scored).
        paths: (labeled data, eval data or None, documents directory) as the run was given them.
        documents: the documents the run was given, if any.
        source: the existing table the run read, if any.
    """
    if pairs == "labeled":
        return {"train_source": "labeled_queries", "train_path": paths[0]}
    if documents is not None:
        return {"train_source": "documents", "train_path": paths[2]}
    if source is not None:
        return {"train_source": "table_rows", "train_path": source.identity()["uri"]}
    return {"train_source": "dataset_passages", "train_path": paths[0]}


def _generated_from(data: dict) -> str:
    path, source = data["train_path"], data["train_source"]
    if source == "documents":
        return f"the documents in `{path}`" if path else "the documents passed in"
    if source == "table_rows":
        return f"the rows of table `{data['table']['name']}` at `{path}`"
    return f"the passages of `{path}`" if path else "the labeled data's passages"


def _data_line(data: dict) -> str:
    """Which data trained the model and which scored it, for report.md; empty for a run that trained nothing."""
    if not data["n_train_queries"]:
        return ""
    n, counts = data["n_train_queries"], []
    if data["train_source"] == "labeled_queries":
        trained, scored = f"`{data['train_path']}`", "held-out queries of the same data"
        counts.append(counted(n, "training query"))
    else:
        trained = f"{counted(n, 'pair')} generated from {_generated_from(data)}"
        counts.append(f"--pairs {data['pairs']}")
        scored = f"`{data['path']}`" if data["path"] else "the labeled queries"
    if data.get("n_adaptation_pairs"):
        counts.append(f"{counted(data['n_adaptation_pairs'], 'label-free pair')} from the scored corpus")
    if counts:
        trained += f" ({' + '.join(counts)})"
    if data.get("eval_path") is not None:
        scored = f"`{data['eval_path']}`"
    return f"trained on {trained} · scored on {scored} ({counted(data['n_test_queries'], 'query')})\n\n"


def _promotion_line(report: dict) -> str:
    """The verdict for report.md (the model is saved either way); empty for a run that trained nothing."""
    promotion = report.get("promotion")
    if promotion is None:
        return ""
    return f"{'gate' if report['dataset']['n_gate_queries'] else 'promotion'}: {promotion['reason']}\n\n"


def write_report(
    out: Path, report: dict, results: list[EvalResult], k: int, metrics: Sequence[MetricName] = SearchConfig.metrics
) -> str:
    """report.md (the columns of `metrics`) and report.png, then report.json; returns the comparison table."""
    table = comparison_table(results, k, metrics)
    warnings = "".join(f"> **Warning:** {w}\n\n" for w in report.get("warnings", []))
    n_scored = report["dataset"]["n_test_queries"]
    if report["tuned_model"] is None:  # `evaluate`: one model, every query scored
        title, plot_title = f"Retrieval of `{report['base_model']}`", counted(n_scored, "query")
        models = f"model: `{report['base_model']}` · {counted(n_scored, 'query')} scored"
    else:
        title, plot_title = "Retrieval before and after fine-tuning", counted(n_scored, "held-out query")
        models = f"base model: `{report['base_model']}` · tuned model: `{report['tuned_model']}` · {plot_title}"
    comparison_plot(results, out / "report.png", k, plot_title)
    (out / "report.md").write_text(
        f"# {title}\n\n{models} · k={k}\n\n{_data_line(report['dataset'])}{_promotion_line(report)}{warnings}{table}\n"
    )
    # report.json last: its presence marks the run finished.
    write_json(out / "report.json", report, indent=2)
    return table
