"""build-index: from an embeddings run to a published index, locally and on S3; failures keep LATEST."""

import json

import numpy as np
import pytest

from artifacts import embeddings, publish, storage
from artifacts.configuration import load_config
from artifacts.hnsw_index import HnswIndex
from artifacts.index_manifest import MANIFEST, IndexBuildError
from artifacts.vector_search import l2_normalise
from jobs import build_index
from jobs.build_index import BuildIndexConfig
from tests.helpers import write_run

DIM = 32


def synthetic(n=2000, seed=0):
    rng = np.random.default_rng(seed)
    cats = rng.integers(0, 10, n)
    vectors = l2_normalise(rng.normal(size=(10, DIM))[cats] * 2 + rng.normal(size=(n, DIM)))
    return [f"sku-{i}" for i in range(n)], [f"cat{c}" for c in cats], vectors


@pytest.fixture
def root(tmp_path):
    ids, cats, vectors = synthetic()
    root = str(tmp_path / "store")
    write_run(root, "model-a", "run-1", ids, cats, vectors)
    return root


def cfg(**kw) -> BuildIndexConfig:
    return load_config(BuildIndexConfig, values={"recall_queries": 300, **kw})


def test_build_and_publish_locally(root):
    result = build_index.run(cfg(embeddings=f"{root}/embeddings/model-a", out=root))
    indexes = storage.join(root, "indexes")
    assert result.published and publish.latest_id(indexes) == result.index_id
    assert result.index_id.startswith("hnsw-model-a-") and result.items == 2000 and result.embedding_dim == DIM
    assert result.recall_at_10 >= 0.99 and result.filtered_recall_at_10 >= 0.99
    index = HnswIndex.load(indexes, expected_dim=DIM)
    m = index.manifest
    assert m.source_embeddings == f"{root}/embeddings/model-a/run-1" and m.embeddings_run_id == "run-1"
    assert m.model_id == "model-a" and m.counts["items"] == 2000 and sum(m.counts["categories"].values()) == 2000
    assert m.recall_at_10 == pytest.approx(result.recall_at_10, abs=1e-5) and m.recall["queries"] == 300
    assert m.params["M"] == 16 and m.params["ef_construction"] == 200 and m.params["ef"] == 64
    assert m.config["recall_queries"] == 300 and m.build_seconds > 0 and m.created_at.endswith("Z")
    ids, cats, vectors = synthetic()
    assert index.search(vectors[:1], k=1)[0][0].item_id == "sku-0"


def test_default_embeddings_are_the_latest_models(root):
    storage.write_text(f"{root}/models/model-a/model_card.json", "{}")
    publish.publish(f"{root}/models", "model-a", manifest_name="model_card.json")
    result = build_index.run(cfg(storage=root))
    assert result.embeddings_run == f"{root}/embeddings/model-a/run-1"


def test_build_on_s3(s3_bucket, tmp_path):
    ids, cats, vectors = synthetic(n=600)
    root = storage.join(s3_bucket, "vitrine")
    run_uri = write_run(root, "model-a", "run-1", ids, cats, vectors)
    result = build_index.run(cfg(embeddings=run_uri, out=root, M=8, ef=32))
    assert publish.latest_id(f"{root}/indexes") == result.index_id
    index = HnswIndex.load(f"{root}/indexes")
    assert index.manifest.params["M"] == 8 and len(index) == 600
    assert index.search(vectors[5:6], k=1, category=cats[5])[0][0].item_id == "sku-5"


