"""Training pairs from unlabeled nodes without an LLM: the inverse cloze task.

The result is a `QADataset` in which each pair has its own corpus entry (see
`generate_offline_pairs`); `source_node_id` maps an entry back to its node.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence

from llama_index.core.schema import BaseNode, MetadataMode

from ..data.qa_dataset import QADataset, stable_id
from ..errors import TuningError

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\"'])")
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9\-]*[A-Za-z0-9]")
_STOPWORDS = frozenset(
    [
        "a",
        "about",
        "above",
        "after",
        "again",
        "all",
        "also",
        "an",
        "and",
        "any",
        "are",
        "as",
        "at",
        "be",
        "because",
        "been",
        "before",
        "being",
        "below",
        "between",
        "both",
        "but",
        "by",
        "can",
        "could",
        "did",
        "do",
        "does",
        "doing",
        "down",
        "during",
        "each",
        "few",
        "for",
        "from",
        "further",
        "had",
        "has",
        "have",
        "having",
        "here",
        "how",
        "however",
        "i",
        "if",
        "in",
        "into",
        "is",
        "it",
        "its",
        "itself",
        "just",
        "more",
        "most",
        "no",
        "nor",
        "not",
        "of",
        "off",
        "on",
        "once",
        "only",
        "or",
        "other",
        "our",
        "out",
        "over",
        "own",
        "same",
        "should",
        "so",
        "some",
        "such",
        "than",
        "that",
        "the",
        "their",
        "them",
        "then",
        "there",
        "these",
        "they",
        "this",
        "those",
        "through",
        "to",
        "too",
        "under",
        "until",
        "up",
        "use",
        "used",
        "using",
        "very",
        "was",
        "we",
        "were",
        "what",
        "when",
        "where",
        "which",
        "while",
        "who",
        "whom",
        "why",
        "will",
        "with",
        "would",
        "you",
        "your",
        "et",
        "al",
        "fig",
        "figure",
        "table",
        "section",
        "see",
    ]
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

    Args:
        nodes: The chunks to cut pairs from.
        queries_per_chunk: Sentences drawn per chunk.
        question_fraction: Share of queries recast as questions.
        keep_sentence_probability: Share of positives that keep the query sentence, so the model
            also sees exact matches.
        seed: Seeds every draw; the same nodes and seed give the same pairs.
    """
    if queries_per_chunk < 1:
        raise TuningError(f"queries_per_chunk must be at least 1, got {queries_per_chunk}")
    rng = random.Random(seed)
    texts = [(node.node_id, " ".join(node.get_content(metadata_mode=MetadataMode.NONE).split())) for node in nodes]
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
