"""Which canonical-input step buys what: top-1 of trained 28×28 models on Fashion-MNIST test tiles
and on photo-style renders of test tiles, for each cumulative preprocessing variant.

    TF_CPP_MIN_LOG_LEVEL=2 .venv/bin/python benchmarks/preprocess_ablation.py \\
        --train old --train canonical [--epochs 5] [--photos 2000] [--seed 0] [--workdir DIR]
    ... --model NAME=/path/best.keras     # measure an already trained 28x28 model instead
    ... --markdown docs/RESULTS.md        # replace the table between the ablation markers there

``--train old`` / ``--train canonical`` train a quick vitrine_cnn with ``tune.training.train``
(Adam 1e-3 cosine, batch 128, ``--epochs``, no early stop, seed 0, all training tiles, the
default threads) on the old (``PreprocessSpec()``) or the canonical pipeline, into
``--workdir``/NAME (kept: a second run with the same workdir reuses them).

The variants are PreprocessSpec switches (artifacts/preprocess.py), each adding one step to the
one before: ``old`` (invert a light border, the pre-canonical pipeline), ``+background`` (border
median as background; the model sees the distance from it, which has no polarity), ``+crop``
(object box with a margin, stretched to the input), ``+pad`` (padded to a square instead),
``+stretch`` (maximum of the resized map = 1.0), ``+gradient`` (a plane through the sides'
medians where it fits the border better), ``+deskew`` (the object turned upright:
``PreprocessSpec.canonical()``), and one alternative,
``stretch p99`` (the 99th percentile = 1.0 instead of the maximum).

Photos: ``--photos`` test tiles drawn with ``--seed`` (a seeded permutation of the test split),
each rendered by ``artifacts.photo_style.photo_jpeg`` with one ``numpy.random.default_rng(seed)``
in that order, and read back through ``preprocess_bytes`` (the service's path: JPEG draft decode,
then the spec). Simple photos: the same tiles through this script's own ``simple_photo`` recipe
(seed + 1), a second renderer, so that no step is judged on one recipe alone (acceptance uses
a third that is not in this repository). The models are not retrained per variant; a model trained on one pipeline is
measured on all of them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from artifacts.preprocess import PreprocessSpec, arrays_to_model_input, preprocess_bytes  # noqa: E402

BEGIN, END = "<!-- preprocess_ablation:begin -->", "<!-- preprocess_ablation:end -->"

_MAP = dict(foreground_map=True)
VARIANTS: list[tuple[str, PreprocessSpec]] = [
    ("old (invert a light border)", PreprocessSpec()),
    ("+ background from border median, polarity-free map", PreprocessSpec(**_MAP)),
    ("+ crop to the object (stretched to 28×28)", PreprocessSpec(**_MAP, crop=True)),
    ("+ pad to a square", PreprocessSpec(**_MAP, crop=True, pad_square=True)),
    ("+ contrast stretch (max = 1)", PreprocessSpec(**_MAP, crop=True, pad_square=True, stretch_percentile=100.0)),
    ("+ gradient background", PreprocessSpec.canonical(deskew=False)),
    ("+ deskew = canonical()", PreprocessSpec.canonical()),
    ("canonical, stretch p99 = 1 instead of max", PreprocessSpec.canonical(stretch_percentile=99.0)),
]


def photo_set(test_x: np.ndarray, test_y: np.ndarray, n: int, seed: int) -> tuple[list[bytes], np.ndarray]:
    from artifacts.photo_style import photo_jpeg

    pick = np.random.default_rng(seed).permutation(len(test_y))[:n]
    rng = np.random.default_rng(seed)
    return [photo_jpeg(test_x[i], rng) for i in pick], test_y[pick]


PIPELINES = {"old": PreprocessSpec(), "canonical": PreprocessSpec.canonical()}


def train_quick(pipeline: str, workdir: Path, *, epochs: int, data: str | None) -> Path:
    """A quick vitrine_cnn on ``pipeline``'s inputs; returns its best checkpoint."""
    from tune.training import BEST, TrainConfig, prepare_data, train

    best = workdir / pipeline / BEST
    if best.exists():
        return best
    cfg = TrainConfig(epochs=epochs, early_stopping_patience=0, seed=0)
    splits = prepare_data(cfg, data or os.environ.get("FASHION_MNIST_DIR"))
    train(cfg, splits, workdir=workdir / pipeline, resume=False, spec=PIPELINES[pipeline])
    return best