def test_failures_leave_latest_untouched(root, tmp_path, monkeypatch):
    first = build_index.run(cfg(embeddings=f"{root}/embeddings/model-a", out=root))
    indexes = storage.join(root, "indexes")
    # An empty run, published as the model's LATEST.
    write_run(root, "model-a", "run-2", [], [], np.zeros((0, DIM), np.float32))
    with pytest.raises(IndexBuildError, match="holds no items"):
        build_index.run(cfg(embeddings=f"{root}/embeddings/model-a", out=root))
    assert publish.latest_id(indexes) == first.index_id
    # A crash while writing the index files: the new directory has no manifest, LATEST stays.
    monkeypatch.setattr(np, "save", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        build_index.run(cfg(embeddings=f"{root}/embeddings/model-a/run-1", out=root))
    monkeypatch.undo()
    assert publish.latest_id(indexes) == first.index_id
    partial = [d for d in storage.list_dir(indexes) if d not in (first.index_id, "LATEST")]
    assert len(partial) == 1 and not storage.exists(storage.join(indexes, partial[0], MANIFEST))
    # A recall below the guard.
    with pytest.raises(IndexBuildError, match="below min_recall"):
        build_index.run(cfg(embeddings=f"{root}/embeddings/model-a/run-1", out=root, min_recall=1.01))
    assert publish.latest_id(indexes) == first.index_id


def test_unnormalised_embeddings_are_refused(tmp_path):
    ids, cats, vectors = synthetic(n=50)
    root = str(tmp_path)
    write_run(root, "model-b", "run-1", ids, cats, vectors * 3)
    with pytest.raises(IndexBuildError, match="not L2-normalised"):
        build_index.run(cfg(embeddings=f"{root}/embeddings/model-b", out=root))
    assert not storage.exists(f"{root}/indexes/LATEST")


def test_cli_yaml_set_and_smoke(root, tmp_path, capsys):
    (tmp_path / "index.yaml").write_text("M: 12\nef: 40\n")
    rc = build_index.main(["--embeddings", f"{root}/embeddings/model-a", "--storage", root, "--config",
                           str(tmp_path / "index.yaml"), "--set", "ef=48", "--recall-queries", "100", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["published"] and out["items"] == 2000
    m = HnswIndex.load(out["index_uri"]).manifest
    assert (m.params["M"], m.params["ef"], m.config["recall_queries"]) == (12, 48, 100)
    rc = build_index.main(["--embeddings", f"{root}/embeddings/model-a", "--storage", root, "--smoke-test"])
    assert rc == 0 and "LATEST unchanged" in capsys.readouterr().out
    assert publish.latest_id(f"{root}/indexes") == out["index_id"]


def test_row_count_mismatch_with_the_manifest_is_refused(tmp_path):
    # The manifest counts 2000 items but a part file lost rows: refuse, publish nothing.
    ids, cats, vectors = synthetic()
    root = str(tmp_path / "store")
    run_uri = write_run(root, "model-a", "run-1", ids[:1500], cats[:1500], vectors[:1500])
    m = json.loads(storage.read_text(storage.join(run_uri, embeddings.MANIFEST)))
    m["counts"] = {"total": 2000, "failed": 0}
    storage.write_text(storage.join(run_uri, embeddings.MANIFEST), json.dumps(m))
    with pytest.raises(IndexBuildError, match="1500 rows but its manifest counts 2000"):
        build_index.run(cfg(embeddings=run_uri, out=root))
    assert not storage.exists(f"{root}/indexes/LATEST")


def next_night(ids, cats, vectors, hashes, *, seed=1, change=40, remove=30, add=50):
    """The catalogue a night later: ``change`` items re-embedded (new hash), ``remove`` gone,
    ``add`` new ones (in existing categories and a new small one)."""
    rng = np.random.default_rng(seed)
    n = len(ids)
    vecs, hashes = vectors.copy(), list(hashes)
    changed = rng.choice(n, change, replace=False)
    vecs[changed] = l2_normalise(vectors[changed] + rng.normal(size=(change, DIM)))
    for i in changed:
        hashes[i] = f"{hashes[i]}+{seed}"
    keep = np.ones(n, bool)
    keep[rng.choice(np.setdiff1d(np.arange(n), changed), remove, replace=False)] = False
    new_ids = [f"new-{seed}-{i}" for i in range(add)]
    new_cats = [f"cat{i % 10}" for i in range(add - min(add, 5))] + ["brand-new"] * min(add, 5)
    new_vecs = l2_normalise(vectors[rng.choice(n, add)] + rng.normal(size=(add, DIM)))
    return ([x for x, k in zip(ids, keep) if k] + new_ids, [x for x, k in zip(cats, keep) if k] + new_cats,
            np.vstack([vecs[keep], new_vecs]), [x for x, k in zip(hashes, keep) if k] + [f"h-{x}" for x in new_ids])


def test_incremental_build_matches_a_full_rebuild(tmp_path):
    ids, cats, vectors = synthetic()
    hashes = [f"h-{i}" for i in ids]
    root, other = str(tmp_path / "store"), str(tmp_path / "other")
    write_run(root, "model-a", "run-1", ids, cats, vectors, hashes=hashes)
    first = build_index.run(cfg(embeddings=f"{root}/embeddings/model-a", out=root))
    assert first.mode == "full" and "no previous index" in first.reason
    ids2, cats2, vecs2, hashes2 = next_night(ids, cats, vectors, hashes)  # 40 + 30 + 50 of 2,000
    write_run(root, "model-a", "run-2", ids2, cats2, vecs2, hashes=hashes2)
    inc = build_index.run(cfg(embeddings=f"{root}/embeddings/model-a", out=root))
    write_run(other, "model-a", "run-2", ids2, cats2, vecs2, hashes=hashes2)
    full = build_index.run(cfg(embeddings=f"{other}/embeddings/model-a", out=other, incremental=False))
    assert (inc.mode, inc.added, inc.deleted) == ("incremental", 90, 70) and first.index_id in inc.reason
    assert full.mode == "full" and "--full" in full.reason
    assert publish.latest_id(f"{root}/indexes") == inc.index_id and inc.items == full.items == len(ids2)
    assert abs(inc.recall_at_10 - full.recall_at_10) <= 0.01
    assert abs(inc.filtered_recall_at_10 - full.filtered_recall_at_10) <= 0.01
    a, b = HnswIndex.load(f"{root}/indexes"), HnswIndex.load(f"{other}/indexes")
    m = a.manifest
    assert (m.update["mode"], m.update["added"], m.update["deleted"], m.update["previous_index"]) == (
        "incremental", 90, 70, first.index_id)
    assert (m.counts["items"], m.counts["deleted"], m.counts["positions"]) == (len(ids2), 70, 2090)
    assert m.format_version == 2 and m.embeddings_run_id == "run-2"
    live_a = dict(zip(a.item_ids[a.live_positions], a.categories_of(a.live_positions)))
    assert live_a == dict(zip(b.item_ids, b.categories_of(np.arange(len(b))))) == dict(zip(ids2, cats2))
    gone = set(ids) - set(ids2)
    queries = np.vstack([vectors, vecs2[::5]])  # the removed and the changed items' old vectors too
    for category in [None, "cat3", "brand-new", ["cat1", "brand-new"]]:
        for hits in (a.search(queries, 10, category), a.exact_search(queries, 10, category)):
            assert all(len(row) == 10 or category in ("brand-new",) for row in hits)
            returned = {h.item_id for row in hits for h in row}
            assert not returned & gone
        pos, _ = a.search_positions(queries, 10, category)
        assert not a.deleted[pos[pos >= 0]].any()
    # Past the compaction threshold the next night rebuilds.
    ids3, cats3, vecs3, hashes3 = next_night(ids2, cats2, vecs2, hashes2, seed=2, change=300, remove=200, add=0)
    write_run(root, "model-a", "run-3", ids3, cats3, vecs3, hashes=hashes3)
    third = build_index.run(cfg(embeddings=f"{root}/embeddings/model-a", out=root))
    assert third.mode == "full" and "compacting" in third.reason and third.deleted == 0
    m3 = HnswIndex.load(f"{root}/indexes").manifest
    assert m3.update["mode"] == "full" and m3.counts["deleted"] == 0 and m3.counts["positions"] == len(ids3)


@pytest.mark.parametrize("case", ["params", "model", "corrupt"])
def test_a_previous_index_that_cannot_be_updated_is_rebuilt(tmp_path, case):
    ids, cats, vectors = synthetic(n=600)
    root = str(tmp_path / "store")
    write_run(root, "model-a", "run-1", ids, cats, vectors, hashes=[f"h-{i}" for i in ids])
    first = build_index.run(cfg(embeddings=f"{root}/embeddings/model-a", out=root, M=8))
    model = "model-b" if case == "model" else "model-a"
    write_run(root, model, "run-2", ids, cats, vectors, hashes=[f"h-{i}" for i in ids])
    if case == "corrupt":
        (tmp_path / "store" / "indexes" / first.index_id / "index.bin").write_bytes(b"not an index")
    result = build_index.run(cfg(embeddings=f"{root}/embeddings/{model}", out=root, M=12 if case == "params" else 8))
    expected = {"params": "other build params (M 8 -> 12)", "model": "of model 'model-a', this run of 'model-b'",
                "corrupt": "failed to load"}[case]
    assert result.mode == "full" and expected in result.reason, result.reason
    assert HnswIndex.load(f"{root}/indexes").manifest.update["reason"] == result.reason
