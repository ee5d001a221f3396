"""The model quality gate, promote and rollback of models/LATEST, on model directories made here.

A model directory is complete when its card is written (publish checks for it), so these tests
write cards with the test metrics a tune export records and no weights: the gate and the pointer
never read the weights.
"""

import json
import os

import pytest

from artifacts import model_gate, publish, storage
from artifacts.model_card import CARD_FILE, ModelCard
from jobs import cli
from tune.grid import load_grid_config

GATE = model_gate.GateConfig(min_accuracy=0.85, tolerance=0.005)
FMNIST = {"name": "fashion-mnist", "sha256": {"t10k-images-idx3-ubyte.gz": "ab"}, "test": 10000}


def make_model(models: str, model_id: str, accuracy: float | None, dataset: dict | None = None) -> str:
    card = ModelCard(model_id=model_id, architecture="vitrine_cnn", class_names=list("abcdefghij"),
                     input_shape=[28, 28, 1], preprocessing={}, embedding_layer="embedding", embedding_dim=128,
                     test_metrics={} if accuracy is None else {"accuracy": accuracy},
                     dataset=FMNIST if dataset is None else dataset, created_at="2026-12-01T10:00:00Z")
    storage.write_text(storage.join(models, model_id, CARD_FILE), card.to_json())
    return model_id


def card(accuracy, model_id="m", dataset=None) -> ModelCard:
    return ModelCard(model_id=model_id, architecture="x", class_names=list("ab"), input_shape=[28, 28, 1],
                     preprocessing={}, embedding_layer="embedding", embedding_dim=4,
                     test_metrics={"accuracy": accuracy}, dataset=FMNIST if dataset is None else dataset)


def test_the_rule_floor_and_tolerance():
    assert not model_gate.decide(card(0.80), None, GATE).passed
    assert "below the floor" in model_gate.decide(card(0.80), None, GATE).reason
    assert model_gate.decide(card(0.936), None, GATE).passed  # the default grid's accuracy
    latest = card(0.936, "old")
    assert model_gate.decide(card(0.932), latest, GATE).passed  # within half a point
    refused = model_gate.decide(card(0.925), latest, GATE)
    assert not refused.passed and "old" in refused.reason and refused.latest_accuracy == 0.936
    # Accuracies on other data do not compare: only the floor applies.
    other = card(0.99, "old", dataset={"name": "image-folder", "sha256": "cd", "test": 500})
    decision = model_gate.decide(card(0.90), other, GATE)
    assert decision.passed and "other data" in decision.reason
    assert not model_gate.decide(card(0.80), other, GATE).passed
    no_metrics = ModelCard(model_id="n", architecture="x", class_names=["a"], input_shape=[1], preprocessing={},
                           embedding_layer="e", embedding_dim=1)
    assert not model_gate.decide(no_metrics, None, GATE).passed


def test_a_model_below_the_floor_is_exported_but_not_published(tmp_path):
    models = str(tmp_path / "models")
    good = make_model(models, "cnn-20261201T100000-aaaa", 0.93)
    published, reason = model_gate.publish_if_passing(models, good, GATE)
    assert published and reason.startswith("published as models/LATEST")
    assert publish.latest_id(models) == good
    bad = make_model(models, "cnn-20261201T110000-bbbb", 0.70)
    published, reason = model_gate.publish_if_passing(models, bad, GATE)
    assert not published and "below the floor 0.8500" in reason
    assert publish.latest_id(models) == good
    assert bad in storage.list_dir(models)  # exported, listed, not LATEST


def test_a_model_within_tolerance_is_published_one_below_is_not(tmp_path):
    models = str(tmp_path / "models")
    first = make_model(models, "cnn-20261201T100000-aaaa", 0.936)
    assert model_gate.publish_if_passing(models, first, GATE)[0]
    close = make_model(models, "cnn-20261201T110000-bbbb", 0.9320)
    published, reason = model_gate.publish_if_passing(models, close, GATE)
    assert published and first in reason and publish.latest_id(models) == close
    worse = make_model(models, "cnn-20261201T120000-cccc", 0.9200)
    published, reason = model_gate.publish_if_passing(models, worse, GATE)
    assert not published and "minus the tolerance" in reason and publish.latest_id(models) == close


def test_publish_refuses_when_latest_changed_since_the_gate_judged(tmp_path):
    models = str(tmp_path / "models")
    a = make_model(models, "cnn-20261201T100000-aaaa", 0.93)
    b = make_model(models, "cnn-20261201T110000-bbbb", 0.95)
    c = make_model(models, "cnn-20261201T120000-cccc", 0.94)
    publish.publish(models, a, manifest_name=CARD_FILE)
    decision = model_gate.check(models, c, GATE)  # judged against a
    publish.publish(models, b, manifest_name=CARD_FILE)  # b arrives meanwhile
    with pytest.raises(publish.StaleArtifactError, match="as when it was checked"):
        publish.publish(models, c, manifest_name=CARD_FILE, expect_latest=decision.latest_id)
    assert publish.latest_id(models) == b


