"""Training pairs (question -> node) from unlabeled nodes: with any LlamaIndex LLM, or offline.

Both return a `QADataset`, the JSON shape `lancedb-tune finetune` and llama-index-finetuning
read: with an LLM the corpus is the node texts keyed by node id; offline each pair has its
own corpus entry (see `generate_offline_pairs`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import os
import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llama_index.core.schema import BaseNode, MetadataMode

from .dataset import QADataset, stable_id
from .errors import TuningError

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
    "what which who whom whose when where why how is are was were do does did can could should would will has have had".split()
)
_MIN_WORDS = 3
_MAX_CHARS = 400
_RETRY_AFTER_CAP_S = 60.0


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


# -- retry policy ----------------------------------------------------------------------


def _status_code(exc: BaseException) -> int | None:
    code = getattr(exc, "status_code", None)
    if code is None:
        code = getattr(getattr(exc, "response", None), "status_code", None)
    return code if isinstance(code, int) else None


def _is_transient(exc: BaseException) -> bool:
    """Rate limits, server errors, timeouts and dropped connections: worth another try."""
    code = _status_code(exc)
    if code is not None:
        return code in (408, 409, 429) or code >= 500
    if isinstance(exc, (TimeoutError, ConnectionError)):
        return True
    # LLM clients wrap transport failures in their own classes (openai.APITimeoutError,
    # httpx.ConnectError, ...); match by name so any LlamaIndex LLM is covered.
    names = {cls.__name__ for cls in type(exc).__mro__}
    return any("Timeout" in n or "Connection" in n or "Transport" in n for n in names)


def _is_fatal(exc: BaseException) -> bool:
    """Bad key, no access or unknown model: every chunk would fail the same way."""
    return _status_code(exc) in (401, 403, 404)


def _retry_after(exc: BaseException) -> float | None:
    headers = getattr(getattr(exc, "response", None), "headers", None)
    try:
        return float(headers.get("retry-after")) if headers is not None else None
    except (TypeError, ValueError):
        return None


# -- resumable progress ----------------------------------------------------------------


class _Progress:
    """Append-only JSONL of finished chunks, fsynced per line, so a killed run resumes.

    Records are keyed by node id and node text, so resuming on changed chunks regenerates
    only what changed; the first line pins the settings the records were made with.
    """

    def __init__(self, path: Path, settings: dict[str, Any]) -> None:
        self.path = path
        self.done: dict[str, list[str]] = {}
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            self._load(settings)
        else:
            self._append({"settings": settings})

    def _load(self, settings: dict[str, Any]) -> None:
        raw = self.path.read_bytes()
        good_end = 0
        header_seen = False
        for line in raw.splitlines(keepends=True):
            if not line.endswith(b"\n"):
                break  # torn last write of a killed run
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                break
            good_end += len(line)
            if not header_seen:
                header_seen = True
                if record.get("settings") != settings:
                    raise TuningError(
                        f"{self.path} holds pairs generated with other settings (prompt, questions per chunk "
                        "or model); rerun with the same settings or delete it to start over"
                    )
                continue
            self.done[record["key"]] = record["questions"]
        if good_end < len(raw):
            with self.path.open("r+b") as fh:
                fh.truncate(good_end)
        if not header_seen:
            self._append({"settings": settings})

    def _append(self, record: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def add(self, key: str, node_id: str, questions: list[str]) -> None:
        self._append({"key": key, "node_id": node_id, "questions": questions})
        self.done[key] = questions


def _node_key(node: BaseNode, text: str) -> str:
    return f"{node.node_id}|{hashlib.sha1(text.encode('utf-8')).hexdigest()[:16]}"


def _node_text(node: BaseNode) -> str:
    return node.get_content(metadata_mode=MetadataMode.NONE)


def _assemble(nodes: Sequence[BaseNode], questions_by_node: dict[str, list[str]]) -> QADataset:
    """Queries in node order, each question kept once (for the first node that asked it)."""
    queries: dict[str, str] = {}
    relevant: dict[str, list[str]] = {}
    corpus: dict[str, str] = {}
    seen: set[str] = set()
    for node in nodes:
        corpus[node.node_id] = _node_text(node)
        for question in questions_by_node.get(node.node_id, []):
            key = _normalise(question)
            if key in seen:
                continue
            seen.add(key)
            query_id = stable_id("q", f"{node.node_id}\n{question}")
            queries[query_id] = question
            relevant[query_id] = [node.node_id]
    return QADataset(queries, corpus, relevant)


# -- LLM generation --------------------------------------------------------------------


def progress_path(output_path: str | Path) -> Path:
    """Where `generate_llm_pairs` keeps finished chunks while it runs."""
    output_path = Path(output_path)
    return output_path.with_name(output_path.name + ".progress.jsonl")


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
    `prompt_template` takes `{context_str}` and `{num_questions}`.
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
    progress = _Progress(progress_path(output_path), settings)
    texts = {node.node_id: _node_text(node) for node in nodes}
    pending = [n for n in nodes if _node_key(n, texts[n.node_id]) not in progress.done]
    if len(pending) < len(nodes):
        logger.info("resuming: %d of %d chunks already done in %s", len(nodes) - len(pending), len(nodes), progress.path)

    semaphore = asyncio.Semaphore(max_concurrency)
    failures: dict[str, str] = {}
    rng = random.Random()
    bar = tqdm(total=len(nodes), initial=len(nodes) - len(pending), desc="generating questions", unit="chunk", disable=not show_progress)

    async def ask(node: BaseNode) -> None:
        text = texts[node.node_id]
        prompt = prompt_template.format(context_str=text, num_questions=questions_per_chunk)
        for attempt in range(max_retries + 1):
            try:
                async with semaphore:
                    reply = await asyncio.wait_for(llm.acomplete(prompt), request_timeout)
            except Exception as exc:
                if _is_fatal(exc):
                    raise TuningError(
                        f"the LLM refused the request ({type(exc).__name__}: {exc}); check the API key, "
                        "model name and endpoint"
                    ) from None
                if not _is_transient(exc) or attempt == max_retries:
                    failures[node.node_id] = f"{type(exc).__name__}: {exc}"
                    break
                # Full jitter keeps concurrent workers from retrying in lockstep.
                delay = rng.uniform(0, min(retry_max_delay, retry_base_delay * 2**attempt))
                delay = max(delay, min(_retry_after(exc) or 0.0, _RETRY_AFTER_CAP_S))
                logger.debug("chunk %s: %s; retry %d in %.2fs", node.node_id, exc, attempt + 1, delay)
                await asyncio.sleep(delay)
                continue
            progress.add(_node_key(node, text), node.node_id, parse_questions(reply.text, questions_per_chunk))
            break
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
        message = (
            f"{len(failures)} of {len(nodes)} chunks failed after {max_retries} retries "
            f"(e.g. {first_id}: {first_error})"
        )
        if len(failures) > max_failed_fraction * len(nodes):
            raise TuningError(
                f"{message}; finished chunks are saved in {progress.path}, rerun the same command to retry only the rest"
            )
        logger.warning("%s; continuing without them (allowed: %.0f%%)", message, 100 * max_failed_fraction)
    questions_by_node = {
        node.node_id: progress.done.get(_node_key(node, texts[node.node_id]), []) for node in nodes
    }
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
        kwargs = {"model": model, "api_key": api_key, "api_base": api_base, "max_retries": 0, "timeout": 120.0}
        llm = OpenAI(**kwargs)
        try:
            llm.metadata  # the OpenAI class only knows OpenAI's own model names
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


# -- offline generation ------------------------------------------------------------------

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\"'])")
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9\-]*[A-Za-z0-9]")
_STOPWORDS = frozenset(
    """a about above after again all also an and any are as at be because been before being below between both but by
    can could did do does doing down during each few for from further had has have having here how however i if in into
    is it its itself just more most no nor not of off on once only or other our out over own same should so some such
    than that the their them then there these they this those through to too under until up use used using very was we
    were what when where which while who whom why will with would you your et al fig figure table section see""".split()
)
_QUESTION_FORMS = (
    "What is known about {}?",
    "What does the document say about {}?",
    "How does {} work?",
    "Why is {} important?",
    "What role does {} play?",
    "How is {} described?",
)
_MIN_SENTENCE_WORDS = 6


def _sentences(text: str) -> list[str]:
    # PDF text wraps lines mid-sentence, so sentences are split on punctuation, not newlines.
    flat = " ".join(text.split())
    return [s for s in _SENTENCE_END.split(flat) if len(_WORD.findall(s)) >= _MIN_SENTENCE_WORDS]


def _salient_terms(sentence: str, idf: dict[str, float], rng: random.Random) -> str:
    """The sentence's rarest content words, in sentence order: the gist a question would name."""
    words = [w for w in _WORD.findall(sentence) if w.lower() not in _STOPWORDS and len(w) > 2]
    unique = list(dict.fromkeys(words))
    keep = set(sorted(unique, key=lambda w: -idf.get(w.lower(), 0.0))[: rng.randint(2, 4)])
    return " ".join(w for w in unique if w in keep)


