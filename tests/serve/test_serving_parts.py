"""The serving logic without Ray: which version to serve, the per-replica version cache, the
upload parser and the searcher."""

import asyncio
import json
import shutil
import threading
import time

import pytest

from artifacts import publish, storage
from artifacts.index_manifest import MANIFEST
from artifacts.model_card import CARD_FILE
from serve import versions
from serve.searcher import CatalogueSearcher
from serve.uploads import UploadError, image_from_body
from serve.version_cache import VersionCache
from tests.helpers import multipart


# ---------------------------------------------------------------- versions
def test_resolve_follows_the_index_and_its_model(serving_store):
    v = versions.resolve(serving_store)
    assert v.model_id == "cnn-serve-a" and v.index_id == publish.latest_id(storage.join(serving_store, "indexes"))
    assert v.embedding_dim > 0 and len(v.class_names) == 10 and len(v.categories) == 10
    assert v.index_items == 600 and v.published_at > 0
    pinned = versions.resolve(serving_store, model="cnn-serve-a", index=v.index_id)
    assert pinned.key == v.key and pinned.published_at == 0.0


def test_nothing_published(tmp_path):
    with pytest.raises(versions.NothingPublished, match="nothing to serve"):
        versions.resolve(str(tmp_path))


def test_a_model_without_an_index_still_classifies(serving_store, tmp_path):
    root = tmp_path / "store"
    shutil.copytree(serving_store + "/models", root / "models")
    v = versions.resolve(str(root))
    assert v.model_id == "cnn-serve-a" and v.index_id is None and v.categories == ()


def test_pinned_model_refuses_an_index_of_another(serving_store):
    with pytest.raises(versions.VersionRejected, match="pinned to model 'other-model'"):
        versions.resolve(serving_store, model="other-model")


def test_dimension_mismatch_is_refused(serving_store, tmp_path):
    root = tmp_path / "store"
    shutil.copytree(serving_store, root)
    card_path = root / "models" / "cnn-serve-a" / CARD_FILE
    card = json.loads(card_path.read_text())
    card["embedding_dim"] += 1
    card_path.write_text(json.dumps(card))
    with pytest.raises(versions.VersionRejected, match="dimensional vectors but model cnn-serve-a produces"):
        versions.resolve(str(root))


def test_unreadable_manifest_is_refused(serving_store, tmp_path):
    root = tmp_path / "store"
    shutil.copytree(serving_store, root)
    index_id = publish.latest_id(str(root / "indexes"))
    (root / "indexes" / index_id / MANIFEST).write_text("{not json")
    with pytest.raises(versions.VersionRejected, match="cannot read index manifest"):
        versions.resolve(str(root))


# ---------------------------------------------------------------- version cache
def test_cache_loads_each_version_once_and_keeps_the_last_two():
    calls, lock = [], threading.Lock()

    def load(key):
        with lock:
            calls.append(key)
        time.sleep(0.05)
        return f"loaded-{key}"

    async def scenario():
        cache = VersionCache(load, keep=2)
        got = await asyncio.gather(*(cache.get("a") for _ in range(20)))
        assert got == ["loaded-a"] * 20 and calls == ["a"]
        await cache.get("b")
        await cache.get("c")
        assert cache.loaded() == ["b", "c"]
        await cache.get("a")  # evicted earlier: loaded again
        return calls

    assert asyncio.run(scenario()) == ["a", "b", "c", "a"]


def test_cache_does_not_keep_failures():
    attempts = []

    def load(key):
        attempts.append(key)
        if len(attempts) == 1:
            raise OSError("storage hiccup")
        return key.upper()

    async def scenario():
        cache = VersionCache(load)
        with pytest.raises(OSError, match="hiccup"):
            await cache.get("x")
        return await cache.get("x")

    assert asyncio.run(scenario()) == "X" and attempts == ["x", "x"]


# ---------------------------------------------------------------- uploads
def test_multipart_file_field_and_raw_body():
    body, ctype = multipart("file", "a.png", b"\x89PNG-bytes\r\n--not-a-boundary")
    assert image_from_body(body, ctype) == b"\x89PNG-bytes\r\n--not-a-boundary"
    assert image_from_body(b"raw", "image/png") == b"raw"


@pytest.mark.parametrize("body,ctype,message", [
    (b"", "image/png", "no image"),
    (multipart("photo", "a.png", b"x")[0], multipart("photo", "a.png", b"x")[1], "no multipart field named 'file'"),
    (b"--other\r\n\r\nx\r\n--other--", "multipart/form-data; boundary=vitrine-test-boundary-7f3a", "check the boundary"),
    (multipart("file", "a.png", b"")[0], multipart("file", "a.png", b"")[1], "is empty"),
])
def test_bad_uploads_say_why(body, ctype, message):
    with pytest.raises(UploadError, match=message) as err:
        image_from_body(body, ctype)
    assert err.value.status == 400


# ---------------------------------------------------------------- searcher
def test_searcher_finds_items_and_their_images(serving_store):
    v = versions.resolve(serving_store)
    s = CatalogueSearcher(v.index_uri, threads=1)
    vec = s.index.vectors[7]
    hits = s.search(vec, 5)
    assert hits[0]["item_id"] == str(s.index.item_ids[7]) and hits[0]["similarity"] == pytest.approx(100, abs=0.01)
    assert all("sub_category" not in h for h in hits)  # a flat catalogue keeps the response shape
    within = s.search(vec, 5, category="Bag")
    assert {h["category"] for h in within} == {"Bag"}
    uri = s.image_uri(hits[0]["item_id"])
    assert uri and storage.read_bytes(uri).startswith(b"\x89PNG")
    assert s.image_uri("../../etc/passwd") is None
    samples = s.samples(per_category=2)
    assert len(samples) == 20 and samples == s.samples(per_category=2)
    assert s.info()["items"] == 600