def test_rollback_walks_the_pointer_history_back(tmp_path):
    models = str(tmp_path / "models")
    ids = [make_model(models, f"cnn-20261201T1{i}0000-aaaa", 0.93) for i in range(3)]
    with pytest.raises(publish.NotPublishedError):
        publish.rollback(models, manifest_name=CARD_FILE)
    for i in ids:
        publish.publish(models, i, manifest_name=CARD_FILE)
    publish.publish(models, ids[2], manifest_name=CARD_FILE)  # re-publishing adds no history entry
    assert [p["id"] for p in publish.history(models)] == [ids[1], ids[0]]
    assert publish.rollback(models, manifest_name=CARD_FILE) == (ids[2], ids[1])
    pointer = json.loads(storage.read_text(storage.join(models, publish.LATEST)))
    assert pointer["id"] == ids[1] and pointer["forced"] and pointer["rolled_back_from"] == ids[2]
    assert pointer["created_at"] == publish.id_timestamp(ids[1])
    assert publish.rollback(models, manifest_name=CARD_FILE) == (ids[1], ids[0])
    with pytest.raises(publish.NotPublishedError, match="no earlier"):
        publish.rollback(models, manifest_name=CARD_FILE)
    assert publish.latest_id(models) == ids[0]
    # Moving forward again works as before, and no history file appears in the listing.
    publish.publish(models, ids[2], manifest_name=CARD_FILE)
    assert publish.latest_id(models) == ids[2] and [p["id"] for p in publish.history(models)] == [ids[0]]
    assert sorted(os.listdir(models)) == sorted([publish.LATEST, *ids])


def test_rollback_skips_models_that_were_never_published(tmp_path):
    models = str(tmp_path / "models")
    a = make_model(models, "cnn-20261201T100000-aaaa", 0.93)
    b = make_model(models, "cnn-20261201T110000-bbbb", 0.50)  # newer, fails the gate
    c = make_model(models, "cnn-20261201T120000-cccc", 0.94)
    for m in (a, b, c):
        model_gate.publish_if_passing(models, m, GATE)
    assert publish.latest_id(models) == c
    assert publish.rollback(models, manifest_name=CARD_FILE) == (c, a)


def run_cli(capsys, *argv) -> tuple[int, dict | list]:
    capsys.readouterr()
    rc = cli.main(list(argv))
    return rc, json.loads(capsys.readouterr().out)


def test_cli_promote_refuses_below_the_gate_unless_forced_and_rollback_restores(tmp_path, capsys):
    root = str(tmp_path)
    models = storage.join(root, "models")
    good = make_model(models, "cnn-20261201T100000-aaaa", 0.936)
    weak = make_model(models, "cnn-20261201T110000-bbbb", 0.80)
    rc, out = run_cli(capsys, "models", "promote", good, "--storage", root, "--json")
    assert rc == 0 and out["published"] and out["latest"] == good

    rc, out = run_cli(capsys, "models", "promote", weak, "--storage", root, "--json")
    assert rc == 1 and not out["published"] and "below the floor" in out["reason"] and out["latest"] == good
    # A lower floor from --set lets it past the floor, but not past LATEST minus the tolerance.
    rc, out = run_cli(capsys, "models", "promote", weak, "--storage", root, "--json", "--set", "gate.min_accuracy=0.5")
    assert rc == 1 and "minus the tolerance" in out["reason"]
    rc, out = run_cli(capsys, "models", "promote", weak, "--storage", root, "--json", "--force")
    assert rc == 0 and out["published"] and out["forced"] and out["latest"] == weak

    rc, rows = run_cli(capsys, "models", "list-artifacts", "--storage", root, "--json")
    assert rc == 0 and [r["model_id"] for r in rows] == [good, weak]
    assert [r["latest"] for r in rows] == [False, True] and rows[0]["previously_published"]
    assert rows[0]["test_accuracy"] == 0.936

    rc, out = run_cli(capsys, "models", "rollback", "--storage", root, "--json")
    assert rc == 0 and out == {"from": weak, "to": good, "latest": good}
    assert publish.latest_id(models) == good
    rc, out = run_cli(capsys, "models", "rollback", "--storage", root, "--json")
    assert rc == 1 and "no earlier" in out["error"]

    rc, out = run_cli(capsys, "models", "promote", "no-such-model", "--storage", root, "--json")
    assert rc == 1 and "no exported model" in out["error"]
    # An older model that passes the gate is still refused by the forward-only check.
    old = make_model(models, "cnn-20261130T100000-dddd", 0.95)
    rc, out = run_cli(capsys, "models", "promote", old, "--storage", root, "--json")
    assert rc == 1 and "force=True" in out["reason"] and publish.latest_id(models) == good


def test_gate_config_layers_into_the_grid_config(tmp_path):
    assert load_grid_config(None).gate == model_gate.GateConfig()
    grid = tmp_path / "g.yaml"
    grid.write_text("name: g\ngate:\n  min_accuracy: 0.9\n")
    cfg = load_grid_config(str(grid), ["gate.tolerance=0.01"])
    assert cfg.gate == model_gate.GateConfig(min_accuracy=0.9, tolerance=0.01)
    with pytest.raises(ValueError, match="valid"):
        load_grid_config(None, ["gate.floor=0.9"])


def test_promote_and_rollback_on_s3(s3_bucket):
    models = storage.join(s3_bucket, "models")
    a = make_model(models, "cnn-20261201T100000-aaaa", 0.93)
    b = make_model(models, "cnn-20261201T110000-bbbb", 0.70)
    c = make_model(models, "cnn-20261201T120000-cccc", 0.931)
    assert model_gate.publish_if_passing(models, a, GATE)[0]
    assert not model_gate.publish_if_passing(models, b, GATE)[0]
    assert model_gate.publish_if_passing(models, c, GATE)[0]
    assert publish.rollback(models, manifest_name=CARD_FILE) == (c, a)
    assert publish.latest_id(models) == a
