import csv

import numpy as np
import pytest
from PIL import Image

from tune.metrics import classification_metrics
from tune.report import format_duration, format_lr, write_report

CLASS_NAMES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]


def _history(n_epochs, final_acc):
    return [
        {
            "epoch": e + 1,
            "loss": 1.0 / (e + 1),
            "accuracy": final_acc - 0.05 * (n_epochs - e - 1) + 0.01,
            "val_loss": 1.1 / (e + 1),
            "val_accuracy": final_acc - 0.05 * (n_epochs - e - 1),
            "seconds": 3.2,
        }
        for e in range(n_epochs)
    ]


@pytest.fixture
def trials():
    leaderboard = [
        {"trial_id": "t_mid", "architecture": "mlp", "optimizer": "sgd", "learning_rate": 0.01,
         "batch_size": 64, "epochs_run": 3, "val_accuracy": 0.85, "val_loss": 0.41,
         "train_seconds": 30.7, "status": "TERMINATED"},
        {"trial_id": "t_low", "architecture": "cnn", "optimizer": "adam", "learning_rate": 0.00025,
         "batch_size": 128, "epochs_run": 1, "val_accuracy": 0.80, "val_loss": 0.55,
         "train_seconds": 9.2, "status": "TERMINATED"},
        {"trial_id": "t_best", "architecture": "resnet", "optimizer": "adamw", "learning_rate": 0.001,
         "batch_size": 256, "epochs_run": 5, "val_accuracy": 0.9123, "val_loss": 0.25,
         "train_seconds": 120.4, "status": "TERMINATED"},
    ]
    histories = {"t_mid": _history(3, 0.85), "t_low": _history(1, 0.80), "t_best": _history(5, 0.9123)}
    return leaderboard, histories


@pytest.fixture
def test_metrics():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 1000)
    pred = np.where(rng.random(1000) < 0.85, y, rng.integers(0, 10, 1000))
    return classification_metrics(y, pred, CLASS_NAMES)


def _assert_png(path):
    assert path.is_file(), path
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.verify()
    with Image.open(path) as im:
        assert im.width > 100 and im.height > 100


def _table_rows(md):
    return [line for line in md.splitlines() if line.startswith("| ") and "---" not in line and "--:" not in line]


def test_full_report(tmp_path, trials, test_metrics):
    leaderboard, histories = trials
    out = tmp_path / "nested" / "report"
    path = write_report(
        out, title="Sweep 42", leaderboard=leaderboard, histories=histories,
        test_metrics=test_metrics, best_trial_id="t_best", wall_time_s=754.4,
        notes_md="## Notes\n\nverbatim *notes* here\n",
    )
    assert path == out / "report.md"
    for name in ("training_curves.png", "confusion_matrix.png", "per_class.png"):
        _assert_png(out / name)

    md = path.read_text(encoding="utf-8")
    assert md.startswith("# Sweep 42")
    assert "12 min 34 s" in md
    for name in ("training_curves.png", "confusion_matrix.png", "per_class.png"):
        assert f"]({name})" in md
    assert "![training curves](training_curves.png)" in md

    # Leaderboard sorted by val accuracy, best marked, formatting as specified.
    rows = [r for r in _table_rows(md) if "t_" in r]
    assert [r.split("t_")[1].split()[0].strip("*") for r in rows] == ["best", "mid", "low"]
    assert "★" in rows[0] and "★" not in rows[1] + rows[2]
    assert "91.23%" in rows[0] and "1e-03" in rows[0] and "| 120 |" in rows[0]
    assert "2.5e-04" in rows[2]
    assert md.index("t_best") < md.index("t_mid") < md.index("t_low")

    # Test metrics table and notes appended verbatim at the end.
    assert "| **macro avg** |" in md
    assert "Cohen's kappa" in md and "Informedness" in md
    assert md.rstrip("\n").endswith("## Notes\n\nverbatim *notes* here")
    assert md.index("## Test metrics") < md.index("![confusion matrix]") < md.index("## Notes")

    with (out / "leaderboard.csv").open(newline="") as fh:
        csv_rows = list(csv.DictReader(fh))
    assert len(csv_rows) == 3
    assert [r["trial_id"] for r in csv_rows] == ["t_best", "t_mid", "t_low"]
    assert list(csv_rows[0]) == [
        "trial_id", "architecture", "optimizer", "learning_rate", "batch_size", "epochs_run",
        "val_accuracy", "val_loss", "test_accuracy", "train_seconds", "status",
    ]
    assert float(csv_rows[0]["val_accuracy"]) == pytest.approx(0.9123)


