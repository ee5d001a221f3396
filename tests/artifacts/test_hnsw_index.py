"""HnswIndex: recall against exact search, category filters, save/load locally and on S3."""

import json

import numpy as np
import pytest

from artifacts import publish, storage
from artifacts.hnsw_index import HnswIndex
from artifacts.index_manifest import MANIFEST, IndexBuildError, IndexLoadError, UnknownCategoryError
from artifacts.vector_search import recall_at_k
from tests.helpers import CLUSTER_SIZES, HNSW_TEST_PARAMS, perturbed

N, DIM = sum(CLUSTER_SIZES), 32  # tests.helpers.clustered
PARAMS = HNSW_TEST_PARAMS


@pytest.fixture(scope="module")
def data(clustered_data):
    return clustered_data


@pytest.fixture(scope="module")
def index(clustered_index):
    return clustered_index


def test_recall_at_10_against_exact(index, data):
    assert index.measure_recall(k=10, sample=500) >= 0.99
    queries = perturbed(data[2][:300])
    assert index.measure_recall(queries, k=10) >= 0.99
    assert index.measure_recall(k=10, sample=500, category="own") >= 0.99


def test_every_item_finds_itself_first(index, data):
    ids, cats, vectors = data
    pos, sim = index.search_positions(vectors, 1)
    assert (pos[:, 0] == np.arange(N)).all()
    np.testing.assert_allclose(sim[:, 0], 1.0, atol=1e-5)
    hits = index.search(vectors[:5], k=3)
    for i, row in enumerate(hits):
        assert row[0].item_id == ids[i] and row[0].category == cats[i]
        assert abs(row[0].distance) < 1e-5 and abs(row[0].similarity - 1) < 1e-5
        assert [h.similarity for h in row] == sorted((h.similarity for h in row), reverse=True)
        for h in row:
            assert h.distance == pytest.approx(1 - h.similarity, abs=1e-6)


@pytest.mark.parametrize("category", ["c0", "c5", "c9", ["c2", "c9"], ["c1", "c3", "c8"]])
def test_category_filter_returns_only_that_category_and_matches_exact(index, data, category):
    allowed = {category} if isinstance(category, str) else set(category)
    queries = perturbed(data[2][::10])
    hits = index.search(queries, k=10, category=category)
    exact = index.exact_search(queries, k=10, category=category)
    assert all(len(row) == 10 and {h.category for h in row} <= allowed for row in hits)
    assert all({h.category for h in row} <= allowed for row in exact)
    overlap = np.mean([len({h.item_id for h in a} & {h.item_id for h in e}) / 10 for a, e in zip(hits, exact)])
    assert overlap >= 0.99
    top1 = np.mean([a[0].item_id == e[0].item_id for a, e in zip(hits, exact)])
    assert top1 >= 0.99


def test_fewer_items_than_k_and_unknown_categories(data):
    ids, cats, vectors = data
    small = HnswIndex.build(ids[:30], ["a"] * 25 + ["b"] * 5, vectors[:30], M=8, ef_construction=50, ef=10,
                            exact_below=0)
    assert [len(r) for r in small.search(vectors[:2], k=10, category="b")] == [5, 5]
    assert [len(r) for r in small.search(vectors[:2], k=50)] == [30, 30]
    pos, sim = small.search_positions(vectors[:2], 10, "b")
    assert (pos[:, 5:] == -1).all() and np.isneginf(sim[:, 5:]).all()
    assert small.search(vectors[:1], category=[]) == small.exact_search(vectors[:1], category=[]) == [[]]
    with pytest.raises(UnknownCategoryError, match="unknown category 'shoes'.*a, b"):
        small.search(vectors[:1], category="shoes")
    with pytest.raises(ValueError, match=r"shape \(n, 32\)"):
        small.search(vectors[:1, :16])


def test_uncategorised_items_are_found_unfiltered_only(data):
    ids, cats, vectors = data
    cats = [None if i % 4 == 0 else c for i, c in enumerate(cats[:400])]
    idx = HnswIndex.build(ids[:400], cats, vectors[:400], M=16, ef_construction=100, ef=32)
    assert idx.search(vectors[:1], k=1)[0][0] == (ids[0], None, pytest.approx(0, abs=1e-5), pytest.approx(1, abs=1e-5))
    assert idx.search(vectors[:1], k=1, category=cats[1])[0][0].item_id != ids[0]


