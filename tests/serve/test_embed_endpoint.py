"""POST /v1/embed and the embedding job's small increments through it: real HTTP against the app
on local Ray, compared with the job's own in-process forward pass."""

import io
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image, ImageOps

from artifacts import embeddings, storage
from jobs.embed_catalogue import EmbedConfig, run
from embedding.stages import Embedder, decode_batch
from tests.helpers import save_model
from tests.helpers import EMBED_AUTH, EMBED_KEY, SEARCH_KEY, http, multipart_files

pytestmark = pytest.mark.slow
GARBAGE = b"not an image, whatever its name says"


def form(files: list[tuple[str, bytes]]) -> tuple[bytes, dict]:
    body, content_type = multipart_files(files)
    return body, {"Content-Type": content_type, **EMBED_AUTH}


def catalogue_rows(root: str, n: int) -> pa.Table:
    from artifacts.catalogue_listing import list_catalogue

    return list_catalogue(storage.join(root, "catalogue")).slice(0, n).select(
        ["item_id", "image_uri", "category", "content_sha256"])


def in_process(rows: pa.Table, model_uri: str) -> pa.Table:
    embedder = Embedder(model_uri, threads=1)
    return embedder(decode_batch(rows, spec=embedder.card.preprocess_spec.to_dict()))


def test_a_batch_is_embedded_as_the_job_embeds_it_and_bad_images_get_reasons(app_url, serving_store):
    info = http(app_url + "/v1/info").json()
    rows = catalogue_rows(serving_store, 5)
    images = [(str(i), Path(u).read_bytes()) for i, u in enumerate(rows.column("image_uri").to_pylist())]
    body, headers = form(images[:2] + [("bad", GARBAGE)] + images[2:])
    r = http(f"{app_url}/v1/embed?model_id={info['model_id']}", body, headers=headers)
    assert r.status == 200, r.body
    answer = r.json()
    assert answer["model_id"] == info["model_id"] and answer["classes"] == info["classes"]
    items = {item["key"]: item for item in answer["items"]}
    assert [item["key"] for item in answer["items"]] == ["0", "1", "bad", "2", "3", "4"]  # order kept
    assert items["bad"]["error"] == "not a recognised image format" and "embedding" not in items["bad"]

    expected = in_process(rows, storage.join(serving_store, "models", info["model_id"]))
    want = np.asarray(expected.column("embedding").to_pylist(), np.float32)
    got = np.asarray([items[str(i)]["embedding"] for i in range(5)], np.float32)
    assert got.shape == (5, info["embedding_dim"])
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(got, want, atol=1e-5)
    predicted = [info["classes"][int(np.argmax(items[str(i)]["probabilities"]))] for i in range(5)]
    assert predicted == expected.column("predicted_category").to_pylist()


def test_embed_requests_that_cannot_be_served_are_refused_clearly(app_url, serving_store):
    png = Path(catalogue_rows(serving_store, 1).column("image_uri")[0].as_py()).read_bytes()
    body, headers = form([("a", png)])
    r = http(app_url + "/v1/embed?model_id=some-other-model", body, headers=headers)
    assert r.status == 409 and "not some-other-model" in r.json()["error"]
    r = http(app_url + "/v1/embed", png, headers={"Content-Type": "image/png", **EMBED_AUTH})
    assert r.status == 400 and "multipart/form-data" in r.json()["error"]
    body, headers = form([("a", png), ("a", png)])
    assert http(app_url + "/v1/embed", body, headers=headers).status == 400  # two results under one key
    limit = http(app_url + "/v1/info").json()["max_batch_images"]
    body, headers = form([(str(i), png) for i in range(limit + 1)])
    r = http(app_url + "/v1/embed", body, headers=headers)
    assert r.status == 413 and f"more than {limit} images" in r.json()["error"]
    assert http(app_url + "/healthz").status == 200


def _mirror(path: Path) -> None:
    buf = io.BytesIO()
    ImageOps.mirror(Image.open(path)).save(buf, format="PNG")
    path.write_bytes(buf.getvalue())


def test_embed_needs_an_api_key_with_its_scope(app_url, serving_store):
    png = Path(catalogue_rows(serving_store, 1).column("image_uri")[0].as_py()).read_bytes()
    body, headers = form([("a", png)])
    del headers["Authorization"]
    for auth, status, words in [(None, 401, "needs an API key"), ("Basic dXNlcjpwYXNz", 401, "needs an API key"),
                                ("Bearer not-a-key-of-this-service-000000", 401, "unknown API key"),
                                (f"Bearer {SEARCH_KEY}", 403, "lacks the scope 'embed'"),
                                (f"Bearer {EMBED_KEY}", 200, None)]:
        r = http(app_url + "/v1/embed", body, headers={**headers, **({"Authorization": auth} if auth else {})})
        assert r.status == status, (auth, r.status, r.body)
        if status != 200:
            assert words in r.json()["error"] and r.json()["status"] == status
            assert EMBED_KEY not in r.body.decode() and SEARCH_KEY not in r.body.decode()
        if status == 401:
            assert {k.lower(): v for k, v in r.headers.items()}.get("www-authenticate", "").startswith("Bearer")
    # Search stays open by default (search_requires_key: false), and /v1/info says what needs a key.
    assert http(app_url + "/v1/classify", png, headers={"Content-Type": "image/png"}).status == 200
    assert http(app_url + "/v1/info").json()["api_key_required"] == {"embed": True, "search": False}