def simple_photo(tile: np.ndarray, rng: np.random.Generator, size: int = 128) -> bytes:
    """A second, simpler photo recipe, independent of artifacts/photo_style.py, so that no
    threshold is judged on one renderer alone: the tile as the alpha of a contrasting garment
    colour (its texture kept, not inverted) on a white, light, coloured or dark background, at
    50-95% of the frame anywhere in it, rotated up to ±10°, half with a ±20% linear gradient,
    a per-channel tint of ±15%, gaussian noise up to 8/255 and JPEG quality 60-95."""
    import colorsys
    import io

    from PIL import Image

    kind = rng.choice(["white", "light", "colour", "dark"])
    if kind == "white":
        bg = np.full(3, rng.uniform(0.95, 1.0))
    elif kind == "light":
        bg = np.full(3, rng.uniform(0.75, 0.95))
    elif kind == "colour":
        bg = np.array(colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.3, 0.9), rng.uniform(0.4, 1.0)))
    else:
        bg = np.full(3, rng.uniform(0.0, 0.2))
    light_bg = bg.mean() > 0.5
    value = rng.uniform(0.0, 0.4) if light_bg else rng.uniform(0.7, 1.0)
    garment = np.array(colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.0, 0.8), value))
    side = int(size * rng.uniform(0.5, 0.95))
    a = Image.fromarray(tile).resize((side, side), Image.Resampling.BICUBIC).rotate(
        rng.uniform(-10, 10), resample=Image.Resampling.BICUBIC, expand=True)
    alpha = np.zeros((size, size), np.float32)
    ah, aw = a.size[1], a.size[0]
    y0, x0 = rng.integers(0, max(1, size - ah + 1)), rng.integers(0, max(1, size - aw + 1))
    alpha[y0:y0 + ah, x0:x0 + aw] = (np.asarray(a, np.float32) / 255.0)[:size - y0, :size - x0]
    canvas = np.empty((size, size, 3), np.float32)
    canvas[:] = bg
    if rng.random() < 0.5:
        angle = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:size, 0:size] / (size - 1) - 0.5
        canvas *= (1 + rng.uniform(-0.2, 0.2) * (np.cos(angle) * xx + np.sin(angle) * yy) * 2)[..., None]
    canvas = canvas * (1 - alpha[..., None]) + garment * alpha[..., None]
    canvas *= rng.uniform(0.85, 1.15, 3)
    canvas += rng.normal(0, rng.uniform(0, 8 / 255), canvas.shape)
    img = Image.fromarray(np.clip(np.rint(canvas * 255), 0, 255).astype(np.uint8), "RGB")
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=int(rng.integers(60, 96)))
    return buf.getvalue()


def simple_set(test_x: np.ndarray, test_y: np.ndarray, n: int, seed: int) -> tuple[list[bytes], np.ndarray]:
    pick = np.random.default_rng(seed).permutation(len(test_y))[:n]
    rng = np.random.default_rng(seed + 1)
    return [simple_photo(test_x[i], rng) for i in pick], test_y[pick]


def accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    return float((model.predict(x, batch_size=512, verbose=0).argmax(axis=1) == y).mean())


