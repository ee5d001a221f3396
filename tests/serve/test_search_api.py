"""The search API over real HTTP (issue 14 item 1): "more like this" from a stored vector, batch
search, score_threshold, catalogue metadata on every hit, CORS from config, typed routes that
/openapi.json documents, and one error shape for every status.

The app serves a catalogue given as a manifest with extra columns (name, price, ...), some of
which must never come back (a local path, a column named for a file, an over-long value)."""

import csv
import shutil
import time
from pathlib import Path

import pytest

from artifacts import storage
from jobs.build_index import BuildIndexConfig
from jobs.build_index import run as build_index
from jobs.embed_catalogue import EmbedConfig
from jobs.embed_catalogue import run as embed
from serve import schemas
from serve.errors import error_response
from tests.helpers import http, multipart_files, publish_version

pytestmark = pytest.mark.slow

ORIGIN = "https://shop.example"
LONG = "x" * 600  # over serve/item_metadata.MAX_VALUE_CHARS: left out
SHAPE = {"error", "status"}


def _manifest_rows(serving_catalogue: Path) -> list[dict]:
    """The exported catalogue's manifest rows (its images copied under ``images/``) plus metadata."""
    import pyarrow.parquet as pq

    rows = []
    for i, r in enumerate(pq.read_table(serving_catalogue / "manifest.parquet").to_pylist()):
        rows.append({"item_id": r["item_id"], "image_uri": f"images/{r['image_uri']}", "category": r["category"],
                     "content_sha256": r["content_sha256"], "name": f"{r['category']} no. {i}", "price": 9.5 + i,
                     "in_stock": "true" if i % 2 else "false", "product_url": f"https://shop.example/p/{r['item_id']}",
                     "local_file": f"/srv/photos/{r['item_id']}.png",
                     "notes": "/home/alice/notes.txt" if i % 3 == 0 else "ok", "blurb": LONG if i % 5 == 0 else "short"})
    return rows


