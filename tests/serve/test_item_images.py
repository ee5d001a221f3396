"""GET /v1/items/{id}/image over real HTTP: only files under the catalogue roots are served,
whatever the index rows say, typed by the format the bytes decode as (issue 11 item 1)."""

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from artifacts import embeddings, storage
from artifacts.index_manifest import MANIFEST as INDEX_MANIFEST
from jobs.build_index import BuildIndexConfig
from jobs.build_index import run as build_index
from jobs.embed_catalogue import EmbedConfig
from jobs.embed_catalogue import run as embed
from jobs.export_catalogue import ExportConfig
from jobs.export_catalogue import run as export
from tests.helpers import save_model
from tests.helpers import http

pytestmark = pytest.mark.slow

MARKER = b"VITRINE-SECRET-MARKER"


@pytest.fixture(scope="module")
def hostile_store(tmp_path_factory, tiny_fashion_mnist):
    """A published store whose embeddings rows were rewritten after the job ran (whoever can write
    the store, or a catalogue embedded with the check bypassed): some point outside the catalogue."""
    root = tmp_path_factory.mktemp("hostile-store")
    cat = root / "catalogue"
    export(ExportConfig(split="test", out=str(cat), data=str(tiny_fashion_mnist), limit=40))
    models = storage.join(str(root), "models")
    save_model(models, "cnn-images-a")
    run = embed(EmbedConfig(catalogue=str(cat), model=storage.join(models, "cnn-images-a"), out=str(root),
                            local_max_items=10_000, full=True))
    assert run.published and run.counts["embedded"] == 40
    outside = root / "outside"
    outside.mkdir()
    secret = outside / "secret.png"
    Image.new("L", (8, 8), 200).save(secret)  # a real image: only confinement keeps it in
    with open(secret, "ab") as f:
        f.write(MARKER)
    (root / "catalogue-evil").mkdir()
    (root / "catalogue-evil" / "x.png").write_bytes(secret.read_bytes())
    (cat / "escape.png").symlink_to(secret)
    ids = sorted(embeddings.read_table(run.run_uri).column("item_id").to_pylist())
    hostile = {ids[0]: "/etc/passwd", ids[1]: "/proc/self/environ", ids[2]: str(secret), ids[3]: f"file://{secret}",
               ids[4]: "s3://other-bucket/secret.png", ids[5]: f"{cat}/../outside/secret.png",
               ids[6]: str(root / "catalogue-evil" / "x.png"), ids[7]: str(cat / "escape.png"),
               ids[8]: f"{cat}/%2e%2e/outside/secret.png"}
    for part in sorted((root / "embeddings").rglob("data/*.parquet")):
        t = pq.read_table(part)
        uris = [hostile.get(i, u) for i, u in zip(t.column("item_id").to_pylist(), t.column("image_uri").to_pylist())]
        t = t.set_column(t.schema.get_field_index("image_uri"), t.schema.field("image_uri"),
                         pa.array(uris, t.schema.field("image_uri").type))
        pq.write_table(t, part)
    index = build_index(BuildIndexConfig(embeddings=run.run_uri, out=str(root), storage=str(root), recall_queries=50))
    assert index.published
    by_id = dict(zip(*[embeddings.read_table(run.run_uri).column(c).to_pylist() for c in ("item_id", "image_uri")]))
    good, jpeg, html = ids[9], ids[10], ids[11]
    buf = io.BytesIO()
    Image.open(by_id[jpeg]).convert("RGB").save(buf, format="JPEG")
    with open(by_id[jpeg], "wb") as f:  # still named .png: the type must come from the bytes
        f.write(buf.getvalue())
    with open(by_id[html], "wb") as f:
        f.write(b"<html><script>alert(document.cookie)</script></html>")
    return {"root": str(root), "cat": str(cat), "index_uri": index.index_uri, "hostile": hostile, "good": good,
            "good_path": by_id[good], "jpeg": jpeg, "html": html, "outside": str(outside), "secret_item": ids[2]}


def test_the_index_records_its_catalogue_roots(hostile_store):
    manifest = json.loads(storage.read_text(storage.join(hostile_store["index_uri"], INDEX_MANIFEST)))
    assert manifest["catalogue_roots"] == [hostile_store["cat"]]


def test_item_images_come_only_from_the_catalogue_roots(deploy_app, hostile_store):
    url = deploy_app(hostile_store["root"])
    for item_id, uri in hostile_store["hostile"].items():
        r = http(url + f"/v1/items/{item_id}/image")
        assert r.status == 404, (uri, r.status, r.body[:200])
        body = r.json()
        assert body["status"] == 404 and item_id in body["error"]
        text = r.body.decode()
        for leak in (hostile_store["root"], "/etc", "/proc", "passwd", "environ", "s3://", "secret", "file:"):
            assert leak not in text, (uri, text)
        assert MARKER not in r.body and b"root:" not in r.body

    r = http(url + f"/v1/items/{hostile_store['good']}/image")
    assert r.status == 200 and r.headers["content-type"] == "image/png"
    assert r.headers["x-content-type-options"] == "nosniff"
    with open(hostile_store["good_path"], "rb") as f:
        assert r.body == f.read()

    r = http(url + f"/v1/items/{hostile_store['jpeg']}/image")  # a JPEG under a .png name
    assert r.status == 200 and r.headers["content-type"] == "image/jpeg"
    assert r.headers["x-content-type-options"] == "nosniff"

    r = http(url + f"/v1/items/{hostile_store['html']}/image")  # HTML under a .png name: never served
    assert r.status == 415 and b"<script>" not in r.body and r.json()["status"] == 415
    assert hostile_store["root"] not in r.body.decode()

    # The API takes every id the catalogue can hold (one rule): this one was refused before.
    r = http(url + "/v1/items/_sku+1=a@b~c/image")
    assert r.status == 404 and "no catalogue item" in r.json()["error"]
    assert http(url + "/v1/items/a..b/image").status == 400


def test_catalogue_roots_in_the_app_args_replace_the_index_s(deploy_app, hostile_store):
    # An operator who pins the roots decides alone: the index's own catalogue is then refused too.
    url = deploy_app(hostile_store["root"], catalogue_roots=[hostile_store["outside"]])
    assert http(url + f"/v1/items/{hostile_store['good']}/image").status == 404
    r = http(url + f"/v1/items/{hostile_store['secret_item']}/image")
    assert r.status == 200 and r.headers["content-type"] == "image/png" and r.body.endswith(MARKER)