def run(models: dict[str, str], *, photos: int = 2000, seed: int = 0, data: str | None = None) -> dict:
    import keras

    from tune.data import fashion_mnist

    ds = fashion_mnist.load(data or os.environ.get("FASHION_MNIST_DIR"))
    started = time.time()
    jpegs, photo_y = photo_set(ds.test_images, ds.test_labels, photos, seed)
    simple, simple_y = simple_set(ds.test_images, ds.test_labels, photos, seed)
    render_s = time.time() - started
    loaded = {name: keras.models.load_model(path, compile=False) for name, path in models.items()}
    old_tiles = arrays_to_model_input(ds.test_images, PreprocessSpec())
    rows = []
    for label, spec in VARIANTS:
        t0 = time.time()
        tiles = arrays_to_model_input(ds.test_images, spec)
        tiles_s = time.time() - t0
        t0 = time.time()
        photo_x = np.stack([preprocess_bytes(b, spec) for b in jpegs])
        simple_x = np.stack([preprocess_bytes(b, spec) for b in simple])
        photo_s = time.time() - t0
        row = {"variant": label, "spec": spec.to_dict(),
               "tiles_mean_abs_diff_vs_old": float(np.abs(tiles - old_tiles).mean()),
               "tiles_seconds": round(tiles_s, 3), "photo_ms_per_image": round(1000 * photo_s / max(1, photos), 3)}
        for name, model in loaded.items():
            row[f"{name}_tiles"] = accuracy(model, tiles, ds.test_labels)
            row[f"{name}_photos"] = accuracy(model, photo_x, photo_y)
            row[f"{name}_simple"] = accuracy(model, simple_x, simple_y)
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "spec"}), flush=True)
    return {"models": models, "photos": photos, "seed": seed, "test_tiles": int(len(ds.test_labels)),
            "render_seconds": round(render_s, 1), "rows": rows}


def markdown(result: dict, command: str) -> str:
    names = list(result["models"])
    head = ("| Preprocessing | " + " | ".join(f"{n}: tiles | {n}: photos | {n}: simple photos" for n in names)
            + " | tiles Δ vs old |")
    lines = [f"{BEGIN}", f"Command: `{command}`", "",
             head, "|:--|" + "--:|--:|--:|" * len(names) + "--:|"]
    for r in result["rows"]:
        cells = " | ".join(f"{100 * r[f'{n}_tiles']:.2f}% | {100 * r[f'{n}_photos']:.2f}% | "
                           f"{100 * r[f'{n}_simple']:.2f}%" for n in names)
        lines.append(f"| {r['variant']} | {cells} | {r['tiles_mean_abs_diff_vs_old']:.5f} |")
    lines += ["", f"Tiles: the {result['test_tiles']:,} test tiles; photos: {result['photos']:,} test tiles "
              f"rendered by `photo_jpeg` (seed {result['seed']}); simple photos: the same tiles by this script's "
              "own `simple_photo` recipe (seed + 1). \"tiles Δ vs old\" is the mean absolute "
              "difference of the tile inputs from the old pipeline's (inputs in [0, 1]).", END]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", action="append", default=[], help="NAME=PATH to a .keras model (repeatable)")
    p.add_argument("--train", action="append", default=[], choices=sorted(PIPELINES),
                   help="train a quick model on this pipeline first (repeatable)")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--workdir", default=".vitrine/ablation", help="where --train keeps its models")
    p.add_argument("--photos", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default=None, help="Fashion-MNIST directory (default $FASHION_MNIST_DIR)")
    p.add_argument("--json", default=None, help="write the full result here")
    p.add_argument("--markdown", default=None, help="replace the table between the ablation markers in this file")
    args = p.parse_args(argv)
    models = {name: str(train_quick(name, Path(args.workdir), epochs=args.epochs, data=args.data))
              for name in args.train}
    models.update(m.split("=", 1) for m in args.model)
    if not models:
        p.error("nothing to measure: give --train and/or --model")
    result = run(models, photos=args.photos, seed=args.seed, data=args.data)
    table = markdown(result, "TF_CPP_MIN_LOG_LEVEL=2 .venv/bin/python benchmarks/preprocess_ablation.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    if args.markdown:
        path = Path(args.markdown)
        text = path.read_text()
        if BEGIN in text and END in text:
            text = text[:text.index(BEGIN)] + table + text[text.index(END) + len(END):]
        else:
            text = text.rstrip("\n") + "\n\n" + table + "\n"
        path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
