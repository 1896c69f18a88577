import json
import re

import numpy as np
import pytest

from llama_index_lancedb_tuning import QADataset, TuningError, chunk_corpus, load_labeled_csv, split_glued_words


def test_reference_csv_shape(qa_dataset):
    assert len(qa_dataset) == 220
    assert len(qa_dataset.corpus) == 110
    assert all(len(v) == 1 for v in qa_dataset.relevant_docs.values())


def test_split_matches_sklearn_permutation_and_is_disjoint(qa_dataset):
    train, test = qa_dataset.split(0.2, 42)
    assert (len(train), len(test)) == (176, 44)
    assert not set(train.queries) & set(test.queries)
    expected_test = [qa_dataset.query_ids[i] for i in np.random.RandomState(42).permutation(220)[:44]]
    assert test.query_ids == expected_test
    assert qa_dataset.split(0.2, 42)[1].query_ids == expected_test  # reproducible
    assert qa_dataset.split(0.2, 7)[1].query_ids != expected_test


def test_kfold_tests_every_query_once(qa_dataset):
    seen = []
    for train, test in qa_dataset.kfold(5, 42):
        assert not set(train.queries) & set(test.queries)
        assert len(train) + len(test) == 220
        seen += test.query_ids
    assert sorted(seen) == sorted(qa_dataset.query_ids)


def test_json_round_trip_matches_llamaindex_shape(tmp_path, small_dataset):
    path = tmp_path / "ds.json"
    small_dataset.save_json(path)
    raw = json.loads(path.read_text())
    assert set(raw) == {"queries", "corpus", "relevant_docs", "mode"}
    back = QADataset.from_json(path)
    assert back.queries == small_dataset.queries and back.relevant_docs == small_dataset.relevant_docs


def test_chunks_fit_the_model_and_keep_their_source(small_dataset, small_nodes, default_model_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(default_model_path)
    assert len(small_nodes) > len(small_dataset.corpus)  # ~550-token contexts split into several nodes
    assert max(len(tok.encode(n.text, add_special_tokens=False)) for n in small_nodes) <= 128
    assert {n.ref_doc_id for n in small_nodes} == set(small_dataset.corpus)


def test_csv_errors_name_the_problem(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("question,passage\nq,p\n")
    with pytest.raises(TuningError, match="no column 'query'.*--query-column"):
        load_labeled_csv(bad)
    assert len(load_labeled_csv(bad, "question", "passage")) == 1
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(TuningError, match="empty"):
        load_labeled_csv(empty)
    with pytest.raises(TuningError, match="no such file"):
        load_labeled_csv(tmp_path / "missing.csv")
    latin = tmp_path / "latin.csv"
    latin.write_bytes("query,context\ncaf\xe9,x\n".encode("latin-1"))
    with pytest.raises(TuningError, match="UTF-8"):
        load_labeled_csv(latin)


def test_duplicate_queries_merge_their_contexts(tmp_path):
    path = tmp_path / "dup.csv"
    path.write_text("query,context\nwhat?,alpha\nwhat?,beta\nwhy?,alpha\n")
    ds = load_labeled_csv(path)
    assert len(ds) == 2 and len(ds.corpus) == 2
    assert len(ds.relevant_docs[ds.query_ids[0]]) == 2


def test_chunk_overlap_must_be_smaller(small_dataset):
    with pytest.raises(TuningError, match="chunk_overlap"):
        chunk_corpus(small_dataset.corpus, str.split, 10, 10)


def _glued_share(texts) -> float:
    """Share of letters that sit in runs of 16 or more letters."""
    texts = list(texts)
    letters = sum(len(w) for t in texts for w in re.findall(r"[A-Za-z]+", t))
    return sum(len(w) for t in texts for w in re.findall(r"[A-Za-z]{16,}", t)) / letters


def test_glued_words_of_the_reference_pdf_text_are_respaced(qa_dataset):
    contexts = list(qa_dataset.corpus.values())
    repaired = [split_glued_words(t) for t in contexts]
    assert _glued_share(contexts) > 0.2  # the Llama 2 paper's extracted text lost many spaces
    assert _glued_share(repaired) < 0.02
    # Only spaces are added: every other character is kept, in order.
    assert all(re.sub(r"\s", "", a) == re.sub(r"\s", "", b) for a, b in zip(contexts, repaired))
    assert "We have implemented a quality assurance process" in " ".join(repaired)


def test_clean_text_and_long_dictionary_words_are_left_alone():
    text = "Internationalization of straightforward text stays as it is, with short runs like reviewerswere."
    assert split_glued_words(text) == text


def test_chunking_respaces_unless_told_to_keep(small_dataset, default_model_path):
    from llama_index_lancedb_tuning import model_tokenizer

    tokenizer = model_tokenizer(default_model_path)
    fixed = chunk_corpus(small_dataset.corpus, tokenizer, 128, 16)
    kept = chunk_corpus(small_dataset.corpus, tokenizer, 128, 16, fix_glued_words=False)
    assert _glued_share(n.text for n in fixed) < 0.02 < 0.2 < _glued_share(n.text for n in kept)
    # Re-spaced words cost fewer model tokens than the word pieces of a glued run.
    assert len(fixed) < len(kept)
