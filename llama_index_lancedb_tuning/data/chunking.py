"""Documents into nodes of at most a model's chunk size, counted in that model's own tokens."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from llama_index.core.node_parser import SentenceSplitter
from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode

from ..errors import TuningError

SOURCE_ID_KEY = "source_id"
# Letter runs this long are almost never one English word (the dictionary words that are, such as
# "internationalization", stay whole); picked on validation queries of data_qa.csv (BENCHMARKS.md).
GLUED_RUN_MIN_LETTERS = 16
_GLUED_RUN = re.compile(rf"[A-Za-z]{{{GLUED_RUN_MIN_LETTERS},}}")


def model_tokenizer(model_path: str) -> Callable[[str], list]:
    """The embedding model's own tokenizer, so chunk sizes are counted in its tokens.

    Args:
        model_path: a resolved model directory or hub id (see `resolve_model`).
    """
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path)
    except Exception as exc:
        raise TuningError(
            f"cannot load the tokenizer of model '{model_path}' ({type(exc).__name__}); pass a local model directory "
            "or a hub id reachable from this machine"
        ) from None
    return token_counter(tokenizer)


def token_counter(tokenizer: Any) -> Callable[[str], list]:
    """A Hugging Face tokenizer as the token function chunking needs."""
    # verbose=False: whole documents are longer than the model's input on purpose (they are counted to
    # be split), so transformers' "sequence length is longer than the maximum" warning does not apply.
    return lambda text: tokenizer.encode(text, add_special_tokens=False, verbose=False)


def split_glued_words(text: str) -> str:
    """Put back the spaces PDF extraction lost: "Wehaveimplementedaqualityassuranceprocess" becomes
    "We have implemented a quality assurance process".

    Only runs of at least `GLUED_RUN_MIN_LETTERS` letters are touched. A WordPiece tokenizer cuts
    such a run into meaningless pieces and BM25 sees one unknown term, so both searches miss the
    words inside it: 24% of the letters of data_qa.csv's contexts sit in such runs. English only:
    wordninja splits by a unigram model of English Wikipedia, bundled with it (no download).
    """
    import wordninja  # loads its word list on import (about half a second): only when text is repaired

    def split(match: re.Match[str]) -> str:
        words = wordninja.split(match.group(0))
        return " ".join(words) if "".join(words) == match.group(0) else match.group(0)

    return _GLUED_RUN.sub(split, text)


def chunk_corpus(
    corpus: dict[str, str],
    tokenizer: Callable[[str], list],
    chunk_size: int,
    chunk_overlap: int,
    fix_glued_words: bool = True,
) -> list[TextNode]:
    """Split each document into nodes of at most `chunk_size` model tokens, or keep it whole.

    Every node points back to its document (SOURCE relationship and `source_id` metadata),
    so a hit on any node counts for its document.

    Args:
        corpus: document id -> text.
        tokenizer: counts tokens (`model_tokenizer`).
        chunk_size: the most tokens in a node; 0: one node per document, its text as given (the
            model truncates it at its input length, as MTEB scores a corpus of abstracts).
        chunk_overlap: tokens shared by neighbouring nodes; smaller than `chunk_size`.
        fix_glued_words: re-space words that PDF extraction ran together first (`split_glued_words`);
            the nodes then hold the repaired text.
    """
    if chunk_size == 0:
        return [_node(doc_id, 0, text) for doc_id, text in corpus.items() if text.strip()]
    if chunk_overlap >= chunk_size:
        raise TuningError(f"chunk_overlap ({chunk_overlap}) must be smaller than chunk_size ({chunk_size})")
    splitter = SentenceSplitter(chunk_size=chunk_size, chunk_overlap=chunk_overlap, tokenizer=tokenizer)
    return [
        _node(doc_id, i, chunk)
        for doc_id, text in corpus.items()
        for i, chunk in enumerate(splitter.split_text(split_glued_words(text) if fix_glued_words else text))
    ]


def _node(doc_id: str, number: int, text: str) -> TextNode:
    """The `number`th node of document `doc_id`, pointing back to it."""
    return TextNode(
        id_=f"{doc_id}:{number}",
        text=text,
        metadata={SOURCE_ID_KEY: doc_id},
        excluded_embed_metadata_keys=[SOURCE_ID_KEY],
        excluded_llm_metadata_keys=[SOURCE_ID_KEY],
        relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=doc_id)},
    )
