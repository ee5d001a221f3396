"""What the embedding job reads and whom it trusts, on a real local Ray: bad rows decoded into
reasons, image URIs confined to the catalogue roots (new and carried rows), the allowed prefixes
from config layers, storage settings but never keys for Ray Data tasks, a one-CPU machine, an
embedding service that answers nonsense. The runs themselves: tests/jobs/test_embed_runs.py."""

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from artifacts import catalogue, catalogue_manifest, embeddings, image_bytes, model_artifact, storage
from artifacts.preprocess import PreprocessSpec
from embedding import run_rows
from jobs import embed_catalogue
from jobs.embed_catalogue import EmbedConfig, run
from jobs.export_catalogue import ExportConfig
from jobs.export_catalogue import run as export
from tests.helpers import by_id, mirrored_png

pytestmark = pytest.mark.slow


def test_decode_batch_turns_every_bad_row_into_a_reason(tmp_path):
    good = tmp_path / "good.png"
    Image.new("RGBA", (300, 120), (200, 10, 10, 255)).save(good)  # any size and mode → the card's input
    other = tmp_path / "other.png"
    other.write_bytes(good.read_bytes())
    rows = pa.table({
        "item_id": ["a", "b", "c", "d"],
        "image_uri": [str(good), str(other), str(tmp_path / "missing.png"), str(good)],
        "category": ["x", None, None, None],
        "content_sha256": [None, "0" * 64, None, catalogue.content_sha256(good.read_bytes())],
    })
    out = run_rows.decode_batch(rows, spec=PreprocessSpec().to_dict())
    errors = out.column("error").to_pylist()
    assert errors[0] is None and errors[3] is None
    assert errors[1].startswith("content_sha256 mismatch: the catalogue says 000") and "missing.png" in errors[2]
    assert out.column("content_sha256").to_pylist()[0] == catalogue.content_sha256(good.read_bytes())
    pixels = np.asarray(out.column("pixels").combine_chunks().flatten()).reshape(4, 28, 28, 1)
    assert pixels.dtype == np.float32 and pixels[0].max() <= 1.0 and pixels[0].max() > 0
    np.testing.assert_array_equal(pixels[1], 0)


def test_a_one_cpu_machine_fits_the_actor_instead_of_waiting_forever(tmp_path, tiny_fashion_mnist, models_dir):
    # The default actor (1.5 CPUs) does not fit a 1-CPU local Ray, which can never grow: the job
    # must shrink it, not wait. Its own process, since this session's Ray has 2 CPUs.
    import subprocess
    import sys

    cat = tmp_path / "catalogue"
    export(ExportConfig(split="test", out=str(cat), data=str(tiny_fashion_mnist), limit=20))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.setdefault("RAY_AUTH_MODE", "disabled")
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "embed", "--catalogue", str(cat), "--model", models_dir,
         "--storage", str(tmp_path / "store"), "--json", "--set", "num_cpus=1", "--set", "local_max_items=0",
         "--set", "batch_size=8"],
        cwd=Path(__file__).resolve().parents[2], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "one actor of 0.5 CPUs instead of cpus_per_actor=1.5" in proc.stderr
    result = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert result["timings"]["mode"] == "ray-data" and result["counts"]["embedded"] == 20


def test_a_service_that_answers_nonsense_is_not_trusted(tmp_path, tiny_fashion_mnist, models_dir, caplog):
    # A real HTTP server that claims the run's model but answers /v1/embed with another shape
    # (another API version, a proxy's error page): the job must embed the increment itself.
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    card = model_artifact.read_card(storage.join(models_dir, "cnn-test-a"))

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _json(self, obj):
            body = json.dumps(obj).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            self._json({"model_id": card.model_id, "classes": list(card.class_names), "max_upload_bytes": 1 << 20})

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self._json({"model_id": card.model_id, "items": [{"key": "0", "embedding": [1.0, 2.0]}]})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        cat = tmp_path / "catalogue"
        export(ExportConfig(split="test", out=str(cat), data=str(tiny_fashion_mnist), limit=6))
        result = run(EmbedConfig(catalogue=str(cat), model=models_dir, out=str(tmp_path / "store"),
                                 service_url=f"http://127.0.0.1:{server.server_address[1]}"))
    finally:
        server.shutdown()
    assert result.timings["mode"] == "in-process" and result.counts["embedded"] == 6
    assert "unexpected answer" in caplog.text


