"""Saving and loading model artifacts: ``<models>/<model_id>/{model.keras, model_card.json}``.

Serving and embedding load models through here, never through training code, so a saved model
must use only built-in Keras layers (the model zoo keeps to that). A quantized variant holds
``model.tflite`` instead (its card says ``runtime: tflite``): it loads as its bytes, which only
:class:`artifacts.inference.ModelRunner` runs.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import publish, storage
from .model_card import CARD_FILE, MODEL_FILE, ModelCard  # noqa: F401 (MODEL_FILE: callers read it here)


@dataclass
class LoadedModel:
    model: object  # keras.Model (None for a TFLite variant); typed loosely so importing this does not import Keras
    card: ModelCard
    uri: str
    tflite: bytes | None = None  # a TFLite variant's flatbuffer

    def embedding_model(self):
        """A model with two outputs: the L2-unnormalised embedding and the class probabilities."""
        import keras

        if self.model is None:
            raise ValueError(f"model {self.card.model_id} is a {self.card.variant} {self.card.runtime} variant with no "
                             f"Keras graph: run it through artifacts.inference.ModelRunner")
        emb = self.model.get_layer(self.card.embedding_layer).output
        return keras.Model(self.model.inputs, [emb, self.model.outputs[0]])


def models_root(root: str | None = None) -> str:
    return storage.join(root or storage.default_root(), "models")


def save(model, card: ModelCard, models_uri: str, *, make_latest: bool = True) -> str:
    """Write the model (a Keras model, or a TFLite variant's bytes) then its card (last), and
    optionally move ``LATEST``; returns the URI."""
    uri = publish.artifact_uri(models_uri, card.model_id)
    with tempfile.TemporaryDirectory(prefix="vitrine-model-") as tmp:
        if isinstance(model, bytes):
            (Path(tmp) / card.model_file).write_bytes(model)
        else:
            model.save(Path(tmp) / card.model_file)
        storage.upload_dir(tmp, uri)
    storage.write_text(storage.join(uri, CARD_FILE), card.to_json())
    if make_latest:
        publish.publish(models_uri, card.model_id, manifest_name=CARD_FILE)
    return uri


def read_card(uri: str) -> ModelCard:
    """The card of a model directory, or of the ``LATEST`` model under a models directory."""
    uri = publish.resolve(uri, manifest_name=CARD_FILE)
    return ModelCard.from_json(storage.read_text(storage.join(uri, CARD_FILE)))


def model_sha256(uri: str) -> str:
    """The sha256 of a model directory's model file (what a variant's card records of its parent)."""
    import hashlib

    return hashlib.sha256(storage.read_bytes(storage.join(uri, read_card(uri).model_file))).hexdigest()


def load(uri: str) -> LoadedModel:
    """Load a model directory (or the ``LATEST`` one under a models directory), local or s3://."""
    uri = publish.resolve(uri, manifest_name=CARD_FILE)
    card = ModelCard.from_json(storage.read_text(storage.join(uri, CARD_FILE)))
    if card.runtime == "tflite":
        return LoadedModel(model=None, card=card, uri=uri, tflite=storage.read_bytes(storage.join(uri, card.model_file)))
    import keras

    from . import heads

    with storage.local_copy(uri) as local:
        model = keras.models.load_model(local / card.model_file, compile=False, custom_objects=heads.CUSTOM_OBJECTS)
    return LoadedModel(model=model, card=card, uri=uri)
