"""Which training objective makes embeddings that rank across categories: the softmax head
against the cosine head without and with the CosFace margin, same CNN, same data, same budget.

    python -m benchmarks.embedding_objective --per-class 2000 --epochs 6 --queries 2000

Per variant: test accuracy on the Fashion-MNIST test tiles, and category=all retrieval (test
queries against the training images as the catalogue, same class relevant, exact search over
L2-normalised penultimate embeddings): mAP over the full ranking and precision@10. Prints a
Markdown table (for docs/RESULTS.md) and writes it with the raw numbers as JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

VARIANTS = {  # name -> vitrine_cnn options
    "softmax": {"head": "softmax"},
    "cosine, no margin": {"head": "cosine", "head_margin": 0.0},
    "cosine + margin 0.2 (CosFace)": {"head": "cosine", "head_margin": 0.2},
    "cosine + margin 0.1 (CosFace)": {"head": "cosine", "head_margin": 0.1},
}


def embed(model, x: np.ndarray, batch: int = 1024) -> np.ndarray:
    import keras

    from tune.models import EMBEDDING_LAYER

    sub = keras.Model(model.input, model.get_layer(EMBEDDING_LAYER).output)
    e = np.concatenate([sub.predict_on_batch(x[i:i + batch]) for i in range(0, len(x), batch)])
    norms = np.linalg.norm(e, axis=1, keepdims=True)
    return (e / np.where(norms == 0, 1.0, norms)).astype(np.float32)


def measure(name: str, options: dict, args, workdir: Path) -> dict:
    from artifacts.preprocess import arrays_to_model_input
    from jobs.evaluate_search import exact_metrics
    from tune.training import TrainConfig, prepare_data, preprocess_spec_for, train

    config = TrainConfig(architecture="vitrine_cnn", optimizer="adam", learning_rate=0.001, epochs=args.epochs,
                         batch_size=128, max_per_class=args.per_class, early_stopping_patience=0,
                         lr_schedule="cosine", model_options=options, seed=args.seed)
    data = prepare_data(config, args.data)
    t0 = time.time()
    outcome = train(config, data, workdir=workdir / name.replace(" ", "_").replace(",", ""), resume=False)
    import keras

    from artifacts import heads

    model = keras.models.load_model(outcome.best_model_path, compile=False, custom_objects=heads.CUSTOM_OBJECTS)
    spec = preprocess_spec_for(model)
    test_x = arrays_to_model_input(data.test_x, spec)
    probs = np.concatenate([model.predict_on_batch(test_x[i:i + 1024]) for i in range(0, len(test_x), 1024)])
    accuracy = float((probs.argmax(axis=1) == data.test_y).mean())
    gallery = embed(model, arrays_to_model_input(data.train_x, spec))
    q = min(args.queries, len(test_x))
    queries = embed(model, test_x[:q])
    out = exact_metrics(queries, data.test_y[:q], probs[:q].argmax(axis=1), gallery, np.asarray(data.train_y))
    return {"variant": name, "options": options, "test_accuracy": accuracy, "map_all": float(np.nanmean(out["ap"])),
            "p10_all": float(np.nanmean(out["p_at_k"])), "map_filtered": float(np.nanmean(out["ap_filtered"])),
            "train_images": len(data.train_y), "queries": q, "epochs_run": outcome.epochs_run,
            "seconds": round(time.time() - t0, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="Fashion-MNIST directory (default: $FASHION_MNIST_DIR)")
    parser.add_argument("--per-class", type=int, default=2000, help="training images per class (0 = all)")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--queries", type=int, default=2000, help="test images used as queries")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", default=".vitrine/benchmarks/embedding_objective.json")
    parser.add_argument("--workdir", default=".vitrine/benchmarks/embedding_objective")
    args = parser.parse_args(argv)
    rows = [measure(name, VARIANTS[name], args, Path(args.workdir)) for name in args.variants]
    table = ["| objective | test accuracy | mAP, category=all | P@10, category=all | mAP, classify-then-filter | train s |",
             "|---|---|---|---|---|---|"]
    table += [f"| {r['variant']} | {r['test_accuracy']:.4f} | {r['map_all']:.4f} | {r['p10_all']:.4f} | "
              f"{r['map_filtered']:.4f} | {r['seconds']:.0f} |" for r in rows]
    print("\n".join(table))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"argv": sys.argv[1:], "rows": rows, "table": table}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
