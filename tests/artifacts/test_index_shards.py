"""Sharded indexes (artifacts/index_shards.py): the shard plan (artifacts/shard_plan.py), the merge,
and a sharded index answering what one index over the same items answers."""

import json

import numpy as np
import pytest

from artifacts import index_shards, shard_plan
from artifacts.hnsw_index import HnswIndex
from artifacts.index_manifest import MANIFEST
from artifacts.index_shards import ShardBudgetError, ShardedIndex, merge_top_k
from artifacts.shard_plan import ShardPlan, plan_shards


def catalogue(seed: int = 0, dim: int = 16):
    """Categories of 300, 120, 80, 40 and 30 items plus 10 uncategorised ones, clustered vectors."""
    rng = np.random.default_rng(seed)
    sizes = {"big": 300, "mid": 120, "small": 80, "tiny": 40, "wee": 30, None: 10}
    ids, cats, vecs = [], [], []
    for name, n in sizes.items():
        centre = rng.normal(size=dim)
        for i in range(n):
            ids.append(f"{name or 'none'}-{i:04d}")
            cats.append(name)
            vecs.append(centre + rng.normal(scale=0.8, size=dim))
    v = np.asarray(vecs, np.float32)
    return ids, cats, v / np.linalg.norm(v, axis=1, keepdims=True)


def test_plan_packs_whole_categories_and_splits_a_large_one_by_hash():
    ids, cats, _ = catalogue()
    plan = plan_shards(ids, cats, max_items=150)
    shard = plan.assign(ids, cats)
    sizes = np.bincount(shard, minlength=plan.shards)
    assert sizes.max() <= 150 and sizes.sum() == len(ids)
    assert set(plan.split) == {"big"} and len(plan.split["big"]) >= 2  # 300 > 150: hash-split
    for name in ("mid", "small", "tiny", "wee", shard_plan.NO_CATEGORY):
        assert len({s for s, c in zip(shard, cats) if shard_plan._key(c) == name}) == 1  # whole
    # Packed first fit, largest first: mid (120) + wee (30) fill one shard; small + tiny + none another.
    assert plan.whole["mid"] == plan.whole["wee"] != plan.whole["small"] == plan.whole["tiny"]
    assert plan.shards_for("big") == plan.split["big"] and plan.shards_for(None) == list(range(plan.shards))
    assert plan == plan_shards(list(reversed(ids)), list(reversed(cats)), 150)  # order of items does not matter
    assert ShardPlan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
    assert plan_shards(ids, cats, 0).shards == 1 and plan_shards(ids, cats, 10_000).shards == 1


def test_the_hash_is_stable_across_processes():
    # A fixed value: Python's hash() of a str changes with every process, this must not.
    assert shard_plan.stable_hash("item-000001") == shard_plan.stable_hash("item-000001")
    import subprocess
    import sys

    code = "from artifacts.shard_plan import stable_hash; print(stable_hash('item-000001'))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert int(other) == shard_plan.stable_hash("item-000001")


def test_merge_keeps_the_best_k_and_the_order_of_ties():
    a = [("a1", 0.9), ("a2", 0.5), ("a3", 0.1)]
    b = [("b1", 0.95), ("b2", 0.5)]
    merged = merge_top_k([a, b], 4, lambda x: x[1])
    assert [x[0] for x in merged] == ["b1", "a1", "a2", "b2"]  # a tie: the earlier part first
    assert merge_top_k([a, []], 10, lambda x: x[1]) == a
    assert merge_top_k([], 3, lambda x: x[1]) == []


def _same(got, want, tol=1e-5):
    assert [[h.item_id for h in row] for row in got] == [[h.item_id for h in row] for row in want]
    assert np.allclose([[h.similarity for h in r] for r in got], [[h.similarity for h in r] for r in want], atol=tol)


