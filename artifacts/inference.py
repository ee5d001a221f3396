"""The model's forward pass as the embedding job and the classifier replicas both run it:
model inputs → L2-normalised embeddings and class probabilities.

One implementation, so an image embedded at night and the same image uploaded by a shopper land
on the same vector.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from . import model_artifact
from .model_card import ModelCard

log = logging.getLogger("vitrine.inference")
ZERO_NORM = 1e-12


def configure_tensorflow(threads: int) -> None:
    """Limit TensorFlow's CPU threads (it ignores Ray's allocation) and let several processes
    share a GPU. Only possible before TensorFlow's runtime starts in this process."""
    import tensorflow as tf

    try:
        if threads > 0:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        for gpu in tf.config.list_physical_devices("GPU"):
            tf.config.experimental.set_memory_growth(gpu, True)
    except RuntimeError:
        pass


@dataclass
class Forward:
    """Embeddings (unit length; all-zero rows flagged) and probabilities for a batch."""

    embeddings: np.ndarray  # (n, dim) float32
    probabilities: np.ndarray  # (n, classes) float32
    zero: np.ndarray  # (n,) bool: the model's embedding was all zeros (nothing to compare)


class ModelRunner:
    """A model artifact loaded once, with one forward pass for every batch size: traced TensorFlow for a
    Keras model, TFLite for a quantized variant (artifacts/tflite_runtime.py)."""

    def __init__(self, model_uri: str):
        loaded = model_artifact.load(model_uri)
        self.card: ModelCard = loaded.card
        self.uri = loaded.uri
        self.model_id = loaded.card.model_id
        self.dim = int(loaded.card.embedding_dim)
        self.shape = tuple(loaded.card.preprocess_spec.input_shape)
        self.class_names = list(loaded.card.class_names)
        self.variant = loaded.card.variant  # float32, or a quantized variant's int8 / float16
        if loaded.tflite is not None:
            from .tflite_runtime import TFLiteForward

            self._forward = TFLiteForward(loaded.tflite, self.shape, dim=self.dim, classes=len(self.class_names))
        else:
            self._forward = self._keras_forward(loaded)

    def _keras_forward(self, loaded):
        import tensorflow as tf

        model = loaded.embedding_model()
        # One trace for every batch size; ~2x faster than model.predict on small batches.
        forward = tf.function(lambda x: model([x], training=False), reduce_retracing=True,
                              input_signature=[tf.TensorSpec((None, *self.shape), tf.float32)])
        forward(tf.zeros((1, *self.shape), tf.float32))  # trace now, not on the first request
        got = int(model.outputs[0].shape[-1])
        if got != self.dim:
            raise ValueError(f"model {self.model_id}: card says embedding dimension {self.dim}, model produces {got}")
        return forward

    def __call__(self, x: np.ndarray) -> Forward:
        x = np.asarray(x, np.float32)
        if x.shape[1:] != self.shape:
            raise ValueError(f"model {self.model_id} takes inputs of shape {self.shape}, got {x.shape[1:]}")
        e, probs = (np.asarray(t) for t in self._forward(x))  # tensors (Keras) or arrays (TFLite)
        norms = np.linalg.norm(e, axis=1, keepdims=True)
        zero = norms[:, 0] <= ZERO_NORM
        return Forward(embeddings=(e / np.where(zero[:, None], 1.0, norms)).astype(np.float32),
                       probabilities=probs.astype(np.float32), zero=zero)
