"""Hot swap under load: a newly published index (and the model it was built with) is taken into
service without a failed request; an index that must not be served is refused, the old one stays."""

import shutil
import time
from pathlib import Path

import pytest

from artifacts import publish, storage
from artifacts.index_manifest import MANIFEST, IndexManifest
from artifacts.model_card import MODEL_FILE
from jobs.build_index import BuildIndexConfig
from jobs.build_index import run as build_index
from jobs.embed_catalogue import EmbedConfig
from jobs.embed_catalogue import run as embed
from tests.helpers import save_model
from tests.helpers import http, publish_version
from tests.helpers import Load, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def store(serving_store, tmp_path_factory) -> str:
    """A copy of the serving store, since these tests publish into it."""
    root = str(tmp_path_factory.mktemp("hot-swap") / "store")
    shutil.copytree(serving_store, root)
    return root


@pytest.fixture(scope="module")
def query(store) -> bytes:
    catalogue = storage.join(store, "catalogue")
    png = next(p for p in sorted(storage.list_dir(storage.join(catalogue, "ankle-boot"))) if p.endswith(".png"))
    return storage.read_bytes(storage.join(catalogue, "ankle-boot", png))


def test_new_index_and_model_swap_in_under_load(deploy_app, store, query):
    url = deploy_app(store)
    before = http(url + "/v1/info").json()
    with Load(url, query) as load:
        wait_until(lambda: len(load.answers) >= 10, 60, "first answers")
        new_index = publish_version(store, "cnn-serve-b", seed=1)  # embeds with a new model, publishes
        wait_until(lambda: any(i == new_index for _, _, i in load.answers), 90, "the new index in answers")
        n = len(load.answers)
        wait_until(lambda: len(load.answers) >= n + 10, 60, "answers after the swap")
    statuses = [s for s, _, _ in load.answers]
    assert statuses.count(200) == len(statuses), f"failed requests during the swap: {sorted(set(statuses))}"
    assert load.served()[0] == (before["model_id"], before["index_id"])
    assert load.served()[-1] == ("cnn-serve-b", new_index)
    # never a model from one version with an index of another
    assert all(index.startswith(f"hnsw-{model}-") for model, index in load.served())
    info = http(url + "/v1/info").json()
    assert (info["model_id"], info["index_id"]) == ("cnn-serve-b", new_index) and info["refused"] == []


