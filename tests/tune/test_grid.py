"""The Tune grid end to end on a real local Ray: trials, report, export, reload."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from artifacts import model_artifact, publish, storage
from jobs import evaluate_model
from tune.grid import GridConfig, load_grid_config, run, trial_specs

pytestmark = pytest.mark.slow


def test_trial_specs_cross_the_grid():
    cfg = GridConfig(architectures=("seed_cnn", "lenet5"), optimizers=("adam", "sgd", "rmsprop"),
                     learning_rates=(0.1, 0.01), per_architecture={"lenet5": {"epochs": 3}})
    specs = trial_specs(cfg)
    assert len(specs) == 12
    assert {(s["architecture"], s["optimizer"], s["learning_rate"]) for s in specs} == {
        (a, o, lr) for a in ("seed_cnn", "lenet5") for o in ("adam", "sgd", "rmsprop") for lr in (0.1, 0.01)}
    assert all(s["train"]["epochs"] == (3 if s["architecture"] == "lenet5" else 15) for s in specs)
    with pytest.raises(ValueError, match="unknown optimizer"):
        trial_specs(GridConfig(optimizers=("adamw",)))
    with pytest.raises(ValueError, match="valid"):
        trial_specs(GridConfig(architectures=("alexnet",)))


def test_smoke_grid_on_object_storage_exports_a_model_that_evaluate_reloads(s3_bucket, ray_local, tiny_fashion_mnist):
    """Data, Tune results, report and model all on a real S3-protocol server."""
    data = storage.join(s3_bucket, "datasets", "fashion-mnist")
    storage.upload_dir(tiny_fashion_mnist, data)
    root = storage.join(s3_bucket, "vitrine")
    cfg = load_grid_config(None, ["train.max_per_class=30"], storage=root, data=data, smoke_test=True,
                           architectures=["cnn_dropout_1", "seed_cnn"], optimizers=["adam", "sgd"])
    result = run(cfg)

    assert len(result.leaderboard) == 2
    # --smoke-test keeps the first two trials of the 2 x 2 grid
    assert {(r["architecture"], r["optimizer"]) for r in result.leaderboard} == {
        ("cnn_dropout_1", "adam"), ("cnn_dropout_1", "sgd")}
    assert all(r["status"] == "done" and r["epochs_run"] == 1 for r in result.leaderboard)
    assert all(0.0 <= r["test_accuracy"] <= 1.0 for r in result.leaderboard)  # every trial evaluated
    best_row = next(r for r in result.leaderboard if r["trial_id"] == result.best["trial_id"])
    assert best_row["test_accuracy"] == pytest.approx(result.test_metrics["accuracy"])
    assert result.sum_trial_seconds > 0 and result.wall_time_s > 0
    assert result.run_uri.startswith(root + "/tune/default-smoke/")

    text = storage.read_text(storage.join(result.report_uri, "report.md"))
    assert "Leaderboard" in text and "confusion_matrix.png" in text
    for png in ("training_curves.png", "confusion_matrix.png", "per_class.png"):
        assert storage.read_bytes(storage.join(result.report_uri, png))[:8] == b"\x89PNG\r\n\x1a\n"

    models = model_artifact.models_root(root)
    # A smoke run exports its model but never moves models/LATEST (issue 11, item 5).
    assert not result.published and "smoke-test" in result.publish_reason
    with pytest.raises(publish.NotPublishedError):
        publish.latest_id(models)
    models = result.model_uri
    card = model_artifact.read_card(models)
    assert card.architecture == "cnn_dropout_1" and card.embedding_layer == "embedding" and card.embedding_dim == 128
    assert card.test_metrics["accuracy"] == pytest.approx(result.test_metrics["accuracy"])
    assert set(card.dataset["sha256"]) == {"train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                                           "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"}
    summary = json.loads(storage.read_text(storage.join(result.run_uri, "grid_summary.json")))
    assert summary["model_uri"] == result.model_uri

    evaluated = evaluate_model.run(models, data)
    assert evaluated["reproduced"] is True
    assert evaluated["metrics"]["confusion_matrix"] == result.test_metrics["confusion_matrix"]


def test_a_grid_model_below_the_gate_is_exported_but_not_published(ray_local, tiny_fashion_mnist, tmp_path, capsys):
    """A full (non-smoke) grid whose model misses the floor: exported, listed, LATEST untouched."""
    from artifacts import model_gate
    from jobs import cli

    cfg = load_grid_config(None, ["train.epochs=1", "train.max_per_class=20", "evaluate_all=false",
                                  "gate.min_accuracy=1.01", "num_cpus=1"], storage=str(tmp_path),
                           data=str(tiny_fashion_mnist), architectures=["cnn_dropout_1"], optimizers=["adam"])
    result = run(cfg)
    models = model_artifact.models_root(str(tmp_path))
    model_id = model_artifact.read_card(result.model_uri).model_id
    assert not result.published and "gate: test accuracy" in result.publish_reason
    assert "below the floor 1.0100" in result.publish_reason
    with pytest.raises(publish.NotPublishedError):
        publish.latest_id(models)
    summary = json.loads(storage.read_text(storage.join(result.run_uri, "grid_summary.json")))
    assert summary["publish_reason"] == result.publish_reason
    # The card carries the accuracy the gate read; under a floor it passes, promote publishes it.
    decision = model_gate.check(models, model_id, model_gate.GateConfig(min_accuracy=0.0))
    assert decision.passed and decision.accuracy == pytest.approx(result.test_metrics["accuracy"])
    assert cli.main(["models", "promote", model_id, "--storage", str(tmp_path), "--set", "gate.min_accuracy=0"]) == 0
    assert publish.latest_id(models) == model_id


def test_vitrine_models_json_lists_every_model():
    out = subprocess.run([sys.executable, "-m", "jobs.cli", "models", "--json"], capture_output=True, text=True,
                         check=True, timeout=300)
    rows = json.loads(out.stdout)
    by_name = {r["name"]: r for r in rows}
    assert {"seed_cnn", "lenet5", "vitrine_cnn", "vgg16", "resnet50", "mobilenet_v2", "thesis_cnn"} <= set(by_name)
    assert by_name["seed_cnn"]["params"] == 241546
    assert all({"name", "params", "input_shape", "embedding_dim"} <= set(r) for r in rows)


@pytest.mark.fault
def test_interrupted_grid_resumes_without_redoing_finished_trials(ray_local, tiny_fashion_mnist, tmp_path):
    import os
    import signal
    import time

    flags = ["--data", str(tiny_fashion_mnist), "--storage", str(tmp_path),
             "--set", "name=resumable", "--set", "architectures=[cnn_dropout_1]",
             "--set", "optimizers=[adam, sgd, rmsprop]", "--set", "train.epochs=1",
             "--set", "train.max_per_class=20", "--set", "max_concurrent_trials=1", "--set", "num_cpus=1"]
    proc = subprocess.Popen([sys.executable, "-m", "jobs.tune_grid", *flags], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kind = tmp_path / "tune" / "resumable"
    finished: list[Path] = []
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not finished:
            finished = [p for p in kind.glob("*/*/result.json") if p.read_text().strip()]
            assert proc.poll() is None, "the grid ended before it could be interrupted"
            time.sleep(0.5)
        assert finished, "no trial finished within 240 s"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and its local Ray die at once
        proc.wait()
    first = finished[0]
    assert len(first.read_text().strip().splitlines()) == 1

    overrides = [f for f in flags[4:] if f != "--set"]
    cfg = load_grid_config(None, overrides, storage=str(tmp_path), data=str(tiny_fashion_mnist), resume=True)
    result = run(cfg)

    assert len(result.leaderboard) == 3 and all(r["status"] == "done" for r in result.leaderboard)
    # Resumed, not restarted: the same run directory, and the finished trial reported only once.
    assert Path(result.run_uri) == first.parent.parent
    assert len(first.read_text().strip().splitlines()) == 1
    print(f"grid resume: driver SIGKILLed after {len(finished)} finished trial(s); --resume finished all "
          f"{len(result.leaderboard)} in the same run, the finished one not redone")


def test_every_shipped_grid_loads_and_photo_training_trains_on_photos():
    from pathlib import Path

    from artifacts.configuration import load_config
    from tune.training import TrainConfig

    grids = sorted(Path("tune/grids").glob("*.yaml"))
    assert {"default.yaml", "photo-training.yaml", "photos.yaml"} <= {g.name for g in grids}
    for g in grids:
        assert trial_specs(load_grid_config(str(g))), g
    photos = [load_config(TrainConfig, values=t["train"])
              for t in trial_specs(load_grid_config("tune/grids/photo-training.yaml"))]
    assert all(c.augmentation.uses_photos and c.augmentation.flip_vertical for c in photos)
    assert all(c.model_options["head"] == "cosine" for c in photos)