def test_build_refuses_bad_input(data):
    ids, cats, vectors = data
    with pytest.raises(IndexBuildError, match="zero items"):
        HnswIndex.build([], [], np.zeros((0, DIM), np.float32))
    with pytest.raises(IndexBuildError, match="not L2-normalised.*item-00000"):
        HnswIndex.build(ids[:10], cats[:10], vectors[:10] * 2)
    with pytest.raises(IndexBuildError, match="duplicate item ids"):
        HnswIndex.build(["a", "a"], ["x", "x"], vectors[:2])
    bad = vectors[:3].copy()
    bad[1, 0] = np.nan
    with pytest.raises(IndexBuildError, match="NaN"):
        HnswIndex.build(ids[:3], cats[:3], bad)
    with pytest.raises(IndexBuildError, match=r"shape \(3, dim\)"):
        HnswIndex.build(ids[:3], cats[:3], vectors[:4])


def test_recall_at_k_hand_example():
    exact_sims = np.array([[0.9, 0.8, 0.7], [0.5, 0.5, 0.4]], np.float32)
    approx = np.array([[0, 1, 5], [7, 8, -1]])
    approx_sims = np.array([[0.9, 0.8, 0.6], [0.5, 0.5, -np.inf]], np.float32)
    # row 0: 2 of 3; row 1: a tie at the top counts, the missing third does not.
    assert recall_at_k(approx, exact_sims, approx_sims) == pytest.approx((2 / 3 + 2 / 3) / 2)


def test_thread_count_is_configurable(index, data):
    queries = perturbed(data[2][:50])
    before = index.search_positions(queries, 10)
    index.set_num_threads(1)
    try:
        after = index.search_positions(queries, 10)
    finally:
        index.set_num_threads(PARAMS["num_threads"])
    np.testing.assert_array_equal(before[0], after[0])


def _roundtrip(index, data, uri):
    manifest = index.save(uri, index_id="idx-1", model_id="m-1", source_embeddings="emb/run-1",
                          embeddings_run_id="run-1", recall={"recall_at_10": 0.995}, config={"M": 16})
    assert json.loads(storage.read_text(storage.join(uri, MANIFEST)))["counts"]["items"] == N
    loaded = HnswIndex.load(uri, expected_dim=DIM, num_threads=1)
    m = loaded.manifest
    assert (m.index_id, m.model_id, m.embeddings_run_id, m.embedding_dim, m.recall_at_10) == (
        "idx-1", "m-1", "run-1", DIM, 0.995)
    assert m.params["M"] == 16 and m.params["ef"] == 64 and m.build_seconds > 0 and m.created_at
    assert m.counts["categories"] == {f"c{i}": s for i, s in enumerate(CLUSTER_SIZES)} == loaded.category_counts()
    assert set(m.files["categories"]) == {f"c{i}" for i in range(9)}  # c9 is below exact_below
    queries = perturbed(data[2][:100])
    for category in (None, "c3", "c9"):
        assert loaded.search(queries, 10, category) == index.search(queries, 10, category)
    assert manifest.to_json() == m.to_json()
    return loaded


def test_save_load_roundtrip_local(index, data, tmp_path):
    _roundtrip(index, data, str(tmp_path / "indexes" / "idx-1"))
    publish.publish(str(tmp_path / "indexes"), "idx-1", manifest_name=MANIFEST)
    assert len(HnswIndex.load(str(tmp_path / "indexes"))) == N  # through LATEST


def test_save_load_roundtrip_s3(index, data, s3_bucket):
    uri = storage.join(s3_bucket, "vitrine", "indexes", "idx-1")
    _roundtrip(index, data, uri)
    assert "index.bin" in storage.list_dir(uri) and "categories" in storage.list_dir(uri)


