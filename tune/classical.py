"""Classical (scikit-learn) baselines on the split every trial uses: the Fashion-MNIST papers set
their CNNs against these, so the comparison (``vitrine compare``) has them measured here too.

Each model sees the same input as the CNNs (the canonical 28×28 map in [0, 1], flattened), trains
on the grid's training split (the IDX train file less its seeded validation share) and is scored
on the test split with :func:`tune.metrics.classification_metrics`. scikit-learn is the
``research`` extra: ``pip install -e '.[research]'``.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from .metrics import classification_metrics

log = logging.getLogger("vitrine.baselines")
RESULT_FILE, TABLE_FILE = "baselines.json", "baselines.md"  # what `vitrine baselines` writes

# name -> (what it is, in the table; builder(seed, n_jobs)). Settings are scikit-learn's usual
# ones for 784 pixel features, fixed here rather than tuned: these are reference points, not
# contenders, and tuning them on the test split would flatter them.
MODELS = {
    "logistic_regression": "logistic regression (multinomial, L2, C=1, lbfgs, 200 iterations)",
    "knn": "k-nearest neighbours (k=5, Euclidean, uniform weights)",
    "random_forest": "random forest (100 trees, unlimited depth, sqrt features)",
    "svc": "SVC (RBF kernel, C=10, gamma=scale)",
}


def build(name: str, seed: int = 0, n_jobs: int = 1):
    """A fresh scikit-learn estimator for ``name`` (one of :data:`MODELS`)."""
    try:
        from sklearn.ensemble import RandomForestClassifier
        from sklearn.linear_model import LogisticRegression
        from sklearn.neighbors import KNeighborsClassifier
        from sklearn.svm import SVC
    except ImportError as exc:  # an optional extra: say which
        raise ImportError("the classical baselines need scikit-learn: pip install -e '.[research]'") from exc
    if name == "logistic_regression":
        return LogisticRegression(C=1.0, max_iter=200, random_state=seed)
    if name == "knn":
        return KNeighborsClassifier(n_neighbors=5, n_jobs=n_jobs)
    if name == "random_forest":
        return RandomForestClassifier(n_estimators=100, n_jobs=n_jobs, random_state=seed)
    if name == "svc":
        return SVC(kernel="rbf", C=10.0, gamma="scale", random_state=seed)
    raise ValueError(f"unknown baseline {name!r}; valid: {', '.join(MODELS)}")


def features(images: np.ndarray, spec) -> np.ndarray:
    """The CNNs' model input of uint8 ``images``, one flat float32 row per image."""
    from artifacts.preprocess import arrays_to_model_input

    x = arrays_to_model_input(images, spec)
    return np.asarray(x, np.float32).reshape(len(images), -1)


def fit_and_score(name: str, train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                  class_names: list[str], *, seed: int = 0, n_jobs: int = 1) -> dict:
    """Train baseline ``name`` on the feature rows ``train_x`` and measure it on ``test_x``."""
    import warnings

    model = build(name, seed, n_jobs)
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(train_x, train_y)
    fit_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    predicted = model.predict(test_x)
    predict_s = time.perf_counter() - t1
    # A solver that stopped at its iteration cap says so; the table keeps that next to its score.
    notes = sorted({type(w.message).__name__ for w in caught if "Convergence" in type(w.message).__name__})
    metrics = classification_metrics(np.asarray(test_y, int), np.asarray(predicted, int), class_names)
    log.info("%s: %d training images, test accuracy %.4f (fit %.1f s, predict %.1f s)", name, len(train_y),
             metrics["accuracy"], fit_s, predict_s)
    return {"model": name, "description": MODELS[name], "train_images": int(len(train_y)),
            "test_images": int(len(test_y)), "fit_seconds": round(fit_s, 2), "predict_seconds": round(predict_s, 2),
            "warnings": notes, "metrics": metrics}


def markdown(result: dict) -> str:
    """The baselines' table (a :func:`jobs.fit_baselines.run` result) as Markdown."""
    lines = ["| Classical baseline | Training images | Test acc | Macro F1 | Cohen's kappa | Informedness "
             "| Fit time | Predict time |",
             "|:--|--:|--:|--:|--:|--:|--:|--:|"]
    for r in result["rows"]:
        m = r["metrics"]
        note = " (stopped at its iteration cap)" if r.get("warnings") else ""
        lines.append(f"| {r['description']}{note} | {r['train_images']:,} | {100 * m['accuracy']:.2f}% "
                     f"| {100 * m['macro_f1']:.2f}% | {m['cohen_kappa']:.4f} | {m['informedness']:.4f} "
                     f"| {r['fit_seconds']:.1f} s | {r['predict_seconds']:.1f} s |")
    load = result.get("load_average") or {}
    lines += ["", f"Training split: {result['train_images']:,} images ({result['data']['source']}, seed "
              f"{result['seed']}, validation share {result['validation_fraction']:g} held out, as in the grids); "
              f"test split: {result['test_images']:,} images. Wall time {result['wall_seconds']:.0f} s"
              + (f"; load average {load['start']:.2f} at the start, {load['end']:.2f} at the end" if load else "")
              + f"; scikit-learn {result['sklearn']}, n_jobs {result['n_jobs']}."]
    subsets = {r["model"]: r["train_images"] for r in result["rows"] if r["train_images"] < result["train_images"]}
    if subsets:
        lines.append("Trained on a seeded per-class subset of the training split (to fit 2 CPU cores): "
                     + ", ".join(f"{k} {v:,} images" for k, v in subsets.items()) + ".")
    return "\n".join(lines) + "\n"


def read_result(uri: str) -> dict:
    """A finished ``vitrine baselines`` result: its directory or its ``baselines.json``."""
    import json

    from artifacts import storage

    path = uri if uri.endswith(".json") else storage.join(uri, RESULT_FILE)
    if not storage.exists(path):
        raise FileNotFoundError(f"no baselines result at {uri} (expected {RESULT_FILE}, written by vitrine baselines)")
    return json.loads(storage.read_text(path))