def _write_manifest(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


@pytest.fixture(scope="module")
def store(tmp_path_factory, serving_store) -> dict:
    """The serving store's 600 images as a manifest catalogue with metadata columns, embedded and indexed."""
    root = tmp_path_factory.mktemp("metadata-store")
    shutil.copytree(Path(serving_store) / "catalogue", root / "catalogue" / "images",
                    ignore=shutil.ignore_patterns("manifest.*"))
    rows = _manifest_rows(Path(serving_store) / "catalogue")
    _write_manifest(root / "catalogue" / "manifest.csv", rows)
    publish_version(str(root), "cnn-meta-a")
    return {"root": str(root), "rows": {r["item_id"]: r for r in rows}, "list": rows}


@pytest.fixture(scope="module")
def url(deploy_app, store) -> str:
    return deploy_app(store["root"], cors_origins=[ORIGIN])


@pytest.fixture(scope="module")
def items(url) -> list[tuple[dict, bytes]]:
    """Two catalogue items of different categories and their images, through the API."""
    samples = http(url + "/v1/samples?per_category=1").json()["samples"]
    picked = [samples[0], next(s for s in samples if s["category"] != samples[0]["category"])]
    return [(s, http(url + s["image_url"]).body) for s in picked]


def _ids(hits: list[dict]) -> list[str]:
    return [h["item_id"] for h in hits]


def _search(url: str, image: bytes, query: str) -> dict:
    r = http(url + "/v1/search?" + query, image, headers={"Content-Type": "image/png"})
    assert r.status == 200, r.body
    return schemas.SearchResponse.model_validate(r.json()).model_dump(exclude_none=True)


def assert_error_shape(r, status: int) -> dict:
    assert r.status == status, (r.status, r.body)
    body = r.json()
    assert set(body) == SHAPE and body["status"] == status and isinstance(body["error"], str) and body["error"], body
    return body


def test_more_like_this_uses_the_stored_vector_and_leaves_the_item_out(url, items):
    (item, image), _ = items
    r = http(url + f"/v1/items/{item['item_id']}/similar?k=8&category=all")
    assert r.status == 200, r.body
    out = schemas.SimilarResponse.model_validate(r.json())
    assert out.item_id == item["item_id"] and out.item_category == item["category"] and out.category is None
    assert len(out.results) == 8 and item["item_id"] not in _ids([h.model_dump() for h in out.results])
    sims = [h.similarity for h in out.results]
    assert sims == sorted(sims, reverse=True)
    # The catalogue image uploaded finds itself first (serving embeds as the nightly job did): the
    # rest of that list is "more like this" without any upload.
    uploaded = _search(url, image, "k=9&category=all")["results"]
    assert uploaded[0]["item_id"] == item["item_id"]
    assert _ids(r.json()["results"]) == _ids(uploaded[1:])
    # Default (auto): within the item's own category.
    own = http(url + f"/v1/items/{item['item_id']}/similar?k=5").json()
    assert own["category"] == item["category"] and len(own["results"]) == 5
    assert {h["category"] for h in own["results"]} == {item["category"]}
    named = http(url + f"/v1/items/{item['item_id']}/similar?k=3&category=Trouser").json()
    assert {h["category"] for h in named["results"]} == {"Trouser"}


def test_more_like_this_refuses_unknown_and_invalid_ids(url):
    body = assert_error_shape(http(url + "/v1/items/no-such-item/similar"), 404)
    assert "no-such-item" in body["error"]
    assert_error_shape(http(url + "/v1/items/.hidden/similar"), 400)
    assert_error_shape(http(url + "/v1/items/a..b/similar?k=3"), 400)


def test_batch_search_answers_one_list_per_image_like_single_searches(url, items):
    (a, image_a), (b, image_b) = items
    body, ctype = multipart_files([("first.png", image_a), ("broken.png", b"not an image"), ("second.png", image_b)])
    r = http(url + "/v1/search/batch?k=6&category=all", body, headers={"Content-Type": ctype})
    assert r.status == 200, r.body
    out = schemas.BatchSearchResponse.model_validate(r.json()).model_dump(exclude_none=True)
    assert [q["key"] for q in out["queries"]] == ["first.png", "broken.png", "second.png"]
    assert len(out["results"]) == 3 and out["results"][1] == [] and out["queries"][1]["error"]
    for (item, image), hits in zip(items, (out["results"][0], out["results"][2])):
        single = _search(url, image, "k=6&category=all")
        assert _ids(hits) == _ids(single["results"]) and _ids(hits)[0] == item["item_id"]
        assert [h["similarity"] for h in hits] == pytest.approx([h["similarity"] for h in single["results"]], abs=0.02)
    # category=auto: each image within its own predicted class, as a single search does it.
    auto = http(url + "/v1/search/batch?k=4", body, headers={"Content-Type": ctype}).json()
    for query, hits, (_, image) in zip((auto["queries"][0], auto["queries"][2]), (auto["results"][0], auto["results"][2]),
                                       items):
        single = _search(url, image, "k=4")
        assert query["predicted"] == single["predicted"] and query.get("category") == single.get("category")
        assert _ids(hits) == _ids(single["results"])


def test_batch_search_keeps_the_upload_limits(url, items):
    (_, image), _ = items
    body, ctype = multipart_files([(f"{i}.png", image) for i in range(33)])  # max_search_batch_images: 32
    assert_error_shape(http(url + "/v1/search/batch", body, headers={"Content-Type": ctype}), 413)
    assert_error_shape(http(url + "/v1/search/batch", image, headers={"Content-Type": "image/png"}), 400)


def test_score_threshold_leaves_out_weaker_hits(url, items):
    (_, image), _ = items
    everything = _search(url, image, "k=100&category=all")["results"]
    sims = [h["similarity"] for h in everything]
    threshold = sims[len(sims) // 2]
    assert sims[-1] < threshold, "the test needs hits on both sides of the threshold"
    kept = _search(url, image, f"k=100&category=all&score_threshold={threshold}")
    assert kept["score_threshold"] == threshold
    assert kept["results"] and all(h["similarity"] >= threshold for h in kept["results"])
    assert _ids(kept["results"]) == [h["item_id"] for h in everything if h["similarity"] >= threshold]
    assert len(kept["results"]) < len(everything)
    (item, _), _ = items
    similar = http(url + f"/v1/items/{item['item_id']}/similar?k=100&category=all&score_threshold={threshold}").json()
    assert similar["results"] and all(h["similarity"] >= threshold for h in similar["results"])
    assert_error_shape(http(url + "/v1/search?score_threshold=101", image), 422)


def test_hits_carry_the_manifest_metadata_and_never_paths(url, store, items):
    (_, image), _ = items
    hits = _search(url, image, "k=40&category=all")["results"]
    for hit in hits:
        row = store["rows"][hit["item_id"]]
        meta = hit["metadata"]
        assert meta["name"] == row["name"] and meta["price"] == pytest.approx(row["price"])
        assert meta["in_stock"] is (row["in_stock"] == "true") and meta["product_url"] == row["product_url"]
        assert "local_file" not in meta and "image_uri" not in meta and "image_uri" not in hit
        assert ("notes" in meta) == (row["notes"] == "ok") and ("blurb" in meta) == (row["blurb"] != LONG)
        assert not any(isinstance(v, str) and v.startswith("/") for v in meta.values())
    assert {("blurb" in h["metadata"]) for h in hits} == {True, False}, "the test needs long and short blurbs"
    similar = http(url + f"/v1/items/{hits[0]['item_id']}/similar?k=3").json()["results"]
    assert all(h["metadata"]["name"] == store["rows"][h["item_id"]]["name"] for h in similar)


def test_openapi_documents_every_route(url):
    spec = http(url + "/openapi.json").json()
    schemas_defined = set(spec["components"]["schemas"])
    expected_params = {"/v1/search": {"k", "category", "score_threshold"},
                       "/v1/search/batch": {"k", "category", "score_threshold"},
                       "/v1/items/{item_id}/similar": {"item_id", "k", "category", "score_threshold"},
                       "/v1/items/{item_id}/image": {"item_id"}, "/v1/samples": {"per_category"},
                       "/v1/embed": {"model_id"}, "/v1/info": set(), "/v1/classify": set(),
                       "/v1/explain": {"method"}}
    v1 = {p for p in spec["paths"] if p.startswith("/v1/")}
    assert v1 == set(expected_params), v1
    for path in v1 | {"/healthz"}:
        for method, op in spec["paths"][path].items():
            params = {p["name"]: p for p in op.get("parameters", [])}
            assert set(params) == expected_params.get(path, set()), (path, set(params))
            assert all(p.get("description") or p["in"] == "path" for p in params.values()), (path, params)
            ok = op["responses"]["200"]["content"]
            if path.endswith("/image"):
                assert "image/*" in ok
            else:
                ref = ok["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
                assert ref in schemas_defined and ref != "ErrorBody", (path, ref)
            for status, answer in op["responses"].items():
                if status != "200":  # every error documented in the one shape, FastAPI's 422 included
                    assert answer["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody"), (path, status)
            if method == "post":
                assert "multipart/form-data" in op["requestBody"]["content"], path
    assert http(url + "/docs").status == 200
    # The documented models are the answers' real shapes (extra keys are refused).
    schemas.InfoResponse.model_validate(http(url + "/v1/info").json())
    schemas.HealthResponse.model_validate(http(url + "/healthz").json())
    schemas.SamplesResponse.model_validate(http(url + "/v1/samples").json())


def test_every_error_status_answers_the_one_shape(url, items):
    (_, image), _ = items
    assert http(url + "/v1/no-such-route").json() == {"error": "Not Found", "status": 404}
    r = http(url + "/v1/search", method="GET")
    assert_error_shape(r, 405)
    assert "POST" in r.headers.get("allow", r.headers.get("Allow", ""))
    body = assert_error_shape(http(url + "/v1/search?k=abc", image), 422)
    assert "k" in body["error"] and "integer" in body["error"]
    assert_error_shape(http(url + "/v1/samples?per_category=many"), 422)
    assert_error_shape(http(url + "/v1/search?k=0", image), 400)
    assert_error_shape(http(url + "/v1/search", b"not an image"), 400)
    assert_error_shape(http(url + "/v1/embed", image), 401)


def test_a_503_says_when_to_try_again():
    # No route answers 503 on demand here; overloads over HTTP (Retry-After from the proxy) are in
    # test_hostile_clients.py. Every 503 the app answers goes through this one function.
    r = error_response(503, "nothing to serve yet")
    assert r.status_code == 503 and r.headers["Retry-After"] == "1"
    assert "Retry-After" not in error_response(404, "no").headers


def test_cors_origins_from_config(url):
    allowed = http(url + "/v1/info", headers={"Origin": ORIGIN})
    assert allowed.status == 200 and allowed.headers.get("access-control-allow-origin") == ORIGIN
    other = http(url + "/v1/info", headers={"Origin": "https://elsewhere.example"})
    assert other.status == 200 and "access-control-allow-origin" not in {k.lower() for k in other.headers}
    preflight = http(url + "/v1/search", method="OPTIONS", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"})
    assert preflight.status == 200 and preflight.headers.get("access-control-allow-origin") == ORIGIN
    assert "POST" in preflight.headers.get("access-control-allow-methods", "")


def test_a_deleted_item_is_never_similar_nor_a_query(url, store, items):
    """An item removed from the catalogue is tombstoned by the incremental index update: 404 as a
    "more like this" query, and absent from every answer."""
    (item, image), _ = items
    gone = item["item_id"]
    root = store["root"]
    _write_manifest(Path(root) / "catalogue" / "manifest.csv", [r for r in store["list"] if r["item_id"] != gone])
    run = embed(EmbedConfig(catalogue=storage.join(root, "catalogue"), model=storage.join(root, "models", "cnn-meta-a"),
                            out=root, local_max_items=10_000))
    assert run.published and run.counts["removed"] == 1
    result = build_index(BuildIndexConfig(embeddings=run.run_uri, out=root, storage=root, recall_queries=100))
    assert result.published and result.mode == "incremental", result
    deadline = time.monotonic() + 60
    while http(url + "/v1/info").json()["index_id"] != result.index_id:  # hot swap, poll_interval_s 1
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert_error_shape(http(url + f"/v1/items/{gone}/similar"), 404)
    hits = _search(url, image, "k=50&category=all")["results"]
    assert gone not in _ids(hits) and len(hits) == 50
    assert hits[0]["metadata"]["name"] == store["rows"][hits[0]["item_id"]]["name"]
