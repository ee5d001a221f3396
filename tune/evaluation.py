"""Test-split evaluation of a model, in memory or as a published artifact."""

from __future__ import annotations

import numpy as np

from artifacts import model_artifact
from artifacts.preprocess import PreprocessSpec

from .data.splits import load_splits
from .metrics import classification_metrics
from .training import predict_proba


def evaluate(model, spec: PreprocessSpec, images: np.ndarray, labels: np.ndarray, class_names: list[str]) -> dict:
    """Metrics of ``model`` on uint8 ``images`` with integer ``labels``."""
    probs = predict_proba(model, images, spec)
    return classification_metrics(labels.astype(int), probs.argmax(axis=1), class_names)


def evaluate_artifact(model_uri: str, data_source: str | None = None) -> dict:
    """Reload a model artifact and measure it on the test split of the dataset it was trained
    on; the result holds the fresh metrics, the ones its card recorded, and whether they agree."""
    loaded = model_artifact.load(model_uri)
    card = loaded.card
    name = card.dataset.get("name", "fashion-mnist")
    source = data_source or (card.dataset.get("source") if name == "image-folder" else None)
    ds = load_splits(name, source, spec=card.preprocess_spec, seed=int(card.dataset.get("seed", 0)),
                     validation_fraction=float(card.dataset.get("validation_fraction", 0.1)),
                     category_level=int(card.dataset.get("category_level", 1)))
    if list(card.class_names) != list(ds.class_names):
        raise ValueError(f"model classes {card.class_names} differ from the dataset's {ds.class_names}")
    metrics = evaluate(loaded.model, card.preprocess_spec, ds.test_x, ds.test_y, ds.class_names)
    recorded = card.test_metrics or {}
    same_data = not card.dataset.get("sha256") or card.dataset.get("sha256") == ds.sha256
    reproduced = bool(recorded) and same_data and abs(recorded.get("accuracy", -1) - metrics["accuracy"]) < 1e-3
    return {"model_id": card.model_id, "model_uri": loaded.uri, "architecture": card.architecture,
            "data_source": ds.source, "same_dataset_as_card": same_data, "metrics": metrics,
            "card_metrics": recorded, "reproduced": reproduced}
