"""Accuracy against the strength of one photo perturbation at a time (issue 10, item 7).

    vitrine evaluate --model .vitrine/models --robustness [--robustness-images 300] [--compare URI ...]

Each test image starts as a *clean* product photo: the Fashion-MNIST tile drawn by
``artifacts.photo_style.render`` as a dark garment on a white background, RGB, 128×128, upright,
centred, no tint, blur or noise. One perturbation at a time is applied at each level of its axis;
level 0 of every axis is the clean photo itself. The photo is encoded as JPEG (quality 95, except
on the JPEG axis) and goes through ``artifacts.preprocess.preprocess_bytes`` with the model's own
``PreprocessSpec``, exactly as ``/v1/classify`` handles an upload, so a 28×28 grey model and a
128×128 RGB model see the same bytes.

Every axis is a change of one ``PhotoParams`` field of the clean photo (``render`` applies it),
so the perturbations are the photo-style catalogue's own, isolated and pushed past its ranges:

=================  =========================================================================
brightness         added to every pixel after contrast (over-exposure; white stays white)
contrast           1 − s: pixel values pulled towards mid grey
colour tint        channel gains (1 + s, 1, 1 − s): a warm (red-orange) light
rotation           degrees, bicubic, about the centre (the object may be cut at the corners)
scale              object side 0.85 × (1 − s) of the canvas (0.85 → 11 px at s = 0.9)
blur               gaussian radius in px at 128×128 (the tile is upscaled ≈ 3.9×)
noise              gaussian σ per pixel and channel, 0–1 scale
JPEG quality       quality of the one JPEG encoding (4:2:0 chroma subsampling)
background         background luminance 1 − s; the garment is dark on a light background and
                   light on a dark one (the polarity flips between s = 0.4 and 0.6), so the
                   axis goes from the shop's white to Fashion-MNIST's black
=================  =========================================================================
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from artifacts.photo_style import PhotoParams, encode_jpeg, render
from artifacts.preprocess import PreprocessSpec, preprocess_bytes

PHOTO_SIZE = 128
CLEAN_JPEG_QUALITY = 95
REPORT_FILES = ("robustness.json", "robustness.md", "robustness.png")


@dataclass(frozen=True)
class Perturbation:
    name: str
    unit: str  # what a level means, for tables and axis labels
    levels: tuple[float, ...]  # levels[0] is the clean photo


PERTURBATIONS: dict[str, Perturbation] = {p.name: p for p in (
    Perturbation("brightness", "added to pixels (0–1)", (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)),
    Perturbation("contrast", "contrast reduction s (× 1 − s)", (0.0, 0.15, 0.3, 0.45, 0.6, 0.75)),
    Perturbation("colour_tint", "gains (1 + s, 1, 1 − s)", (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)),
    Perturbation("rotation", "degrees", (0.0, 5.0, 10.0, 15.0, 30.0, 45.0)),
    Perturbation("scale", "shrink s (side × 1 − s)", (0.0, 0.25, 0.5, 0.7, 0.8, 0.9)),
    Perturbation("blur", "gaussian radius (px at 128)", (0.0, 0.5, 1.0, 2.0, 3.0, 4.0)),
    Perturbation("noise", "gaussian σ (0–1)", (0.0, 0.02, 0.05, 0.1, 0.15, 0.2)),
    Perturbation("jpeg_quality", "JPEG quality", (95.0, 75.0, 50.0, 30.0, 15.0, 5.0)),
    Perturbation("background", "background darkness s (luminance 1 − s)", (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)),
)}

# A dark garment on white: "negative" shading draws the tile's bright (dense) parts darkest, as
# the source product photos were before Fashion-MNIST inverted them.
_DARK_GARMENT = dict(garment_kind="dark", garment=(0.9, 0.9, 0.9), shading="negative", shading_strength=0.9)
# The same garment on a dark background: light where the tile is bright, i.e. the tile itself.
_LIGHT_GARMENT = dict(garment_kind="light", garment=(0.95, 0.95, 0.95), shading="positive", shading_strength=0.9)


def clean_params(size: int = PHOTO_SIZE, seed: int = 0) -> PhotoParams:
    """The clean product photo: white background, dark garment, upright, centred, nothing else.
    ``seed`` only seeds the noise axis."""
    return PhotoParams(
        size=size, background_kind="white", background=(1.0, 1.0, 1.0), gradient=0.0, gradient_angle=0.0,
        **_DARK_GARMENT, texture="none", texture_amplitude=0.0, stripe_period=8.0, stripe_angle=0.0,
        alpha_threshold=0.3, resample="lanczos", fraction=0.85, angle=0.0, offset=(0.0, 0.0), shadow=0.0,
        shadow_radius=1.5, shadow_shift=(0, 0), gains=(1.0, 1.0, 1.0), brightness=0.0, contrast=1.0,
        gamma=1.0, vignette=0.0, blur=0.0, noise_sigma=0.0, jpeg_quality=CLEAN_JPEG_QUALITY, noise_seed=seed)


def perturbed_params(name: str, level: float, *, size: int = PHOTO_SIZE, seed: int = 0) -> PhotoParams:
    """The clean photo's parameters with one axis set to ``level``."""
    p = clean_params(size, seed)
    if name == "brightness":
        return dataclasses.replace(p, brightness=float(level))
    if name == "contrast":
        return dataclasses.replace(p, contrast=1.0 - float(level))
    if name == "colour_tint":
        return dataclasses.replace(p, gains=(1.0 + level, 1.0, 1.0 - level))
    if name == "rotation":
        return dataclasses.replace(p, angle=float(level))
    if name == "scale":
        return dataclasses.replace(p, fraction=p.fraction * (1.0 - float(level)))
    if name == "blur":
        return dataclasses.replace(p, blur=float(level))
    if name == "noise":
        return dataclasses.replace(p, noise_sigma=float(level))
    if name == "jpeg_quality":
        return dataclasses.replace(p, jpeg_quality=int(level))
    if name == "background":
        grey = 1.0 - float(level)
        garment = _DARK_GARMENT if grey >= 0.5 else _LIGHT_GARMENT
        return dataclasses.replace(p, background=(grey, grey, grey), **garment)
    raise ValueError(f"unknown perturbation {name!r}; valid: {', '.join(PERTURBATIONS)}")


