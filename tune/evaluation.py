"""Test-split evaluation of a model, in memory or as a published artifact."""

from __future__ import annotations

import numpy as np

from artifacts.preprocess import PreprocessSpec, arrays_to_model_input

from .data.splits import load_splits
from .metrics import classification_metrics
from .training import predict_proba


def evaluate(model, spec: PreprocessSpec, images: np.ndarray, labels: np.ndarray, class_names: list[str]) -> dict:
    """Metrics of ``model`` on uint8 ``images`` with integer ``labels``."""
    probs = predict_proba(model, images, spec)
    return classification_metrics(labels.astype(int), probs.argmax(axis=1), class_names)


def test_split(card, data_source: str | None = None):
    """The splits of the dataset a model card says it was trained on (the same seed and
    validation share, so the same test split)."""
    name = card.dataset.get("name", "fashion-mnist")
    source = data_source or (card.dataset.get("source") if name == "image-folder" else None)
    ds = load_splits(name, source, spec=card.preprocess_spec, seed=int(card.dataset.get("seed", 0)),
                     validation_fraction=float(card.dataset.get("validation_fraction", 0.1)),
                     category_level=int(card.dataset.get("category_level", 1)))
    if list(card.class_names) != list(ds.class_names):
        raise ValueError(f"model classes {card.class_names} differ from the dataset's {ds.class_names}")
    return ds


def runner_outputs(runner, images: np.ndarray, chunk: int = 4096):
    """A :class:`artifacts.inference.ModelRunner`'s :class:`Forward` on uint8 ``images``, preprocessed
    with its card's spec, in bounded-memory chunks."""
    from artifacts.inference import Forward

    spec = runner.card.preprocess_spec
    parts = [runner(arrays_to_model_input(images[s:s + chunk], spec)) for s in range(0, len(images), chunk)]
    if not parts:
        return Forward(np.zeros((0, runner.dim), np.float32), np.zeros((0, len(runner.class_names)), np.float32),
                       np.zeros(0, bool))
    return Forward(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("embeddings", "probabilities", "zero")))


def evaluate_artifact(model_uri: str, data_source: str | None = None) -> dict:
    """Reload a model artifact and measure it on the test split of the dataset it was trained
    on; the result holds the fresh metrics, the ones its card recorded, and whether they agree.
    It runs through :class:`artifacts.inference.ModelRunner`, the forward pass serving and the
    embedding job use, so a quantized variant is measured as it serves."""
    from artifacts.inference import ModelRunner

    runner = ModelRunner(model_uri)
    card = runner.card
    ds = test_split(card, data_source)
    probs = runner_outputs(runner, ds.test_x).probabilities
    metrics = classification_metrics(ds.test_y.astype(int), probs.argmax(axis=1), ds.class_names)
    recorded = card.test_metrics or {}
    same_data = not card.dataset.get("sha256") or card.dataset.get("sha256") == ds.sha256
    reproduced = bool(recorded) and same_data and abs(recorded.get("accuracy", -1) - metrics["accuracy"]) < 1e-3
    return {"model_id": card.model_id, "model_uri": runner.uri, "architecture": card.architecture,
            "data_source": ds.source, "same_dataset_as_card": same_data, "metrics": metrics,
            "card_metrics": recorded, "reproduced": reproduced}