def generate_offline_pairs(
    nodes: Sequence[BaseNode],
    queries_per_chunk: int = 1,
    question_fraction: float = 0.5,
    keep_sentence_probability: float = 0.1,
    seed: int = 42,
) -> QADataset:
    """Pseudo-questions from the nodes themselves, for fine-tuning without an LLM or labels.

    Inverse cloze task (Lee et al., 2019, "Latent Retrieval for Weakly Supervised Open
    Domain Question Answering"): a sentence drawn from a chunk is the query and the chunk
    *without that sentence* is the positive, so the model must match on meaning and
    context rather than on the copied words. A `question_fraction` of the queries are
    recast as questions naming the sentence's rarest terms ("How does X Y work?"), which
    moves the pseudo-queries toward the form real users type. Sentences are drawn without
    replacement, `queries_per_chunk` per chunk; chunks without two sentences of six or
    more words (tables, lists) give no pairs.

    The positives differ from the nodes, so each pair gets its own corpus entry,
    `NODE_ID#K`; `relevant_docs` points there and `source_node_id` maps it back.
    """
    if queries_per_chunk < 1:
        raise TuningError(f"queries_per_chunk must be at least 1, got {queries_per_chunk}")
    rng = random.Random(seed)
    texts = [(node.node_id, " ".join(_node_text(node).split())) for node in nodes]
    doc_freq: dict[str, int] = {}
    for _, text in texts:
        for word in {w.lower() for w in _WORD.findall(text)}:
            doc_freq[word] = doc_freq.get(word, 0) + 1
    idf = {w: math.log((1 + len(texts)) / (1 + df)) for w, df in doc_freq.items()}

    queries: dict[str, str] = {}
    corpus: dict[str, str] = {}
    relevant: dict[str, list[str]] = {}
    for node_id, text in texts:
        sentences = _sentences(text)
        if len(sentences) < 2:
            continue  # removing the only sentence would leave no positive
        for k, sentence in enumerate(rng.sample(sentences, min(queries_per_chunk, len(sentences) - 1))):
            positive = text if rng.random() < keep_sentence_probability else " ".join(text.replace(sentence, " ").split())
            query = sentence
            if rng.random() < question_fraction:
                terms = _salient_terms(sentence, idf, rng)
                if terms:
                    query = rng.choice(_QUESTION_FORMS).format(terms)
            doc_id = f"{node_id}#{k}"
            query_id = stable_id("q", f"{doc_id}\n{query}")
            queries[query_id] = query
            corpus[doc_id] = positive
            relevant[query_id] = [doc_id]
    if not queries:
        raise TuningError(
            f"none of the {len(nodes)} chunks has two sentences of {_MIN_SENTENCE_WORDS}+ words; "
            "use larger chunks or generate questions with an LLM"
        )
    return QADataset(queries, corpus, relevant)


def source_node_id(doc_id: str) -> str:
    """The node an offline pair's corpus entry (`NODE_ID#K`) was cut from."""
    return doc_id.rpartition("#")[0] or doc_id
