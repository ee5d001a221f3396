"""The grid report's heatmap panel (tune/explain_report.py), from a small trained model."""

import numpy as np
import pytest
from PIL import Image

from artifacts import model_artifact
from tune.data import fashion_mnist
from tune.explain_report import PANEL_FILE, explanation_panel, write_panel
from tune.report import write_report


@pytest.fixture(scope="module")
def panel(trained_models, tiny_fashion_mnist):
    loaded = model_artifact.load(trained_models["softmax"])
    ds = fashion_mnist.load(str(tiny_fashion_mnist))
    return explanation_panel(loaded.model, loaded.card.preprocess_spec, ds.test_images, ds.test_labels,
                             list(fashion_mnist.CLASS_NAMES), per_row=4)


def test_the_panel_holds_right_and_wrong_predictions_with_their_heatmaps(panel):
    # The tiny model gets most of the 200 test tiles right and some wrong.
    assert len(panel.right) == 4 and 1 <= len(panel.wrong) <= 4
    assert all(panel.true[i] == panel.predicted[i] for i in panel.right)
    assert all(panel.true[i] != panel.predicted[i] for i in panel.wrong)
    wrong_p = [panel.probabilities[i] for i in panel.wrong]
    assert wrong_p == sorted(wrong_p, reverse=True)  # the most confident mistakes first
    assert panel.method == "gradcam" and panel.layer == "conv2"
    for img, heat in zip(panel.images, panel.heatmaps):
        assert img.shape == heat.shape == (28, 28) and img.dtype == np.uint8
        assert 0 <= heat.min() and heat.max() <= 1
    assert len({h.tobytes() for h in panel.heatmaps}) == len(panel.heatmaps)  # each image its own map


def test_the_report_shows_the_panel(panel, tmp_path):
    path = write_report(tmp_path, title="Grid", leaderboard=[{"trial_id": "t1", "val_accuracy": 0.9}],
                        histories={}, test_metrics=None, best_trial_id="t1", explanations=panel)
    md = path.read_text()
    assert f"![heatmaps of test images]({PANEL_FILE})" in md and "### Why these classes" in md
    assert "Grad-CAM on conv2" in md and f"{len(panel.wrong)} wrong" in md
    with Image.open(tmp_path / PANEL_FILE) as im:
        assert im.format == "PNG" and im.width > 300 and im.height > 200
    # Without a panel, nothing is drawn or linked.
    bare = tmp_path / "bare"
    md = write_report(bare, title="Grid", leaderboard=[], histories={}, test_metrics=None,
                      best_trial_id=None).read_text()
    assert PANEL_FILE not in md and not (bare / PANEL_FILE).exists()
    assert write_panel(None, tmp_path) == []