def test_a_small_increment_goes_through_the_service_and_matches_the_job(app_url, serving_store, tmp_path,
                                                                        monkeypatch, caplog):
    from artifacts.catalogue import content_sha256
    from artifacts.catalogue_listing import list_catalogue
    from artifacts.catalogue_manifest import write_manifest

    monkeypatch.setenv("VITRINE_API_KEY", EMBED_KEY)  # what the Secret gives the nightly job

    model_id = http(app_url + "/v1/info").json()["model_id"]
    model = storage.join(serving_store, "models", model_id)
    cat = tmp_path / "catalogue"
    shutil.copytree(storage.join(serving_store, "catalogue"), cat)
    out = str(tmp_path / "store")
    base = EmbedConfig(catalogue=str(cat), model=model, out=out, service_url=app_url)
    first = run(EmbedConfig(catalogue=str(cat), model=model, out=out))  # no previous run: everything, here
    assert first.timings["mode"] == "in-process"

    # Three images change, one becomes garbage; the manifest carries their new hashes.
    manifest = list_catalogue(str(cat)).to_pylist()
    for row in manifest[:3]:
        _mirror(Path(row["image_uri"]))
    Path(manifest[3]["image_uri"]).write_bytes(GARBAGE)
    for row in manifest[:4]:
        row["content_sha256"] = content_sha256(Path(row["image_uri"]).read_bytes())
    for row in manifest:
        row["image_uri"] = str(Path(row["image_uri"]).relative_to(cat))
    write_manifest(pa.Table.from_pylist(manifest), str(cat / "manifest.parquet"))

    # Without its key the service refuses the job, which then embeds the increment itself.
    monkeypatch.delenv("VITRINE_API_KEY")
    shutil.copytree(out, tmp_path / "keyless")
    keyless = run(EmbedConfig(catalogue=str(cat), model=model, out=str(tmp_path / "keyless"), service_url=app_url))
    assert keyless.timings["mode"] == "in-process" and keyless.counts["embedded"] == 3
    assert "answered 401" in caplog.text
    monkeypatch.setenv("VITRINE_API_KEY", EMBED_KEY)

    via_service = run(base)
    assert via_service.timings["mode"] == "service"
    counts = via_service.counts
    assert (counts["changed"], counts["embedded"], counts["failed"], counts["unchanged"]) == (4, 3, 1, len(manifest) - 4)
    errors = embeddings.read_errors(via_service.run_uri).to_pylist()
    assert [(e["item_id"], e["reason"]) for e in errors] == [(manifest[3]["item_id"], "not a recognised image format")]

    # The same increment embedded by the job itself gives the same rows.
    here = run(EmbedConfig(catalogue=str(cat), model=model, out=str(tmp_path / "here"), full=True))
    a = {r["item_id"]: r for r in embeddings.read_table(via_service.run_uri).to_pylist()}
    b = {r["item_id"]: r for r in embeddings.read_table(here.run_uri).to_pylist()}
    assert a.keys() == b.keys()
    for row in manifest[:3]:
        x, y = a[row["item_id"]], b[row["item_id"]]
        np.testing.assert_allclose(x["embedding"], y["embedding"], atol=1e-5)
        assert (x["predicted_category"], x["content_sha256"]) == (y["predicted_category"], y["content_sha256"])


def test_the_job_embeds_itself_when_the_service_serves_another_model_or_is_down(app_url, serving_store, tmp_path,
                                                                               caplog):
    models = str(tmp_path / "models")
    save_model(models, "cnn-not-served", seed=3)
    cat = storage.join(serving_store, "catalogue")
    result = run(EmbedConfig(catalogue=cat, model=models, out=str(tmp_path / "a"), limit=20, service_url=app_url))
    assert result.timings["mode"] == "in-process" and result.counts["embedded"] == 20
    assert "it serves model cnn-serve-a, this run embeds with cnn-not-served" in caplog.text

    result = run(EmbedConfig(catalogue=cat, model=models, out=str(tmp_path / "b"), limit=20,
                             service_url="http://127.0.0.1:9", service_timeout_s=5))
    assert result.timings["mode"] == "in-process" and result.counts["embedded"] == 20
