"""benchmarks/filter_strategies.py: the category-filter strategies it compares with the index's own
(per-category graphs) return only allowed items with good recall, tombstones never, and its command
prints a row per case and strategy without writing anything."""

import json

import numpy as np
import pytest

from artifacts.hnsw_index import HnswIndex
from artifacts.index_update import update_index
from artifacts.vector_search import recall_at_k
from benchmarks import filter_strategies
from tests.helpers import HNSW_TEST_PARAMS, perturbed, write_run


@pytest.mark.parametrize("strategy", filter_strategies.STRATEGIES)
def test_every_strategy_returns_only_the_category_with_good_recall(clustered_index, clustered_data, strategy):
    index, queries = clustered_index, perturbed(clustered_data[2][::20])
    pos, sim = filter_strategies.filtered_search(index, queries, 10, "c4", strategy)
    assert (pos >= 0).all() and set(index.categories_of(pos.ravel())) == {"c4"}
    _, exact_sim = index.exact_search_positions(queries, 10, "c4")
    approx_sim = np.einsum("qd,qkd->qk", queries, index.vectors[pos])
    assert recall_at_k(pos, exact_sim, approx_sim) >= 0.95
    np.testing.assert_allclose(sim, approx_sim, atol=1e-4)


def test_unknown_strategy_is_refused(clustered_index, clustered_data):
    with pytest.raises(ValueError, match="unknown strategy"):
        filter_strategies.filtered_search(clustered_index, clustered_data[2][:1], 10, "c4", "telepathy")


def test_no_strategy_returns_a_tombstone(clustered_data):
    ids, cats, vectors = clustered_data
    keep = np.arange(len(ids)) % 7 != 0  # a seventh of the items removed: tombstones in every graph
    index = HnswIndex.build(ids, cats, vectors, **HNSW_TEST_PARAMS, content_hashes=[f"h{i}" for i in range(len(ids))])
    updated, _ = update_index(index, np.asarray(ids)[keep].tolist(), np.asarray(cats)[keep].tolist(),
                           [f"h{i}" for i in np.flatnonzero(keep)], vectors[keep])
    assert updated.deleted.sum() == (~keep).sum()
    for strategy in filter_strategies.STRATEGIES:
        pos, _ = filter_strategies.filtered_search(updated, vectors[::10], 10, "c0", strategy)
        assert (pos >= 0).all() and not updated.deleted[pos].any(), strategy


def test_command_prints_a_row_per_case_and_strategy(clustered_data, tmp_path, capsys):
    ids, cats, vectors = clustered_data
    root = str(tmp_path / "store")
    write_run(root, "model-a", "run-1", ids, cats, vectors)
    rc = filter_strategies.main(["--embeddings", f"{root}/embeddings/model-a", "--queries", "200", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert rc == 0 and report["items"] == len(ids) and len(report["rows"]) == 6
    assert {r["strategy"] for r in report["rows"]} == set(filter_strategies.STRATEGIES)
    assert all(0.9 <= r["recall_at_k"] <= 1.0 for r in report["rows"] if r["case"] == "own category")
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == ["embeddings"]  # nothing written
