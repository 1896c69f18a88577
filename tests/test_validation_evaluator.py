"""The epoch-picking evaluator keeps every relevant node and a seeded sample of distractors."""

from llama_index_lancedb_tuning.training.training_pairs import source_nodes
from llama_index_lancedb_tuning.training.validation_evaluator import ir_evaluator


def test_a_large_corpus_is_cut_to_the_relevant_nodes_and_a_seeded_sample(small_dataset, small_nodes):
    by_source = source_nodes(small_dataset, small_nodes)
    queries = small_dataset.subset(small_dataset.query_ids[:5])
    relevant = {n.node_id for q in queries.query_ids for d in queries.relevant_docs[q] for n in by_source[d]}
    cut = ir_evaluator(queries, by_source, 5, "val", seed=1, max_nodes=len(relevant) + 10)
    assert relevant <= set(cut.corpus_ids) and len(cut.corpus_ids) == len(relevant) + 10
    assert cut.corpus_ids == ir_evaluator(queries, by_source, 5, "val", seed=1, max_nodes=len(relevant) + 10).corpus_ids
    whole = ir_evaluator(queries, by_source, 5, "val")  # under the cap: every node
    assert len(whole.corpus_ids) == len(small_nodes)


def test_a_cut_equal_to_ten_is_counted_once(small_dataset, small_nodes):
    by_source = source_nodes(small_dataset, small_nodes)
    assert ir_evaluator(small_dataset, by_source, 10, "val").accuracy_at_k == [1, 10]
