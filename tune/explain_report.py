"""The grid report's panel of heatmaps: test images of the best trial's model with the Grad-CAM of
what it predicted, right predictions in one row and wrong ones in the other (tune/report.py links
the figure; tune/grid.py makes the panel while it holds the model and the test split).

The heatmaps are artifacts/explain.py's, the inputs the one preprocessing function's, so the panel
shows what ``vitrine explain`` and ``POST /v1/explain`` would show for the same images.
"""

from __future__ import annotations

import pathlib
from dataclasses import dataclass

import numpy as np

PANEL_FILE = "explanations.png"
CANDIDATES = 256  # test images explained to find right and wrong ones
_BATCH = 64


@dataclass
class ExplanationPanel:
    """Explained test images: ``images`` what the model saw (uint8), ``heatmaps`` in [0, 1]."""

    images: list[np.ndarray]
    heatmaps: list[np.ndarray]
    true: list[str]
    predicted: list[str]
    probabilities: list[float]
    method: str
    layer: str

    @property
    def right(self) -> list[int]:
        return [i for i, (t, p) in enumerate(zip(self.true, self.predicted)) if t == p]

    @property
    def wrong(self) -> list[int]:
        return [i for i, (t, p) in enumerate(zip(self.true, self.predicted)) if t != p]


def explanation_panel(model, spec, images: np.ndarray, labels: np.ndarray, class_names: list[str], *,
                      per_row: int = 6, seed: int = 0) -> ExplanationPanel | None:
    """Up to ``per_row`` right and ``per_row`` wrong predictions among CANDIDATES test images
    drawn at random (``seed``): the right ones as drawn, the wrong ones most confident first
    (the mistakes worth looking at). Grad-CAM, or saliency for a model without a convolution;
    None without images."""
    from artifacts.explain import Explainer, input_image
    from artifacts.preprocess import arrays_to_model_input

    if per_row <= 0 or len(images) == 0:
        return None
    explainer = Explainer(model)
    method = "gradcam" if explainer.layer else "saliency"
    picks = np.random.default_rng(seed).permutation(len(images))[:CANDIDATES]
    x = arrays_to_model_input(np.asarray(images)[picks], spec)
    out = [e for start in range(0, len(x), _BATCH) for e in explainer.explain(x[start:start + _BATCH], method)]
    y = np.asarray(labels).astype(int)[picks]
    right = [i for i, e in enumerate(out) if e.class_index == y[i]][:per_row]
    wrong = sorted((i for i, e in enumerate(out) if e.class_index != y[i]), key=lambda i: -out[i].probability)[:per_row]
    chosen = right + wrong
    return ExplanationPanel(images=[input_image(x[i], spec.scale) for i in chosen],
                            heatmaps=[out[i].heatmap for i in chosen], true=[class_names[y[i]] for i in chosen],
                            predicted=[class_names[out[i].class_index] for i in chosen],
                            probabilities=[out[i].probability for i in chosen], method=method,
                            layer=out[0].layer if out else "")


def _draw(path: pathlib.Path, panel: ExplanationPanel) -> None:
    from artifacts.explain import overlay

    from .report_figures import new_figure

    rows = [("right", panel.right), ("wrong", panel.wrong)]
    rows = [(name, idx) for name, idx in rows if idx]
    cols = max(len(idx) for _, idx in rows)
    fig = new_figure((1.6 * cols, 2.0 * len(rows) + 0.3))
    axes = np.atleast_2d(fig.subplots(len(rows), cols, squeeze=False))
    for r, (name, idx) in enumerate(rows):
        for c in range(cols):
            ax = axes[r, c]
            ax.set_axis_off()
            if c >= len(idx):
                continue
            i = idx[c]
            ax.imshow(overlay(panel.images[i], panel.heatmaps[i]), interpolation="nearest")
            colour = "#1a7f37" if name == "right" else "#c62828"
            ax.set_title(f"{panel.predicted[i]} {panel.probabilities[i]:.0%}\ntrue: {panel.true[i]}",
                         fontsize=7, color=colour)
    fig.suptitle(f"{panel.method} ({panel.layer}): top row right, bottom row wrong" if len(rows) == 2
                 else f"{panel.method} ({panel.layer}): all {rows[0][0]}", fontsize=8)
    fig.savefig(path)


def write_panel(panel: ExplanationPanel | None, out_dir) -> list[str]:
    """Draw the panel into ``out_dir``/PANEL_FILE; the report's Markdown lines for it."""
    if panel is None or not (panel.right or panel.wrong):
        return []
    _draw(pathlib.Path(out_dir) / PANEL_FILE, panel)
    what = "Grad-CAM on " + panel.layer if panel.method == "gradcam" else "gradient saliency"
    return ["### Why these classes", "", f"![heatmaps of test images]({PANEL_FILE})", "",
            f"Test images as the best trial's model saw them, with the heatmap ({what}) of the class it "
            f"predicted: {len(panel.right)} right, {len(panel.wrong)} wrong (the most confident mistakes "
            "first). Red areas are where the evidence for that class lies.", ""]