def test_load_checks_files_against_the_manifest(index, tmp_path):
    uri = str(tmp_path / "idx")
    index.save(uri, index_id="idx")
    with pytest.raises(IndexLoadError, match="holds 32-dimensional vectors but the model produces 64"):
        HnswIndex.load(uri, expected_dim=64)
    manifest = json.loads((tmp_path / "idx" / MANIFEST).read_text())
    manifest["counts"]["items"] = N + 1
    (tmp_path / "idx" / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(IndexLoadError, match=f"manifest says {N + 1} items"):
        HnswIndex.load(uri)
    manifest["counts"]["items"] = N
    manifest["embedding_dim"] = 16
    (tmp_path / "idx" / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(IndexLoadError, match="dimension 16"):
        HnswIndex.load(uri)
    manifest["embedding_dim"] = DIM
    (tmp_path / "idx" / MANIFEST).write_text(json.dumps(manifest))
    (tmp_path / "idx" / "categories" / "3.bin").unlink()
    with pytest.raises(IndexLoadError, match="incomplete: missing categories/3.bin"):
        HnswIndex.load(uri)
    with pytest.raises(IndexLoadError, match="no index at"):
        HnswIndex.load(str(tmp_path / "nothing-here"))


def test_manifest_is_written_last(index, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "save", fail)
    with pytest.raises(OSError, match="disk full"):
        index.save(str(tmp_path / "idx"), index_id="idx")
    assert (tmp_path / "idx" / "index.bin").exists() and not (tmp_path / "idx" / MANIFEST).exists()
    with pytest.raises(IndexLoadError):
        HnswIndex.load(str(tmp_path / "idx"))


def changed_catalogue(data, seed=3):
    """The clustered catalogue a night later: 5% removed, 5% re-embedded (new hash), 1% moved to
    another category (same hash), 60 new items (50 in c9, which grows past exact_below, and 10
    in a new category), and c8 shrunk below exact_below."""
    ids, cats, vectors = data
    rng = np.random.default_rng(seed)
    hashes = np.array([f"sha-{i}" for i in ids], dtype=object)
    cats2, vecs2, hashes2 = np.array(cats, dtype=object), vectors.copy(), hashes.copy()
    changed, moved = rng.choice(N, 100, replace=False), rng.choice(N, 20, replace=False)
    vecs2[changed] = perturbed(vectors[changed], seed=4, scale=1.0)
    hashes2[changed] = [h + "-v2" for h in hashes2[changed]]
    cats2[moved] = "c0"
    c8 = np.flatnonzero(cats2 == "c8")
    keep = np.ones(N, bool)
    keep[rng.choice(N, 100, replace=False)] = False
    keep[c8[:60]] = False  # 110 -> at most 50 left, below exact_below = 64
    new = perturbed(vectors[rng.choice(np.flatnonzero(np.array(cats) == "c9"), 50)], seed=5, scale=1.0)
    new = np.vstack([new, perturbed(vectors[:10], seed=6, scale=2.0)])
    ids2 = np.concatenate([np.array(ids, dtype=object)[keep], [f"new-{i}" for i in range(60)]])
    return (ids2.tolist(), cats2[keep].tolist() + ["c9"] * 50 + ["zz"] * 10, np.vstack([vecs2[keep], new]),
            hashes2[keep].tolist() + [f"sha-new-{i}" for i in range(60)], hashes.tolist())


def assert_no_tombstone_returned(index, queries):
    assert not index.deleted[np.concatenate(list(index.category_members.values()))].any()
    for category in [None, *index.category_names, index.category_names[:3]]:
        for pos, _ in (index.search_positions(queries, 10, category), index.exact_search_positions(queries, 10, category)):
            assert not index.deleted[pos[pos >= 0]].any(), category
            assert ((pos >= 0).sum(axis=1) == min(10, len(index) if category is None else sum(
                index.category_counts()[c] for c in ([category] if isinstance(category, str) else category)))).all()


def test_incremental_update_matches_a_rebuild_and_never_returns_tombstones(data, tmp_path):
    from artifacts.index_update import plan_update, update_index

    ids, cats, vectors = data
    ids2, cats2, vecs2, hashes2, hashes = changed_catalogue(data)
    previous = HnswIndex.build(ids, cats, vectors, content_hashes=hashes, **PARAMS)
    old_vectors = previous.vectors.copy()
    plan = plan_update(previous, ids2, cats2, hashes2)
    assert (plan.changed, plan.new) == (len(plan.add_rows) - 60, 60) and plan.unchanged + plan.changed == len(ids2) - 60
    updated, stats = update_index(previous, ids2, cats2, hashes2, vecs2, num_threads=2)
    full = HnswIndex.build(ids2, cats2, vecs2, content_hashes=hashes2, **PARAMS)
    live = updated.live_positions
    assert dict(zip(updated.item_ids[live], updated.categories_of(live))) == dict(zip(ids2, cats2))
    assert updated.category_counts() == full.category_counts() and len(updated) == len(full) == len(ids2)
    assert stats.deleted == stats.changed + stats.removed and stats.positions == N + stats.added
    # Sub-indexes follow membership: c8 fell to exact search, c9 grew a graph, zz is small.
    assert sorted(updated.category_names[j] for j in updated.sub_graphs) == sorted(full.category_names[j] for j in full.sub_graphs)
    queries = np.vstack([old_vectors[plan.delete_positions], perturbed(vecs2[::7])])
    assert_no_tombstone_returned(updated, queries)
    for kind in (None, "own"):
        assert abs(updated.measure_recall(sample=500, category=kind) - full.measure_recall(sample=500, category=kind)) <= 0.01
    # An item that was re-embedded is found at its new vector, and only once.
    changed = [i for i, h in zip(ids2, hashes2) if h.endswith("-v2")][0]
    hit = updated.search(vecs2[ids2.index(changed)][None], k=10)[0]
    assert hit[0].item_id == changed and [h.item_id for h in hit].count(changed) == 1
    # Tombstones survive a save and load, and the loaded index answers the same.
    updated.save(str(tmp_path / "idx"), index_id="idx", update={"mode": "incremental"})
    loaded = HnswIndex.load(str(tmp_path / "idx"))
    assert (loaded.manifest.counts["deleted"], loaded.manifest.counts["positions"]) == (stats.deleted, stats.positions)
    assert loaded.manifest.update == {"mode": "incremental"} and loaded.content_hashes.tolist() == updated.content_hashes.tolist()
    assert_no_tombstone_returned(loaded, queries)
    for category in (None, "c0", "c8", "zz"):
        assert loaded.search(queries[:100], 10, category) == updated.search(queries[:100], 10, category)
    # A second update on the loaded index removes a category entirely.
    third, _ = update_index(loaded, *[[x for x, c in zip(col, cats2) if c != "zz"] for col in (ids2, cats2, hashes2)],
                            vecs2[np.array(cats2) != "zz"])
    assert "zz" not in third.category_names and len(third) == len(ids2) - 10
    with pytest.raises(UnknownCategoryError):
        third.search(queries[:1], category="zz")
    assert_no_tombstone_returned(third, queries)


def test_vectors_are_memory_mapped_and_format_1_still_loads(index, data, tmp_path, s3_bucket):
    import os

    import pyarrow.parquet as pq

    uri = str(tmp_path / "idx")
    index.save(uri, index_id="idx")
    loaded = HnswIndex.load(uri)
    assert isinstance(loaded.vectors, np.memmap) and not loaded.vectors.flags.writeable
    s3_uri = storage.join(s3_bucket, "vitrine", "indexes", "mm")
    index.save(s3_uri, index_id="mm")
    remote = HnswIndex.load(s3_uri)
    # The temporary download is gone; the mapping still reads the unlinked file.
    assert isinstance(remote.vectors, np.memmap) and not os.path.exists(remote.vectors.filename)
    queries = perturbed(data[2][:50])
    for category in (None, "c3", "c9"):
        assert remote.exact_search(queries, 10, category) == index.exact_search(queries, 10, category)
        assert remote.search(queries, 10, category) == index.search(queries, 10, category)
    # Format 1: no content hashes, no tombstones, no positions count.
    items = pq.read_table(tmp_path / "idx" / "items.parquet").select(["item_id", "category"])
    pq.write_table(items, tmp_path / "idx" / "items.parquet")
    manifest = json.loads((tmp_path / "idx" / MANIFEST).read_text())
    manifest["format_version"] = 1
    del manifest["counts"]["positions"], manifest["counts"]["deleted"], manifest["update"]
    (tmp_path / "idx" / MANIFEST).write_text(json.dumps(manifest))
    old = HnswIndex.load(uri)
    assert old.content_hashes is None and not old.deleted.any() and len(old) == N
    assert old.search(queries, 10, "c3") == index.search(queries, 10, "c3")
