"""Training pairs (question -> node) from unlabeled nodes with any LlamaIndex LLM.

The result is a `QADataset`, the JSON shape `lancedb-tune finetune` and llama-index-finetuning
read, with the node texts keyed by node id as its corpus. Finished chunks are kept in a
`ProgressFile`, so a killed run resumes; transient errors are retried under `retries`' policy.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llama_index.core.schema import BaseNode, MetadataMode
from tenacity import RetryCallState

from ..common.redaction import redact
from ..common.retries import async_transient_retries, is_fatal
from ..data.qa_dataset import QADataset, stable_id
from ..errors import TuningError
from .pairs_file import ProgressFile, progress_path

if TYPE_CHECKING:
    from llama_index.core.llms import LLM

logger = logging.getLogger(__name__)

DEFAULT_PROMPT = """\
You write search queries for evaluating a retrieval system. Read the passage below.

Passage:
\"\"\"
{context_str}
\"\"\"

Write {num_questions} different questions that a reader could ask and that this passage \
answers. Each question must make sense on its own, without seeing the passage: name the \
subject instead of saying "the passage" or "the text". Paraphrase rather than copy phrases \
from the passage. Put each question on its own line, with no numbering and no answers."""

_NUMBERING = re.compile(r"^\s*(?:[-*•]+|(?:q(?:uestion)?\s*)?\d+\s*[.):\]-]|q(?:uestion)?\s*\d*\s*:)\s*", re.IGNORECASE)
_QUESTION_WORDS = frozenset(
    [
        "what",
        "which",
        "who",
        "whom",
        "whose",
        "when",
        "where",
        "why",
        "how",
        "is",
        "are",
        "was",
        "were",
        "do",
        "does",
        "did",
        "can",
        "could",
        "should",
        "would",
        "will",
        "has",
        "have",
        "had",
    ]
)
_MIN_WORDS = 3
_MAX_CHARS = 400


def parse_questions(response: str, limit: int | None = None) -> list[str]:
    """The usable questions in an LLM reply, numbering and quotes stripped, in order.

    Drops preamble lines, fragments, lines that are mostly not letters and repeats, so a
    sloppy reply costs questions rather than polluting the training data.
    """
    questions: list[str] = []
    seen: set[str] = set()
    for line in response.splitlines():
        text = _NUMBERING.sub("", line).strip().strip("\"'`*“”").strip()
        words = text.split()
        if len(words) < _MIN_WORDS or len(text) > _MAX_CHARS:
            continue
        if not text.endswith("?"):
            # Some models drop the question mark; accept a line that opens like a question.
            if words[0].lower().strip(",") not in _QUESTION_WORDS or text.endswith((":", ".")):
                continue
            text += "?"
        visible = [c for c in text if not c.isspace()]
        if sum(c.isalpha() for c in visible) < 0.6 * len(visible):
            continue
        key = _normalise(text)
        if key in seen:
            continue
        seen.add(key)
        questions.append(text)
        if limit is not None and len(questions) == limit:
            break
    return questions


def _normalise(question: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", question.lower()))


def _node_key(node: BaseNode, text: str) -> str:
    return f"{node.node_id}|{hashlib.sha1(text.encode('utf-8')).hexdigest()[:16]}"


def _assemble(nodes: Sequence[BaseNode], questions_by_node: dict[str, list[str]]) -> QADataset:
    """Queries in node order, each question kept once (for the first node that asked it)."""
    queries: dict[str, str] = {}
    relevant: dict[str, list[str]] = {}
    corpus: dict[str, str] = {}
    seen: set[str] = set()
    for node in nodes:
        corpus[node.node_id] = node.get_content(metadata_mode=MetadataMode.NONE)
        for question in questions_by_node.get(node.node_id, []):
            key = _normalise(question)
            if key in seen:
                continue
            seen.add(key)
            query_id = stable_id("q", f"{node.node_id}\n{question}")
            queries[query_id] = question
            relevant[query_id] = [node.node_id]
    return QADataset(queries, corpus, relevant)


def generate_llm_pairs(
    nodes: Sequence[BaseNode],
    llm: LLM,
    output_path: str | Path,
    questions_per_chunk: int = 2,
    prompt_template: str = DEFAULT_PROMPT,
    max_concurrency: int = 4,
    max_retries: int = 6,
    max_failed_fraction: float = 0.05,
    retry_base_delay: float = 1.0,
    retry_max_delay: float = 30.0,
    request_timeout: float | None = 180.0,
    show_progress: bool = True,
) -> QADataset:
    """Ask `llm` for questions each node answers and save them as a QA dataset JSON.

    Finished chunks go to `progress_path(output_path)` as they complete, so rerunning the
    same command after a crash or kill asks only for the missing ones. Rate limits, server
    errors and timeouts are retried with jittered exponential backoff; chunks that still
    fail are reported, and the run fails if they exceed `max_failed_fraction` of all chunks.

    Args:
        nodes: The chunks to ask about.
        llm: Any LlamaIndex LLM; `llm_from_spec` builds one from a CLI string.
        output_path: Where the QA dataset JSON goes; the progress file sits beside it.
        questions_per_chunk: Questions asked per chunk.
        prompt_template: Takes `{context_str}` and `{num_questions}`.
        max_concurrency: Requests in flight at once.
        max_retries: Retries per chunk after a transient error.
        max_failed_fraction: Share of chunks that may still fail without failing the run.
        retry_base_delay: Seconds the jittered backoff starts from.
        retry_max_delay: Cap on one backoff wait (a server's Retry-After may ask up to 60 s).
        request_timeout: Seconds one request may take; None for no limit.
        show_progress: Show a progress bar.
    """
    return asyncio.run(
        agenerate_llm_pairs(
            nodes,
            llm,
            output_path,
            questions_per_chunk=questions_per_chunk,
            prompt_template=prompt_template,
            max_concurrency=max_concurrency,
            max_retries=max_retries,
            max_failed_fraction=max_failed_fraction,
            retry_base_delay=retry_base_delay,
            retry_max_delay=retry_max_delay,
            request_timeout=request_timeout,
            show_progress=show_progress,
        )
    )


async def agenerate_llm_pairs(
    nodes: Sequence[BaseNode],
    llm: LLM,
    output_path: str | Path,
    questions_per_chunk: int = 2,
    prompt_template: str = DEFAULT_PROMPT,
    max_concurrency: int = 4,
    max_retries: int = 6,
    max_failed_fraction: float = 0.05,
    retry_base_delay: float = 1.0,
    retry_max_delay: float = 30.0,
    request_timeout: float | None = 180.0,
    show_progress: bool = True,
) -> QADataset:
    """`generate_llm_pairs` for callers already inside an event loop (e.g. notebooks)."""
    from tqdm.auto import tqdm

    if questions_per_chunk < 1:
        raise TuningError(f"questions_per_chunk must be at least 1, got {questions_per_chunk}")
    if max_concurrency < 1:
        raise TuningError(f"max_concurrency must be at least 1, got {max_concurrency}")
    if not 0 <= max_failed_fraction < 1:
        raise TuningError(f"max_failed_fraction must be in [0, 1), got {max_failed_fraction}")
    try:
        prompt_template.format(context_str="", num_questions=questions_per_chunk)
    except (KeyError, IndexError, ValueError) as exc:
        raise TuningError(
            f"prompt template has an unknown or broken placeholder ({exc!r}); use only {{context_str}} and "
            "{num_questions}, and double any other braces"
        ) from None
    if not nodes:
        raise TuningError("no chunks to generate questions for; check that the documents have text")

    output_path = Path(output_path)
    model = getattr(getattr(llm, "metadata", None), "model_name", None) or type(llm).__name__
    settings = {
        "prompt_sha1": hashlib.sha1(prompt_template.encode("utf-8")).hexdigest(),
        "questions_per_chunk": questions_per_chunk,
        "model": model,
    }
    progress = ProgressFile(progress_path(output_path), settings)
    texts = {node.node_id: node.get_content(metadata_mode=MetadataMode.NONE) for node in nodes}
    pending = [n for n in nodes if _node_key(n, texts[n.node_id]) not in progress.done]
    if len(pending) < len(nodes):
        logger.info("resuming: %d of %d chunks already done in %s", len(nodes) - len(pending), len(nodes), progress.path)

    semaphore = asyncio.Semaphore(max_concurrency)
    failures: dict[str, str] = {}
    bar = tqdm(
        total=len(nodes), initial=len(nodes) - len(pending), desc="generating questions", unit="chunk", disable=not show_progress
    )
    secrets = [getattr(llm, "api_key", None)]  # a key passed in code, not only the environment's

    def log_retry(retry_state: RetryCallState) -> None:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        wait = retry_state.next_action.sleep if retry_state.next_action else 0.0
        logger.debug(
            "retry %d in %.2fs after %s", retry_state.attempt_number, wait, redact(f"{type(exc).__name__}: {exc}", secrets)
        )

    async def ask(node: BaseNode) -> None:
        text = texts[node.node_id]
        prompt = prompt_template.format(context_str=text, num_questions=questions_per_chunk)

        async def complete_once() -> str:
            async with semaphore:
                reply = await asyncio.wait_for(llm.acomplete(prompt), request_timeout)
            return reply.text

        retrying = async_transient_retries(max_retries + 1, retry_base_delay, retry_max_delay, before_sleep=log_retry)
        try:
            reply_text: str = await retrying(complete_once)
        except Exception as exc:
            if is_fatal(exc):
                raise TuningError(
                    redact(
                        f"the LLM refused the request ({type(exc).__name__}: {exc}); check the API key, model name and endpoint",
                        secrets,
                    )
                ) from None
            failures[node.node_id] = redact(f"{type(exc).__name__}: {exc}", secrets)
        else:
            progress.add(_node_key(node, text), node.node_id, parse_questions(reply_text, questions_per_chunk))
        bar.update(1)

    tasks = [asyncio.ensure_future(ask(node)) for node in pending]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        bar.close()

    if failures:
        first_id, first_error = next(iter(failures.items()))
        message = f"{len(failures)} of {len(nodes)} chunks failed after {max_retries} retries (e.g. {first_id}: {first_error})"
        if len(failures) > max_failed_fraction * len(nodes):
            raise TuningError(
                f"{message}; finished chunks are saved in {progress.path}, rerun the same command to retry only the rest"
            )
        logger.warning("%s; continuing without them (allowed: %.0f%%)", message, 100 * max_failed_fraction)
    questions_by_node = {node.node_id: progress.done.get(_node_key(node, texts[node.node_id]), []) for node in nodes}
    empty = sum(1 for node in nodes if node.node_id not in failures and not questions_by_node[node.node_id])
    if empty:
        logger.warning("%d chunks got no usable question from the LLM", empty)
    dataset = _assemble(nodes, questions_by_node)
    if not dataset.queries:
        raise TuningError("the LLM gave no usable questions; check the model and the prompt template")
    dataset.save_json(output_path)
    return dataset


# -- LLM from a CLI string ---------------------------------------------------------------

LLM_SPEC_HELP = "use openai:MODEL, ollama:MODEL or offline"


def llm_from_spec(spec: str) -> LLM | None:
    """The LLM a CLI string names: `openai:MODEL`, `ollama:MODEL`, or `offline` (None).

    `openai:` reads OPENAI_API_KEY and, for OpenAI-compatible servers, OPENAI_BASE_URL
    (or the older OPENAI_API_BASE).
    """
    if spec.strip().lower() == "offline":
        return None
    provider, _, model = spec.partition(":")
    provider, model = provider.strip().lower(), model.strip()
    if not model or provider not in ("openai", "ollama"):
        raise TuningError(f"unknown LLM '{spec}'; {LLM_SPEC_HELP}")
    if provider == "openai":
        from llama_index.llms.openai import OpenAI

        api_key = os.environ.get("OPENAI_API_KEY")
        if not api_key:
            raise TuningError("OPENAI_API_KEY is not set; export it, or generate without an LLM with --llm offline")
        api_base = os.environ.get("OPENAI_BASE_URL") or os.environ.get("OPENAI_API_BASE")
        # Retries happen in generate_llm_pairs, with jitter; stacking the SDK's on top multiplies waits.
        kwargs: dict[str, Any] = {"model": model, "api_key": api_key, "api_base": api_base, "max_retries": 0, "timeout": 120.0}
        llm = OpenAI(**kwargs)
        try:
            _ = llm.metadata  # the OpenAI class only knows OpenAI's own model names; reading it checks the name
        except ValueError:
            try:
                from llama_index.llms.openai_like import OpenAILike
            except ImportError:
                raise TuningError(
                    f"'{model}' is not an OpenAI model name; for another OpenAI-compatible server run "
                    "`pip install llama-index-llms-openai-like` and set OPENAI_BASE_URL"
                ) from None
            return OpenAILike(**kwargs, is_chat_model=True)
        return llm
    try:
        from llama_index.llms.ollama import Ollama
    except ImportError:
        raise TuningError(
            "ollama support is not installed; run `pip install llama-index-llms-ollama`, or use --llm offline"
        ) from None
    base_url = os.environ.get("OLLAMA_HOST", "http://localhost:11434")
    if "://" not in base_url:
        base_url = f"http://{base_url}"
    return Ollama(model=model, base_url=base_url, request_timeout=180.0)
