"""Training that sees photos: the same CNN trained with and without photo augmentation and with
each head, every variant measured on tiles and on product photos it never saw.

    python -m benchmarks.photo_training --variants "softmax, tiles only" --variants "softmax + photos" \\
        --epochs 12 --photos 2000

Every variant trains ``vitrine_cnn`` (Adam 1e-3, cosine schedule, batch 128, seed 0, the canonical
input) through ``tune.training.train``, the grid's own trial function, on all 54,000 training
tiles (``--per-class`` for a subset), then is measured by ``benchmarks.photo_accuracy.measure``:
top-1 on the test tiles, on ``photo_style`` photos of test tiles (seed ``--seed``, never a training
image) and on a second recipe training never uses; ``category=all`` retrieval against the
60,000-tile catalogue. Prints a Markdown table and writes it with the numbers as JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PHOTOS = {"enabled": True, "photo_probability": 0.5, "photo_variants": 2}
GEOMETRY = {"flip_horizontal": True, "flip_vertical": True, "shear": 0.2, "zoom": 0.2, "geometric_probability": 0.3}
COSFACE = {"head": "cosine", "head_margin": 0.15, "head_scale": 24.0}
# A lighter mix: a quarter of the items as photos, the geometric layers on 15% of each batch.
PHOTOS_LIGHT = {**PHOTOS, "photo_probability": 0.25}
GEOMETRY_LIGHT = {**GEOMETRY, "geometric_probability": 0.15}

VARIANTS = {  # name -> (vitrine_cnn options, augmentation)
    "softmax, tiles only": ({"head": "softmax"}, {}),
    "softmax + photos": ({"head": "softmax"}, PHOTOS),
    "softmax + photos + flips/shear/zoom": ({"head": "softmax"}, {**PHOTOS, **GEOMETRY}),
    "CosFace 0.15 + photos": (COSFACE, PHOTOS),
    "CosFace 0.15 + photos + flips/shear/zoom": (COSFACE, {**PHOTOS, **GEOMETRY}),
    "CosFace 0.2 + photos": ({"head": "cosine", "head_margin": 0.2}, PHOTOS),
    "softmax + light photos + light geometry": ({"head": "softmax"}, {**PHOTOS_LIGHT, **GEOMETRY_LIGHT}),
    "CosFace 0.15 + light photos + light geometry": (COSFACE, {**PHOTOS_LIGHT, **GEOMETRY_LIGHT}),
    "CosFace 0.15, tiles only": (COSFACE, {}),
}


def keras_forward(model):
    """A trained Keras model as a ``Forward``: unit-length penultimate embeddings and probabilities."""
    import keras

    from tune.models import EMBEDDING_LAYER

    both = keras.Model(model.input, [model.get_layer(EMBEDDING_LAYER).output, model.output])

    def forward(x):
        e, p = (np.asarray(t) for t in both.predict_on_batch(x))
        norms = np.linalg.norm(e, axis=1, keepdims=True)
        return (e / np.where(norms == 0, 1.0, norms)).astype(np.float32), p

    return forward


def run_variant(name: str, args, workdir: Path, ds, photos) -> dict:
    import keras

    from artifacts import heads
    from benchmarks.photo_accuracy import measure
    from tune.data.augment import AugmentConfig
    from tune.training import TrainConfig, prepare_data, preprocess_spec_for, train

    options, augment = VARIANTS[name]
    config = TrainConfig(architecture="vitrine_cnn", optimizer="adam", learning_rate=0.001, epochs=args.epochs,
                         batch_size=128, max_per_class=args.per_class, early_stopping_patience=0,
                         lr_schedule="cosine", model_options=options, seed=0, augmentation=AugmentConfig(**augment),
                         threads=args.threads)
    data = prepare_data(config, args.data)
    t0 = time.time()
    outcome = train(config, data, workdir=workdir / str(abs(hash(name))), resume=False)
    seconds = time.time() - t0
    model = keras.models.load_model(outcome.best_model_path, compile=False, custom_objects=heads.CUSTOM_OBJECTS)
    row = measure(keras_forward(model), preprocess_spec_for(model), test=(ds.test_images, ds.test_labels),
                  catalogue=(ds.train_images, ds.train_labels), photos=photos)
    return {"name": name, **row, "train_seconds": round(seconds, 1), "best_epoch": outcome.best_epoch,
            "options": options, "augmentation": augment}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variants", action="append", choices=sorted(VARIANTS), help="repeat; default all")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--per-class", type=int, default=0, help="training tiles per class; 0 = all")
    ap.add_argument("--photos", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=0, help="TensorFlow threads; 0 = all cores")
    ap.add_argument("--data", default=os.environ.get("FASHION_MNIST_DIR"))
    ap.add_argument("--out", default="", help="write <out>.md and <out>.json")
    args = ap.parse_args(argv)
    from artifacts.logs import setup_logging
    from benchmarks.photo_accuracy import markdown, photo_sets
    from tune.data import fashion_mnist

    setup_logging()
    ds = fashion_mnist.load(args.data)
    photos = photo_sets(ds.test_images, ds.test_labels, args.photos, args.seed)
    rows = []
    with tempfile.TemporaryDirectory(prefix="vitrine-photo-training-") as work:
        for name in args.variants or list(VARIANTS):
            rows.append(run_variant(name, args, Path(work), ds, photos))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
            if args.out:  # after every variant, so a long run that dies keeps what it measured
                Path(args.out + ".json").write_text(json.dumps({"rows": rows, "args": vars(args)}, indent=2))
    command = "python -m benchmarks.photo_training " + " ".join(argv if argv is not None else sys.argv[1:])
    table = markdown(rows, command)
    print(table)
    if args.out:
        Path(args.out + ".md").write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
