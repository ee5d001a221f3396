"""Sharded search over real Ray Serve and HTTP: an index split into 2 shards, served by 2 Search
deployments, answers /v1/search as one index over the same items does, and replacing the one
index with the sharded one under load fails no request."""

import shutil
from urllib.parse import quote

import numpy as np
import pytest

from artifacts import publish, storage
from artifacts.hnsw_index import HnswIndex
from artifacts.index_manifest import MANIFEST
from artifacts.index_shards import ShardBudgetError, ShardedIndex
from artifacts.shard_plan import slot_of
from tests.helpers import http
from tests.helpers import Load, wait_until

pytestmark = pytest.mark.slow  # ~55 s on 2 shared cores (one deploy, a swap under load)

K = 20
# Deeper than one shard (300 items): the merge must interleave both shards' answers.
K_DEEP = 400
# hnswlib's ef at query time, above the 600 items of the store: both indexes search exhaustively,
# so the comparison is of the sharding and the merge, not of two graph walks' luck.
EF = 1000


def _queries(root: str) -> list[bytes]:
    catalogue = storage.join(root, "catalogue")
    out = []
    for folder in ("ankle-boot", "coat", "bag"):
        png = next(p for p in sorted(storage.list_dir(storage.join(catalogue, folder))) if p.endswith(".png"))
        out.append(storage.read_bytes(storage.join(catalogue, folder, png)))
    return out


def _answers(url: str, queries: list[bytes], categories: list[str], similar_to: list[str]) -> dict:
    out = {}
    for item_id in similar_to:  # "more like this": the item's stored vector, from the slot holding it
        for category in ("auto", "all"):
            r = http(url + f"/v1/items/{item_id}/similar?k={K}&category={category}")
            assert r.status == 200, r.body
            out["similar", item_id, category] = r.json()
    for q, image in enumerate(queries):
        for category, k in [(c, K) for c in categories] + ([("all", K_DEEP)] if q == 0 else []):
            r = http(url + f"/v1/search?k={k}&category={quote(category)}", image)
            assert r.status == 200, r.body
            out[q, category, k] = r.json()
    return out


