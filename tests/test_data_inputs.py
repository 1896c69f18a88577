"""Inputs a new user hit, and LlamaIndex's QA JSON with repeated queries."""

import csv
import json
import logging
from pathlib import Path

import pytest
from conftest import SHARED_DATA, UBER_PDF

from llama_index_lancedb_tuning import (
    QADataset,
    TuningError,
    chunk_corpus,
    load_documents,
    load_labeled_csv,
    load_qa_dataset,
    model_tokenizer,
    resolve_model,
)

LYFT_TRAIN = SHARED_DATA / "lyft_uber_10k" / "train_dataset.json"


def write_rows(path, rows, delimiter=","):
    with path.open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh, delimiter=delimiter).writerows(rows)
    return path


def test_a_whole_page_context_loads(tmp_path):
    page = "Revenue grew in every quarter of the year. " * 4700  # about 200,000 characters
    path = write_rows(tmp_path / "pages.csv", [["query", "context"], ["How did revenue change?", page]])
    dataset = load_labeled_csv(path)
    assert len(page) > 200_000
    assert list(dataset.corpus.values()) == [page.strip()]


def test_documents_under_a_dot_directory_are_found_and_hidden_ones_inside_skipped(tmp_path):
    docs = tmp_path / ".data" / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / ".cache").mkdir()
    (docs / "notes.txt").write_text("Glaciers move slowly.")
    (docs / "sub" / "more.md").write_text("Volcanoes erupt.")
    (docs / ".hidden.txt").write_text("An editor's swap file.")
    (docs / ".cache" / "old.txt").write_text("A cached copy.")
    assert load_documents(docs) == {"notes.txt": "Glaciers move slowly.", "sub/more.md": "Volcanoes erupt."}
    assert load_documents(docs, recursive=False) == {"notes.txt": "Glaciers move slowly."}


@pytest.mark.parametrize("name", ["labels.tsv", "labels.csv"])
def test_tab_separated_files_load(tmp_path, name):
    rows = [
        ["query", "context", "answer"],
        ["Who wrote it?", "Ada wrote it, in 1843.", "Ada"],
        ["When?", "In 1843, Ada wrote it.", "1843"],
    ]
    dataset = load_labeled_csv(write_rows(tmp_path / name, rows, delimiter="\t"))
    assert sorted(dataset.queries.values()) == ["When?", "Who wrote it?"]
    assert sorted(dataset.corpus.values()) == ["Ada wrote it, in 1843.", "In 1843, Ada wrote it."]


def test_a_comma_csv_whose_contexts_hold_tabs_stays_comma_separated(tmp_path):
    path = write_rows(tmp_path / "labels.csv", [["query", "context"], ["Which columns?", "a\tb\tc"]])
    assert list(load_labeled_csv(path).corpus.values()) == ["a\tb\tc"]


def test_a_pdf_passed_as_the_labeled_csv_is_named_a_pdf():
    with pytest.raises(TuningError, match=r"is a PDF, not a labeled CSV.*--queries") as info:
        load_qa_dataset(UBER_PDF)
    assert "UTF-8" not in str(info.value) and "\n" not in str(info.value)


def test_a_text_file_named_pdf_is_named_not_a_pdf_without_reader_noise(tmp_path, capfd, caplog):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "real.txt").write_text("Real text.")
    (docs / "report.pdf").write_text("This is plain text saved with the wrong suffix.")
    with caplog.at_level(logging.DEBUG), pytest.raises(TuningError, match=r"report\.pdf is not a PDF") as info:
        load_documents(docs)
    assert "OCR" not in str(info.value)
    assert not [r for r in caplog.records if r.name.startswith("pypdf")]
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def linked_model_copy(tmp_path, config_text=None):
    """The bundled model's files linked into a new directory, with config.json replaced if asked."""
    source = resolve_model(None)
    target = tmp_path / "model"
    for file in Path(source).rglob("*"):
        if file.is_file():
            link = target / file.relative_to(source)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(file)
    if config_text is not None:
        (target / "config.json").unlink()
        (target / "config.json").write_text(config_text)
    return target


def test_a_corrupt_config_json_is_named(tmp_path):
    model_dir = linked_model_copy(tmp_path, config_text='{"model_type": "bert", "hidden_')
    with pytest.raises(TuningError) as info:
        resolve_model(model_dir)
    message = str(info.value)
    assert str(model_dir / "config.json") in message and "corrupt" in message
    assert "pass a local model directory" not in message


