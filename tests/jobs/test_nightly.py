"""The nightly pipeline as one job: embed → index → retrieval evaluation, then a no-op night."""

import pytest
import yaml

from artifacts import publish, storage
from jobs.export_catalogue import ExportConfig
from jobs.export_catalogue import run as export
from jobs.nightly import NightlyConfig, run
from tests.helpers import save_model

pytestmark = pytest.mark.slow


def test_nightly_pipeline_publishes_embeddings_and_index(ray_local, tiny_fashion_mnist, tmp_path):
    root = str(tmp_path / "store")
    models = storage.join(root, "models")
    save_model(models, "cnn-nightly")
    cat = str(tmp_path / "catalogue")
    export(ExportConfig(split="train", out=cat, data=str(tiny_fashion_mnist), limit=120))

    first = run(NightlyConfig(catalogue=cat, storage=root, data=str(tiny_fashion_mnist)))
    assert first["embed"]["counts"]["embedded"] == 120
    assert first["index"]["published"] and first["index"]["items"] == 120
    assert publish.latest_id(storage.join(root, "indexes")) == first["index"]["index_id"]
    search = first["search"]
    assert search is not None and "classify-then-filter" in storage.read_text(
        storage.join(root, "evaluations", "search", first["index"]["index_id"], "search_eval.md"))

    # Nothing changed overnight: everything is carried over and a fresh index is published.
    second = run(NightlyConfig(catalogue=cat, storage=root, evaluate_search=False))
    assert second["embed"]["counts"]["unchanged"] == 120 and second["embed"]["counts"]["embedded"] == 0
    assert second["search"] is None and second["index"]["index_id"] != first["index"]["index_id"]


def test_shipped_nightly_config_loads():
    from pathlib import Path

    from artifacts.configuration import load_config

    path = Path(__file__).resolve().parents[2] / "cluster" / "nightly" / "nightly.yaml"
    cfg = load_config(NightlyConfig, yaml_path=path)
    assert cfg.catalogue.startswith("s3://") and cfg.embed.max_actors >= cfg.embed.min_actors
    cron = yaml.safe_load((path.parent / "cronjob.yaml").read_text())
    assert cron["kind"] == "CronJob" and "jobs.nightly" in " ".join(
        cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"])