def test_without_test_metrics_and_histories(tmp_path, trials):
    leaderboard, _ = trials
    path = write_report(
        tmp_path, title="Bare", leaderboard=leaderboard, histories={},
        test_metrics=None, best_trial_id=None,
    )
    md = path.read_text(encoding="utf-8")
    assert not list(tmp_path.glob("*.png"))
    assert ".png)" not in md  # no dangling image links
    assert "Wall time" not in md
    assert "No test-set evaluation" in md
    # Without an explicit best trial, the top-ranked one is marked.
    assert "★ **t_best**" in md
    with (tmp_path / "leaderboard.csv").open(newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 3


def test_missing_fields_and_partial_histories(tmp_path, trials):
    leaderboard, histories = trials
    leaderboard = leaderboard + [
        {"trial_id": "t_err", "architecture": "vit", "learning_rate": None, "val_accuracy": None,
         "status": "ERROR"},
    ]
    histories = {**histories, "t_err": [], "t_only_hist": _history(2, 0.5)}
    path = write_report(
        tmp_path, title="Partial", leaderboard=leaderboard, histories=histories,
        test_metrics=None, best_trial_id="t_mid", top_k_curves=2,
    )
    md = path.read_text(encoding="utf-8")
    rows = [r for r in _table_rows(md) if "t_" in r]
    assert "t_err" in rows[-1] and "–" in rows[-1]
    assert "★ **t_mid**" in md and "★ **t_best**" not in md
    _assert_png(tmp_path / "training_curves.png")
    assert not (tmp_path / "confusion_matrix.png").exists()
    with (tmp_path / "leaderboard.csv").open(newline="") as fh:
        last = list(csv.DictReader(fh))[-1]
    assert last["trial_id"] == "t_err" and last["val_accuracy"] == "" and last["optimizer"] == ""


def test_empty_leaderboard(tmp_path):
    path = write_report(tmp_path, title="Nothing", leaderboard=[], histories={}, test_metrics=None,
                        best_trial_id=None)
    md = path.read_text(encoding="utf-8")
    assert "No trials" in md
    with (tmp_path / "leaderboard.csv").open(newline="") as fh:
        assert list(csv.DictReader(fh)) == []


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0 s"), (59.6, "1 min 0 s"), (754.4, "12 min 34 s"), (3723, "1 h 02 min 03 s")],
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("lr", "text"), [(0.001, "1e-03"), (0.00025, "2.5e-04"), (0.03, "3e-02"), (1.0, "1e+00")]
)
def test_format_lr(lr, text):
    assert format_lr(lr) == text


def _grid_trials():
    """2 optimizers x 3 learning rates x 2 architectures, one cell never run, one trial failed."""
    rows, acc = [], iter(np.linspace(0.70, 0.92, 12))
    for opt in ("adam", "sgd"):
        for lr in (0.01, 0.001, 0.0001):
            for arch in ("mlp", "cnn"):
                if (opt, lr) == ("sgd", 0.0001):
                    continue  # never run: an empty cell
                a = float(next(acc))
                rows.append({"trial_id": f"{opt}_{lr}_{arch}", "architecture": arch, "optimizer": opt,
                             "learning_rate": lr, "val_accuracy": a, "status": "TERMINATED"})
    rows.append({"trial_id": "sgd_err", "architecture": "cnn", "optimizer": "sgd", "learning_rate": 0.01,
                 "val_accuracy": None, "status": "ERROR"})
    return rows


def test_optimizer_lr_heatmap_cells_are_the_best_trials(tmp_path):
    from tune.report_figures import optimizer_lr_grid

    rows = _grid_trials()
    optimizers, lrs, values, counts = optimizer_lr_grid(rows)
    assert optimizers == ["adam", "sgd"] and lrs == [0.0001, 0.001, 0.01]
    for i, opt in enumerate(optimizers):
        for j, lr in enumerate(lrs):
            scores = [r["val_accuracy"] for r in rows if r["optimizer"] == opt and r["learning_rate"] == lr]
            assert counts[i, j] == len(scores)
            scored = [s for s in scores if s is not None]
            if scored:
                assert values[i, j] == pytest.approx(max(scored))
            else:
                assert np.isnan(values[i, j])
    assert counts[1, 0] == 0 and counts[1, 2] == 3  # the empty cell; the failed trial still counts

    path = write_report(tmp_path, title="Grid", leaderboard=rows, histories={}, test_metrics=None,
                        best_trial_id=None)
    _assert_png(tmp_path / "optimizer_lr_heatmap.png")
    md = path.read_text(encoding="utf-8")
    assert "![optimizer × learning rate](optimizer_lr_heatmap.png)" in md


def test_no_heatmap_unless_the_grid_crosses_both(tmp_path, trials):
    from tune.report_figures import optimizer_lr_grid

    leaderboard, _ = trials  # each optimizer at its own learning rate
    assert optimizer_lr_grid(leaderboard) is None
    one_optimizer = [r for r in _grid_trials() if r["optimizer"] == "adam"]
    assert optimizer_lr_grid(one_optimizer) is None
    write_report(tmp_path, title="Adam only", leaderboard=one_optimizer, histories={}, test_metrics=None,
                 best_trial_id=None)
    assert not (tmp_path / "optimizer_lr_heatmap.png").exists()