def test_images_outside_the_catalogue_roots_become_errors_unread_carried_rows_included(
        tmp_path, tiny_fashion_mnist, models_dir, monkeypatch):
    # Issue 11: whoever edits a manifest must not make the job (and so the index and the item-image
    # route) read files outside the catalogue. Each hostile row is a valid image with a true hash,
    # so only confinement can keep it out.
    # One test for both runs (over 60 lines on purpose): the second checks carried rows against
    # the first run's store.
    cat = tmp_path / "catalogue"
    export(ExportConfig(split="test", out=str(cat), data=str(tiny_fashion_mnist), limit=20))
    manifest = pq.read_table(cat / "manifest.parquet")
    rows = manifest.to_pylist()
    secret = tmp_path / "outside" / "secret.png"
    secret.parent.mkdir()
    secret.write_bytes((cat / rows[0]["image_uri"]).read_bytes())
    sha = catalogue.content_sha256(secret.read_bytes())
    hostile = {"h-file": "file://" + str(secret), "h-passwd": "file:///etc/passwd",
               "h-bucket": "s3://other-bucket/secret.png", "h-dotdot": "../outside/secret.png",
               "h-abs": str(secret)}
    for item_id, uri in hostile.items():
        rows.append({**rows[0], "item_id": item_id, "image_uri": uri, "content_sha256": sha})
    catalogue_manifest.write_manifest(pa.Table.from_pylist(rows, schema=manifest.schema), str(cat / "manifest.parquet"))
    read: list[str] = []
    real_read_many = image_bytes.read_many

    def spy_read_many(uris, **kw):
        read.extend(uris)
        return real_read_many(uris, **kw)

    monkeypatch.setattr(image_bytes, "read_many", spy_read_many)
    root = str(tmp_path / "store")
    config = EmbedConfig(catalogue=str(cat), model=models_dir, out=root, max_failure_share=0.5)

    first = run(dataclasses.replace(config, run_id="run-1"))

    assert first.counts == {"total": 25, "new": 25, "changed": 0, "unchanged": 0, "retried": 0, "removed": 0,
                            "failed": 5, "embedded": 20}
    runs = embeddings.model_runs_uri(root, "cnn-test-a")
    errors = by_id(embeddings.read_errors(runs))
    assert errors.keys() == hostile.keys()
    words = {"h-file": "file://", "h-passwd": "file://", "h-bucket": "outside the catalogue roots",
             "h-dotdot": "'..' segment", "h-abs": "outside the catalogue roots"}
    for item_id, w in words.items():
        assert errors[item_id]["reason"].startswith("refused: ") and w in errors[item_id]["reason"]
        assert errors[item_id]["image_uri"] == hostile[item_id]  # what the manifest asked for
    assert not hostile.keys() & set(embeddings.read_table(runs).column("item_id").to_pylist())
    assert not any("secret" in u or "passwd" in u or "other-bucket" in u for u in read), read

    # Carried rows are checked like new ones: an unchanged item whose URI now points outside is
    # refused; one moved to another file inside the root is read again (its hash is only a claim).
    rows = [r for r in rows if r["item_id"] not in hostile]
    moved_honestly, lying, escaping = rows[1], rows[2], rows[3]
    (cat / "moved.png").write_bytes((cat / moved_honestly["image_uri"]).read_bytes())
    moved_honestly["image_uri"] = "moved.png"
    (cat / "other.png").write_bytes(mirrored_png((cat / lying["image_uri"]).read_bytes()))
    lying["image_uri"] = "other.png"  # content_sha256 left as it was: a lie
    escaping["image_uri"] = "file:///etc/passwd"
    catalogue_manifest.write_manifest(pa.Table.from_pylist(rows, schema=manifest.schema), str(cat / "manifest.parquet"))
    read.clear()

    second = run(dataclasses.replace(config, run_id="run-2"))

    assert second.counts == {"total": 20, "new": 0, "changed": 3, "unchanged": 17, "retried": 0, "removed": 0,
                             "failed": 2, "embedded": 1}
    errors = by_id(embeddings.read_errors(runs))
    assert errors.keys() == {lying["item_id"], escaping["item_id"]}
    assert errors[lying["item_id"]]["reason"].startswith("content_sha256 mismatch")
    assert "file://" in errors[escaping["item_id"]]["reason"]
    t = by_id(embeddings.read_table(runs))
    assert t[moved_honestly["item_id"]]["image_uri"] == str(cat / "moved.png")
    assert sorted(read) == sorted([str(cat / "moved.png"), str(cat / "other.png")])


def test_allowed_image_prefixes_come_from_config_layers(tmp_path):
    (tmp_path / "embed.yaml").write_text("allowed_image_prefixes: [s3://shop-images/products]\n")
    config = embed_catalogue.load_embed_config(str(tmp_path / "embed.yaml"), ["allowed_image_prefixes=/mnt/photos"])
    assert config.allowed_image_prefixes == ("/mnt/photos",)
    assert embed_catalogue.load_embed_config(str(tmp_path / "embed.yaml")).allowed_image_prefixes == (
        "s3://shop-images/products",)
    assert EmbedConfig().allowed_image_prefixes == ()


def test_ray_data_tasks_get_storage_settings_but_never_keys():
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_DEFAULT_REGION": "eu-west-1", "AWS_PROFILE": "shop",
           "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "s3cr3t", "AWS_SESSION_TOKEN": "tok"}
    assert storage.worker_env(env) == {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
                                                       "AWS_DEFAULT_REGION": "eu-west-1", "AWS_PROFILE": "shop"}
