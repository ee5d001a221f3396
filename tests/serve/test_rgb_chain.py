"""Issue 10, item 6 at small scale: a photo-style catalogue (128x128 RGB JPEGs) → the photos grid
(thesis_cnn and mobilenet_v2, one epoch each) → embeddings → HNSW index → the service, where
``/v1/search`` with a 128x128 JPEG answers with the RGB model from the RGB index."""

import numpy as np
import pytest

from artifacts import catalogue_listing, model_artifact, photo_style, storage
from jobs.build_index import BuildIndexConfig
from jobs.build_index import run as build_index
from jobs.embed_catalogue import EmbedConfig
from jobs.embed_catalogue import run as embed
from jobs.export_catalogue import ExportConfig
from jobs.export_catalogue import run as export
from tests.helpers import http
from tune.data import fashion_mnist
from tune.grid import load_grid_config
from tune.grid import run as run_grid
from tune.models import transfer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def rgb_store(tmp_path_factory, tiny_fashion_mnist, ray_local) -> dict:
    """200 photos (about 20 per class), the photos grid in smoke mode, and the best trial embedded and indexed."""
    root = str(tmp_path_factory.mktemp("rgb-store"))
    photos = storage.join(root, "catalogue")
    export(ExportConfig(split="train", style="photo", size=128, limit=200, out=photos,
                        data=str(tiny_fashion_mnist)))
    # Half a CPU per trial: next to the serve replicas of earlier tests both trials still run at once;
    # a 32-pixel backbone keeps the MobileNetV2 epoch short (the grid's own size is 96).
    grid = run_grid(load_grid_config("tune/grids/photos.yaml", [
        "resources.cpu=0.5", "per_architecture.mobilenet_v2.model_options.backbone_size=32"],
        storage=root, data=photos, smoke_test=True))
    assert grid.model_uri, grid
    run = embed(EmbedConfig(catalogue=photos, model=grid.model_uri, out=root, local_max_items=10_000, full=True))
    assert run.published and run.counts["embedded"] == 200
    index = build_index(BuildIndexConfig(embeddings=run.run_uri, out=root, storage=root, recall_queries=50))
    assert index.published and index.items == 200
    return {"root": root, "catalogue": photos, "grid": grid, "index": index}


def test_grid_trains_both_rgb_models_and_says_what_the_backbone_started_from(rgb_store):
    grid = rgb_store["grid"]
    rows = {r["architecture"]: r for r in grid.leaderboard}
    assert set(rows) == {"thesis_cnn", "mobilenet_v2"} and all(r["status"] == "done" for r in rows.values())
    assert rows["mobilenet_v2"]["backbone_weights"] == transfer.RANDOM_WEIGHTS == "random (no local file)"
    assert "backbone_weights" not in rows["thesis_cnn"]
    report = storage.read_text(storage.join(grid.report_uri, "report.md"))
    assert "Backbone weights of mobilenet_v2/adam/0.001: random (no local file)" in report
    card = model_artifact.load(grid.model_uri).card
    assert card.input_shape == [128, 128, 3] and card.dataset["name"] == "image-folder"
    # The catalogue's manifest names the classes, in Fashion-MNIST's order: the names search filters by.
    assert card.class_names == list(fashion_mnist.CLASS_NAMES)
    if card.architecture == "mobilenet_v2":
        assert card.training_config["backbone_weights"] == transfer.RANDOM_WEIGHTS
    else:
        assert card.architecture == "thesis_cnn" and "backbone_weights" not in card.training_config


def test_search_with_a_128px_jpeg_answers_with_the_rgb_model(rgb_store, deploy_app, tiny_fashion_mnist):
    model_id = model_artifact.load(rgb_store["grid"].model_uri).card.model_id
    url = deploy_app(rgb_store["root"])
    info = http(url + "/v1/info").json()
    assert info["model_id"] == model_id and info["index_id"] == rgb_store["index"].index_id
    assert info["items"] == 200 and info["classes"] == list(fashion_mnist.CLASS_NAMES)
    assert set(info["categories"]) == set(fashion_mnist.CLASS_NAMES)

    items = catalogue_listing.list_catalogue(rgb_store["catalogue"]).to_pylist()
    catalogue_ids = {r["item_id"] for r in items}
    # A catalogue photo finds itself first: serving decodes and embeds it exactly as the embedding job did.
    own = storage.read_bytes(items[1]["image_uri"])
    r = http(url + "/v1/search?k=5&category=all", own, headers={"Content-Type": "image/jpeg"})
    assert r.status == 200, r.body
    out = r.json()
    assert out["model_id"] == model_id and out["index_id"] == rgb_store["index"].index_id
    assert out["results"][0]["item_id"] == items[1]["item_id"]
    assert out["results"][0]["similarity"] == pytest.approx(100.0, abs=0.01)
    # A new 128x128 photo (a test tile, its own seed): an answer from the RGB index, filtered by its class.
    ds = fashion_mnist.load(str(tiny_fashion_mnist))
    query = photo_style.photo_jpeg(ds.test_images[0], np.random.default_rng(7), size=128)
    out = http(url + "/v1/search?k=5", query, headers={"Content-Type": "image/jpeg"}).json()
    assert out["model_id"] == model_id and len(out["results"]) == 5
    assert {h["item_id"] for h in out["results"]} <= catalogue_ids
    assert out["category"] == out["predicted"] in fashion_mnist.CLASS_NAMES
    assert {h["category"] for h in out["results"]} == {out["predicted"]}