def _publish_corrupt_copy(root: str, index_id: str) -> str:
    """A new index id whose manifest is fine but whose HNSW file is cut short."""
    indexes = storage.join(root, "indexes")
    bad_id = index_id + "-corrupt"
    src, dst = publish.artifact_uri(indexes, index_id), publish.artifact_uri(indexes, bad_id)
    shutil.copytree(src, dst)
    manifest = IndexManifest.from_json(storage.read_text(storage.join(dst, MANIFEST)))
    manifest.index_id = bad_id
    storage.write_text(storage.join(dst, MANIFEST), manifest.to_json())
    index_file = storage.join(dst, manifest.files["index"])
    data = storage.read_bytes(index_file)
    storage.write_bytes(index_file, data[: len(data) // 3])
    publish.publish(indexes, bad_id, manifest_name=MANIFEST)
    return bad_id


def test_unservable_indexes_are_refused_and_the_old_one_keeps_serving(deploy_app, store, query):
    served = http(deploy_app(store) + "/v1/info").json()
    url = deploy_app(store, model=served["model_id"])  # pin the model the index was built with
    assert http(url + "/v1/info").json()["index_id"] == served["index_id"]
    with Load(url, query, threads=2) as load:
        other = publish_version(store, "cnn-serve-c", seed=2)  # built with a model this app is not pinned to
        wait_until(lambda: any("pinned" in r for r in http(url + "/v1/info").json()["refused"]), 30,
                   "the refusal of the other model's index")
        corrupt = _publish_corrupt_copy(store, served["index_id"])
        wait_until(lambda: any(corrupt in r for r in http(url + "/v1/info").json()["refused"]), 60,
                   "the refusal of the corrupt index")
        n = len(load.answers)
        wait_until(lambda: len(load.answers) >= n + 5, 60, "answers after the refusals")
    info = http(url + "/v1/info").json()
    assert info["index_id"] == served["index_id"] and info["model_id"] == served["model_id"]
    assert any(other in r and "cnn-serve-c" in r for r in info["refused"]), info["refused"]
    # /v1/info is public: reasons name versions, never where storage is.
    assert not any(str(store) in r or "/indexes/" in r for r in info["refused"]), info["refused"]
    assert all(s == 200 for s, _, _ in load.answers)
    assert load.served() == [(served["model_id"], served["index_id"])]


def _publish_with_model_file_away(root: str, model_id: str, *, seed: int) -> tuple[str, Path, Path]:
    """Like ``publish_version``, but the model's weights are moved away before the index is
    published, as if storage failed to return them: ``(index_id, weights path, where they are)``."""
    models = storage.join(root, "models")
    save_model(models, model_id, seed=seed)
    run = embed(EmbedConfig(catalogue=storage.join(root, "catalogue"), model=storage.join(models, model_id),
                            out=root, local_max_items=10_000, full=True))
    weights = Path(publish.artifact_uri(models, model_id)) / MODEL_FILE
    away = weights.with_name(MODEL_FILE + ".away")
    weights.rename(away)
    result = build_index(BuildIndexConfig(embeddings=run.run_uri, out=root, storage=root, recall_queries=100))
    assert result.published
    return result.index_id, weights, away


def test_a_version_that_fails_to_warm_for_a_passing_reason_is_retried_then_served(
        deploy_app, serving_store, tmp_path, query):
    root = str(tmp_path / "store")
    shutil.copytree(serving_store, root)
    url = deploy_app(root)
    before = http(url + "/v1/info").json()
    new_index, weights, away = _publish_with_model_file_away(root, "cnn-serve-r", seed=3)

    def retrying() -> list[dict]:
        return http(url + "/v1/info").json().get("retrying") or []

    wait_until(lambda: any(r["attempts"] >= 2 for r in retrying()), 30, "a second try of the new version")
    info = http(url + "/v1/info").json()
    [entry] = info["retrying"]
    assert (entry["model_id"], entry["index_id"]) == ("cnn-serve-r", new_index)
    assert 0 <= entry["next_try_in_s"] <= 60 and entry["last_error"]
    assert root not in entry["last_error"]  # a short reason, no storage locations
    assert info["refused"] == [] and (info["model_id"], info["index_id"]) == (before["model_id"], before["index_id"])
    r = http(url + "/v1/search?k=3&category=all", query)  # the old version keeps serving meanwhile
    assert r.status == 200 and r.json()["index_id"] == before["index_id"]

    away.rename(weights)  # storage answers again: the next try after the backoff takes it into service
    wait_until(lambda: http(url + "/v1/info").json()["index_id"] == new_index, 90, "the new version served")
    info = http(url + "/v1/info").json()
    assert (info["model_id"], info["retrying"], info["refused"]) == ("cnn-serve-r", [], [])


def test_a_warm_up_past_its_timeout_is_retried_not_refused(deploy_app, serving_store, tmp_path):
    root = str(tmp_path / "store")
    shutil.copytree(serving_store, root)
    # Loading a Keras model takes far longer than this, answering from a loaded one does not: the
    # first tries time out, and once the replica's load (which a timeout does not stop) is done one
    # succeeds.
    url = deploy_app(root, warm_timeout_s=0.05)
    new_index = publish_version(root, "cnn-serve-t", seed=4)
    seen = []

    def served() -> bool:
        info = http(url + "/v1/info").json()
        seen.extend(r["last_error"] for r in info["retrying"])
        assert info["refused"] == [], info["refused"]
        return info["index_id"] == new_index

    deadline = time.monotonic() + 90
    while not served():
        assert time.monotonic() < deadline, f"the new version was never served; retrying said {set(seen)}"
        time.sleep(0.2)
    assert any("warm_timeout_s=0.05" in reason for reason in seen), set(seen)
