"""Saving and loading model artifacts: ``<models>/<model_id>/{model.keras, model_card.json}``.

Serving and embedding load models through here, never through training code, so a saved model
must use only built-in Keras layers (the model zoo keeps to that).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import publish, storage
from .model_card import CARD_FILE, MODEL_FILE, ModelCard


@dataclass
class LoadedModel:
    model: object  # keras.Model; typed loosely so importing this module does not import Keras
    card: ModelCard
    uri: str

    def embedding_model(self):
        """A model with two outputs: the L2-unnormalised embedding and the class probabilities."""
        import keras

        emb = self.model.get_layer(self.card.embedding_layer).output
        return keras.Model(self.model.inputs, [emb, self.model.outputs[0]])


def models_root(root: str | None = None) -> str:
    return storage.join(root or storage.default_root(), "models")


def save(model, card: ModelCard, models_uri: str, *, make_latest: bool = True) -> str:
    """Write the model then its card (last), and optionally move ``LATEST``; returns the URI."""
    uri = publish.artifact_uri(models_uri, card.model_id)
    with tempfile.TemporaryDirectory(prefix="vitrine-model-") as tmp:
        model.save(Path(tmp) / MODEL_FILE)
        storage.upload_dir(tmp, uri)
    storage.write_text(storage.join(uri, CARD_FILE), card.to_json())
    if make_latest:
        publish.publish(models_uri, card.model_id, manifest_name=CARD_FILE)
    return uri


def read_card(uri: str) -> ModelCard:
    """The card of a model directory, or of the ``LATEST`` model under a models directory."""
    uri = publish.resolve(uri, manifest_name=CARD_FILE)
    return ModelCard.from_json(storage.read_text(storage.join(uri, CARD_FILE)))


def load(uri: str) -> LoadedModel:
    """Load a model directory (or the ``LATEST`` one under a models directory), local or s3://."""
    import keras

    from . import heads

    uri = publish.resolve(uri, manifest_name=CARD_FILE)
    card = ModelCard.from_json(storage.read_text(storage.join(uri, CARD_FILE)))
    with storage.local_copy(uri) as local:
        model = keras.models.load_model(local / MODEL_FILE, compile=False, custom_objects=heads.CUSTOM_OBJECTS)
    return LoadedModel(model=model, card=card, uri=uri)