def test_a_corrupt_module_config_is_named_and_an_intact_copy_loads(tmp_path):
    intact = linked_model_copy(tmp_path / "intact")
    assert resolve_model(intact) == str(intact.resolve())
    assert model_tokenizer(resolve_model(intact))("hello world")
    broken = linked_model_copy(tmp_path / "broken")
    (broken / "1_Pooling" / "config.json").unlink()
    (broken / "1_Pooling" / "config.json").write_text("not json")
    with pytest.raises(TuningError, match=r"1_Pooling/config\.json is corrupt"):
        resolve_model(broken)


def test_counts_of_one_are_singular(tmp_path, caplog):
    one = QADataset({"q1": "Who?"}, {"d1": "Ada."}, {"q1": ["d1"]})
    with pytest.raises(TuningError, match=r"only 1 query: too few"):
        one.split()
    path = write_rows(
        tmp_path / "labels.csv", [["query", "context"], ["Who?", "Ada."], ["", "Orphan context."], ["Who?", "Ada, again."]]
    )
    with caplog.at_level(logging.WARNING):
        load_labeled_csv(path)
    messages = [r.getMessage() for r in caplog.records]
    assert any("skipped 1 row with an empty" in m for m in messages), messages
    assert any("1 row repeated an earlier query" in m for m in messages), messages
    assert not any(" 1 rows" in m or " 1 queries" in m for m in messages)


def test_chunking_long_documents_prints_no_sequence_length_warning(capfd, caplog, default_model_path):
    long_document = "The glacier moved a little further down the valley every winter. " * 400
    with caplog.at_level(logging.WARNING):
        nodes = chunk_corpus({"doc": long_document}, model_tokenizer(default_model_path), 128, 16, fix_glued_words=False)
    assert len(nodes) > 10
    out, err = capfd.readouterr()
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "sequence length is longer" not in out + err + logged


@pytest.mark.parametrize("where", ["under_a_file", "onto_a_directory"])
def test_save_json_to_an_unwritable_path_is_one_line(tmp_path, where, small_dataset):
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    (tmp_path / "taken").mkdir()
    target = tmp_path / "notes.txt" / "pairs.json" if where == "under_a_file" else tmp_path / "taken"
    with pytest.raises(TuningError, match=r"^cannot (write|create)") as info:
        small_dataset.save_json(target)
    message = str(info.value)
    assert "\n" not in message and "writable location" in message
    assert str(target.parent if where == "under_a_file" else target) in message
    assert not list(tmp_path.glob("*.tmp"))


def test_json_with_a_query_repeated_under_new_ids_counts_it_once(tmp_path, caplog):
    raw = {
        "queries": {"q-a": "What moves?", "q-b": "What erupts?", "q-c": "What moves? "},
        "corpus": {"d1": "Glaciers move.", "d2": "Volcanoes erupt.", "d3": "Ice sheets move."},
        "relevant_docs": {"q-a": ["d1"], "q-b": ["d2"], "q-c": ["d3", "d1"]},
    }
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps(raw))
    with caplog.at_level(logging.WARNING):
        dataset = QADataset.from_json(path)
    assert dataset.queries == {"q-a": "What moves?", "q-b": "What erupts?"}
    assert dataset.relevant_docs == {"q-a": ["d1", "d3"], "q-b": ["d2"]}
    assert dataset.corpus == raw["corpus"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "1 query repeated an earlier query" in warnings[0]


def test_llamaindex_lyft_train_file_merges_its_ten_repeats(caplog):
    raw = json.loads(LYFT_TRAIN.read_text())
    with caplog.at_level(logging.WARNING):
        dataset = load_qa_dataset(LYFT_TRAIN)
    assert len(raw["queries"]) == 668 and len(dataset) == 658
    assert len(set(dataset.queries.values())) == 658
    assert set(dataset.query_ids) <= set(raw["queries"])  # ids are the file's own
    for query_id, text in raw["queries"].items():
        kept = next(q for q in dataset.query_ids if dataset.queries[q] == text)
        assert set(raw["relevant_docs"][query_id]) <= set(dataset.relevant_docs[kept])
    assert sum(len(dataset.relevant_docs[q]) == 2 for q in dataset.query_ids) == 10
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "10 queries repeated an earlier query" in warnings[0]