def perturb(tile: np.ndarray, name: str, level: float, *, size: int = PHOTO_SIZE, seed: int = 0) -> bytes:
    """``tile`` (2-D uint8, light on black) as a clean photo with one perturbation: JPEG bytes."""
    params = perturbed_params(name, level, size=size, seed=seed)
    return encode_jpeg(render(tile, params), params.jpeg_quality)


@dataclass
class ModelUnderTest:
    """One model to measure: its id, its preprocessing, probabilities for a batch of inputs, and
    the test labels as indices into its own classes."""

    model_id: str
    spec: PreprocessSpec
    predict: Callable[[np.ndarray], np.ndarray]
    labels: np.ndarray
    architecture: str = ""


def sample(images: np.ndarray, labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Indices of ``n`` test images, about as many of each class (all of them if ``n`` is 0 or
    at least their number)."""
    from .data.fashion_mnist import per_class_subset

    classes = max(1, len(np.unique(labels)))
    if n <= 0 or n >= len(labels):
        return np.arange(len(labels))
    return np.sort(per_class_subset(labels, -(-n // classes), seed=seed)[:n])


def _inputs(tile: np.ndarray, name: str, level: float, size: int, seed: int,
            specs: list[PreprocessSpec]) -> list[np.ndarray]:
    data = perturb(tile, name, level, size=size, seed=seed)
    return [preprocess_bytes(data, spec) for spec in specs]


def measure(models: list[ModelUnderTest], tiles: np.ndarray, *, seed: int = 0, size: int = PHOTO_SIZE,
            perturbations: tuple[str, ...] = tuple(PERTURBATIONS), batch: int = 256) -> dict:
    """Accuracy of every model on ``tiles`` at every level of every axis.

    Each photo is made once and handed to every model, so models compared see the same bytes.
    A level whose photo parameters equal the clean photo's (level 0 of each axis) reuses the
    clean accuracy: ``render`` is deterministic, so those are the same bytes. Returns the
    JSON-ready result that :func:`write_report` takes."""
    started = time.time()
    tiles = np.asarray(tiles)
    for m in models:
        if len(m.labels) != len(tiles):
            raise ValueError(f"model {m.model_id}: {len(m.labels)} labels for {len(tiles)} images")
    specs = [m.spec for m in models]
    clean = clean_params(size)
    cache: dict[str, list[float]] = {}  # "clean" -> accuracy of each model on the clean photos

    def accuracies(name: str, level: float) -> list[float]:
        is_clean = perturbed_params(name, level, size=size) == clean
        if is_clean and "clean" in cache:
            return cache["clean"]
        hits = [0] * len(models)
        for start in range(0, len(tiles), batch):
            # One noise seed per image: the noise differs across images, not across models.
            rows = [_inputs(tiles[i], name, level, size, seed + i, specs)
                    for i in range(start, min(start + batch, len(tiles)))]
            for k, m in enumerate(models):
                predicted = np.asarray(m.predict(np.stack([r[k] for r in rows]))).argmax(axis=1)
                hits[k] += int((predicted == np.asarray(m.labels)[start:start + len(rows)]).sum())
        out = [h / max(len(tiles), 1) for h in hits]
        if is_clean:
            cache["clean"] = out
        return out

    accuracy: list[dict[str, list[float]]] = [{} for _ in models]  # by position: ids may repeat
    for name in perturbations:
        per_level = [accuracies(name, level) for level in PERTURBATIONS[name].levels]
        for k in range(len(models)):
            accuracy[k][name] = [acc[k] for acc in per_level]
    return {
        "images": int(len(tiles)), "seed": int(seed), "photo_size": int(size),
        "clean_jpeg_quality": CLEAN_JPEG_QUALITY,
        "perturbations": {n: {"unit": PERTURBATIONS[n].unit, "levels": list(PERTURBATIONS[n].levels)}
                          for n in perturbations},
        "models": [{"model_id": m.model_id, "architecture": m.architecture, "input_shape": list(m.spec.input_shape),
                    "clean_accuracy": cache["clean"][k] if "clean" in cache else float("nan"),
                    "accuracy": accuracy[k]} for k, m in enumerate(models)],
        "seconds": round(time.time() - started, 2),
    }


def measure_model(model, spec: PreprocessSpec, tiles: np.ndarray, labels: np.ndarray, *, images: int,
                  model_id: str, architecture: str = "", seed: int = 0) -> dict:
    """:func:`measure` for one in-memory Keras model on ``images`` of ``tiles`` (the grid's best
    trial, before it is exported); ``labels`` index the model's own classes."""
    picks = sample(tiles, labels, images, seed)
    under_test = ModelUnderTest(model_id, spec, lambda x: np.asarray(model.predict_on_batch(x)),
                                np.asarray(labels)[picks].astype(int), architecture)
    return measure([under_test], np.asarray(tiles)[picks], seed=seed)


def _level(value: float) -> str:
    return f"{value:g}"


def markdown(result: dict) -> str:
    """One table per model: a row per perturbation, accuracy at each level (level 0 = clean)."""
    perts = result["perturbations"]
    width = max((len(p["levels"]) for p in perts.values()), default=0)
    lines = [f"Robustness: {result['images']} Fashion-MNIST test tiles rendered as clean {result['photo_size']}×"
             f"{result['photo_size']} product photos (dark garment on white, JPEG quality "
             f"{result['clean_jpeg_quality']}), one perturbation at a time; accuracy through the model's own "
             f"preprocessing (`preprocess_bytes`). Level 0 is the clean photo; each cell is *level: accuracy*.", ""]
    for m in result["models"]:
        lines += [f"Model `{m['model_id']}`" + (f" ({m['architecture']}, input {'×'.join(map(str, m['input_shape']))})"
                                                 if m.get("architecture") else "")
                  + f": clean accuracy {100 * m['clean_accuracy']:.1f}%.", "",
                  "| Perturbation | unit | " + " | ".join(f"level {i}" for i in range(width)) + " |",
                  "|:--|:--|" + "--:|" * width]
        for name, p in perts.items():
            cells = [f"{_level(v)}: {100 * a:.1f}%" for v, a in zip(p["levels"], m["accuracy"][name])]
            lines.append(f"| {name} | {p['unit']} | " + " | ".join(cells + ["–"] * (width - len(cells))) + " |")
        lines.append("")
    lines.append(f"Measured in {result['seconds']:.0f} s.")
    return "\n".join(lines) + "\n"


def _plot(path: pathlib.Path, result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    perts = result["perturbations"]
    cols = 3
    rows = max(1, -(-len(perts) // cols))
    fig = Figure(figsize=(4.2 * cols, 3.2 * rows), dpi=100, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (name, p) in zip(axes, perts.items()):
        for i, m in enumerate(result["models"]):
            ax.plot(p["levels"], m["accuracy"][name], marker="o", markersize=3.5, color=f"C{i % 10}",
                    label=m["model_id"])
        if p["levels"] and p["levels"][0] > p["levels"][-1]:
            ax.invert_xaxis()  # stronger to the right on every axis (JPEG quality falls)
        ax.set_title(name)
        ax.set_xlabel(p["unit"], fontsize=8)
        ax.set_ylabel("accuracy")
        ax.set_ylim(0.0, 1.0)
        ax.grid(alpha=0.3)
    for ax in axes[len(perts):]:
        ax.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(3, len(labels)), fontsize=8, frameon=False)
    fig.suptitle(f"Accuracy against perturbation strength ({result['images']} test images)")
    fig.savefig(path)


def write_report(result: dict, out_dir) -> dict[str, pathlib.Path]:
    """Write robustness.json, robustness.md and robustness.png into the local ``out_dir``;
    returns their paths by kind (``json``, ``md``, ``png``)."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name.split(".")[1]: out / name for name in REPORT_FILES}
    paths["json"].write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    md = markdown(result)
    paths["md"].write_text(md + "\n![accuracy against perturbation strength](robustness.png)\n", encoding="utf-8")
    _plot(paths["png"], result)
    return paths