def test_a_sharded_index_answers_what_one_index_answers(tmp_path):
    ids, cats, vecs = catalogue()
    params = {"M": 16, "ef_construction": 200, "ef": 600, "exact_below": 100, "seed": 1, "num_threads": 1}
    single = HnswIndex.build(ids, cats, vecs, **params)
    sharded = ShardedIndex.build(ids, cats, vecs, max_items_per_shard=150, **params)
    assert sharded.plan.shards >= 4 and len(sharded) == len(ids)
    queries = np.random.default_rng(5).normal(size=(20, vecs.shape[1])).astype(np.float32)
    uri = str(tmp_path / "sharded")
    sharded.save(uri, index_id="idx-test", model_id="m")
    loaded = ShardedIndex.load(uri)
    document = json.loads((tmp_path / "sharded" / MANIFEST).read_text())
    assert document["layout"] == "sharded" and document["counts"]["items"] == len(ids)
    assert all(s["bytes"] > 0 for s in document["shards"]["list"])
    for category in (None, "big", "mid", ["big", "tiny"]):
        _same(loaded.search(queries, 10, category), single.exact_search(queries, 10, category))
        _same(loaded.exact_search(queries, 10, category), single.exact_search(queries, 10, category))
    # Two slots each hold some shards; their answers merged are the whole index's.
    halves = [ShardedIndex.load(uri, slot=s, slots=2) for s in (0, 1)]
    assert sorted(halves[0].shards) + sorted(halves[1].shards) != [] and \
        set(halves[0].shards).isdisjoint(halves[1].shards)
    assert sum(len(h) for h in halves) == len(ids)
    for category in (None, "big"):
        parts = [h.search(queries, 10, category) for h in halves]
        merged = [index_shards.merge_hits([p[q] for p in parts], 10) for q in range(len(queries))]
        _same(merged, single.exact_search(queries, 10, category))
    assert loaded.measure_recall(k=10, sample=100) >= 0.99
    assert loaded.measure_recall(k=10, sample=100, category="own") >= 0.99


def test_a_plain_index_reads_as_one_shard_and_budgets_are_enforced(tmp_path):
    ids, cats, vecs = catalogue()
    uri = str(tmp_path / "plain")
    HnswIndex.build(ids, cats, vecs, ef=600, num_threads=1).save(uri, index_id="plain", model_id="m")
    whole = ShardedIndex.load(uri)
    assert whole.plan.shards == 1 and len(whole) == len(ids) and "big" in whole.category_names
    assert len(ShardedIndex.load(uri, slot=1, slots=2)) == 0  # slot 1 holds nothing of a plain index
    assert ShardedIndex.load(uri, slot=1, slots=2).search(vecs[:2], 5) == [[], []]
    with pytest.raises(ShardBudgetError, match="search slot 0 of 1 would hold shard"):
        ShardedIndex.load(uri, memory_budget_bytes=10_000)


def test_the_byte_estimate_bounds_the_files_of_a_shard(tmp_path):
    ids, cats, vecs = catalogue(dim=64)
    per_item = shard_plan.estimate_item_bytes(64, 16)
    sharded = ShardedIndex.build(ids, cats, vecs, max_bytes_per_shard=150 * per_item, exact_below=0, num_threads=1)
    sharded.save(str(tmp_path / "s"), index_id="s", model_id="m")
    for shard in sharded.shard_info:
        assert shard["items"] <= 150
        # Files of a shard with sub-indexes for every category: within the estimate, not far below it.
        assert 0.5 * per_item * shard["items"] <= shard["bytes"] <= per_item * shard["items"] + 64 * 1024


def test_a_search_slot_leaves_the_content_hashes_unread(clustered_data, tmp_path):
    from tests.helpers import HNSW_TEST_PARAMS

    ids, cats, vecs = clustered_data
    uri = str(tmp_path / "idx")
    HnswIndex.build(ids, cats, vecs, content_hashes=[f"h-{i}" for i in ids], **HNSW_TEST_PARAMS).save(uri, index_id="i")
    assert HnswIndex.load(uri).content_hashes.tolist() == [f"h-{i}" for i in ids]  # what an update reads
    (shard,) = ShardedIndex.load(uri).shards.values()
    assert shard.content_hashes is None and len(shard) == len(ids)
    assert shard.search(vecs[:1], 1)[0][0].item_id == ids[0]