def test_a_two_shard_index_answers_what_one_index_answers_and_swaps_in_under_load(deploy_app, serving_store,
                                                                                  tmp_path):
    # One scenario (over 60 lines on purpose): the swap under load starts from the app that served
    # the plain index the step before, and a deployment of Serve costs a minute on 2 cores.
    root = str(tmp_path / "store")
    shutil.copytree(serving_store, root)
    indexes = storage.join(root, "indexes")
    plain_id = publish.latest_id(indexes)
    plain = HnswIndex.load(publish.artifact_uri(indexes, plain_id))
    m = plain.manifest
    n = len(plain.item_ids)
    # The same items, vectors and parameters, split in two: 10 categories of 60 into shards of <= 300.
    params = {k: m.params[k] for k in ("M", "ef_construction", "ef", "exact_below", "seed")}
    sharded = ShardedIndex.build(plain.item_ids, plain.categories_of(np.arange(n)), plain.vectors,
                                 max_items_per_shard=n // 2, num_threads=1, **params)
    assert sharded.plan.shards == 2 and sorted(len(s) for s in sharded.shards.values()) == [n // 2, n // 2]
    sharded_id = publish.new_id(f"hnsw-{m.model_id}-2shards")
    sharded.save(publish.artifact_uri(indexes, sharded_id), index_id=sharded_id, model_id=m.model_id,
                 source_embeddings=m.source_embeddings, embeddings_run_id=m.embeddings_run_id,
                 catalogue_roots=m.catalogue_roots)

    shard_of = dict(zip(plain.item_ids, sharded.plan.assign(plain.item_ids, plain.categories_of(np.arange(n)))))
    similar_to = [next(str(i) for i in plain.item_ids if shard_of[i] == s) for s in (0, 1)]

    # Two search slots from the start: the plain index lives in slot 0, the sharded one in both.
    url = deploy_app(root, search_shards=2, search_ef=EF, max_k=K_DEEP)
    from serve import deploy

    assert {"Search", "Search-1"} <= set(deploy.replica_counts())
    info = http(url + "/v1/info").json()
    assert info["index_id"] == plain_id
    categories = ["all", "auto", info["categories"][3]]
    queries = _queries(root)
    one = _answers(url, queries, categories, similar_to)

    with Load(url, queries[0], threads=2) as load:
        wait_until(lambda: len(load.answers) >= 5, 60, "first answers")
        publish.publish(indexes, sharded_id, manifest_name=MANIFEST)
        wait_until(lambda: any(i == sharded_id for _, _, i in load.answers), 90, "the sharded index in answers")
        count = len(load.answers)
        wait_until(lambda: len(load.answers) >= count + 5, 60, "answers after the swap")
    statuses = [s for s, _, _ in load.answers]
    assert statuses.count(200) == len(statuses), f"failed requests during the swap: {sorted(set(statuses))}"
    assert [i for _, i in load.served()] == [plain_id, sharded_id]

    info = http(url + "/v1/info").json()
    assert info["index_id"] == sharded_id and info["items"] == n and info["refused"] == []
    two = _answers(url, queries, categories, similar_to)
    for key, want in one.items():
        got = two[key]
        assert got["index_id"] == sharded_id and got["category"] == want["category"]
        assert [h["item_id"] for h in got["results"]] == [h["item_id"] for h in want["results"]], key
        # The catalogue manifest's extra columns (the export's label), from the slot holding each item.
        assert [h.get("metadata") for h in got["results"]] == [h.get("metadata") for h in want["results"]], key
        assert all(isinstance(h["metadata"]["label"], int) for h in got["results"]), key
        assert np.allclose([h["distance"] for h in got["results"]], [h["distance"] for h in want["results"]],
                           atol=1e-4), key
    # The deep category=all answer interleaves both shards (in a different order than shard by shard).
    deep = [int(shard_of[h["item_id"]]) for h in two[0, "all", K_DEEP]["results"]]
    assert len(deep) == K_DEEP and set(deep) == {0, 1} and deep != sorted(deep)

    # Samples and item images come from the slot that holds the item.
    samples = http(url + "/v1/samples?per_category=1").json()["samples"]
    assert sorted(s["category"] for s in samples) == sorted(info["categories"])
    far = next(s for s in samples if slot_of(int(shard_of[s["item_id"]]), 2) == 1)
    image = http(url + far["image_url"])
    assert image.status == 200 and image.body[:4] == b"\x89PNG"


def test_search_slots_get_the_options_of_search_and_over_budget_shards_are_refused(tmp_path):
    from serve import deploy, versions

    config = deploy.load_config(args={"search_shards": 3, "storage": str(tmp_path)},
                                deployments={"Search": {"ray_actor_options": {"num_cpus": 0.1}}}, forward_env=False)
    search = {d["name"]: d for d in config["applications"][0]["deployments"] if d["name"].startswith("Search")}
    assert sorted(search) == ["Search", "Search-1", "Search-2"]
    assert all(d["ray_actor_options"]["num_cpus"] == 0.1 and d["autoscaling_config"] == search["Search"]
               ["autoscaling_config"] for d in search.values())
    with pytest.raises(deploy.DeployError, match="no deployment 'Search-1'"):
        deploy.load_config(args={"storage": str(tmp_path)}, deployments={"Search-1": {}}, forward_env=False)
    # A slot whose shards are over its budget refuses the version for good: the ingress keeps the old one.
    assert versions.is_permanent(ShardBudgetError("over budget"))


def test_build_index_writes_a_sharded_index_when_asked(serving_store, tmp_path):
    from jobs.build_index import BuildIndexConfig
    from jobs.build_index import run as build_index

    indexes = storage.join(serving_store, "indexes")
    plain = HnswIndex.load(publish.artifact_uri(indexes, publish.latest_id(indexes)))
    root = str(tmp_path / "out")
    result = build_index(BuildIndexConfig(embeddings=plain.manifest.source_embeddings, out=root, storage=root,
                                          shard_max_items=300, recall_queries=50, publish=False))
    loaded = ShardedIndex.load(result.index_uri)
    assert loaded.plan.shards == 2 and len(loaded) == len(plain) == result.items
    assert loaded.manifest.recall_at_10 == pytest.approx(result.recall_at_10, abs=1e-4)
    q = plain.vectors[:5]
    assert [[h.item_id for h in r] for r in loaded.exact_search(q, 10)] == \
        [[h.item_id for h in r] for r in plain.exact_search(q, 10)]
