"""Classification heads that shape the embedding for search, and their training loss.

A softmax head on the penultimate layer learns class boundaries, not distances: two items of
one class can sit far apart while an item of another class is near, which is why search
without the category filter ranked worse than the classifier classifies. The cosine head
classifies by the cosine between the L2-normalised embedding and one learned direction per
class, so training tightens each class around its direction in exactly the geometry search
uses (cosine similarity of normalised embeddings). With a margin (CosFace: the true class's
cosine must beat the others by ``margin``) classes are also pushed apart.

The head outputs class probabilities, like the softmax head, so everything that reads a model
(``artifacts.inference``, the Classifier replicas) is unchanged. The margin exists only in the
loss (:class:`CosineMarginLoss`). It recovers the scaled cosines from the probabilities as
``log p`` (softmax is shift-invariant, so ``log p`` equals the logits up to a constant); with
``scale`` at most 40 the smallest probability, about e^-80, is still a normal float32, so
nothing underflows.

Both are registered Keras serializables: importing this module (as ``artifacts.model_artifact``
does before loading a model) is what lets a saved model with this head load.
"""

from __future__ import annotations

import keras
from keras import ops

PACKAGE = "vitrine"
MAX_SCALE = 40.0
_TINY = 1e-37  # clip for log(p): below every probability a scale <= MAX_SCALE can produce


@keras.saving.register_keras_serializable(package=PACKAGE)
class CosineSoftmax(keras.layers.Layer):
    """``softmax(scale * cos(x, w_c))`` over the classes ``c``; ``margin`` is recorded for the loss."""

    def __init__(self, units: int, scale: float = 16.0, margin: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        if not 0 < float(scale) <= MAX_SCALE:
            raise ValueError(f"cosine head scale must be in (0, {MAX_SCALE:g}]; got {scale!r}")
        if not 0 <= float(margin) < 1:
            raise ValueError(f"cosine head margin must be in [0, 1); got {margin!r}")
        self.units, self.scale, self.margin = int(units), float(scale), float(margin)

    def build(self, input_shape):
        self.kernel = self.add_weight(name="kernel", shape=(int(input_shape[-1]), self.units),
                                      initializer="glorot_uniform")

    def call(self, inputs):
        x = inputs / ops.maximum(ops.norm(inputs, axis=-1, keepdims=True), 1e-12)
        w = self.kernel / ops.maximum(ops.norm(self.kernel, axis=0, keepdims=True), 1e-12)
        return ops.softmax(self.scale * ops.matmul(x, w), axis=-1)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def get_config(self):
        return {**super().get_config(), "units": self.units, "scale": self.scale, "margin": self.margin}


@keras.saving.register_keras_serializable(package=PACKAGE)
class CosineMarginLoss(keras.losses.Loss):
    """Sparse cross-entropy after taking ``scale * margin`` off the true class's logit (CosFace);
    ``y_pred`` are a :class:`CosineSoftmax` head's probabilities."""

    def __init__(self, scale: float = 16.0, margin: float = 0.2, name: str = "cosine_margin_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.scale, self.margin = float(scale), float(margin)

    def call(self, y_true, y_pred):
        classes = ops.shape(y_pred)[-1]
        onehot = ops.one_hot(ops.cast(ops.reshape(y_true, (-1,)), "int32"), classes)
        logits = ops.log(ops.maximum(y_pred, _TINY)) - self.scale * self.margin * onehot
        return -ops.sum(onehot * ops.log_softmax(logits, axis=-1), axis=-1)

    def get_config(self):
        return {**super().get_config(), "scale": self.scale, "margin": self.margin}


def loss_for(model):
    """The training loss a model's head calls for: the margin loss for a cosine head, plain
    sparse cross-entropy otherwise."""
    head = model.layers[-1]
    if isinstance(head, CosineSoftmax):
        return CosineMarginLoss(scale=head.scale, margin=head.margin)
    return "sparse_categorical_crossentropy"


def objective(model) -> dict:
    """What made the embedding, for the model card."""
    head = model.layers[-1]
    if isinstance(head, CosineSoftmax):
        return {"head": "cosine", "loss": "cosface" if head.margin else "cosine-softmax",
                "scale": head.scale, "margin": head.margin}
    return {"head": "softmax", "loss": "cross-entropy"}


# For keras.models.load_model(custom_objects=...): a model with a cosine head loads wherever this
# is passed, whether or not this module was imported before.
CUSTOM_OBJECTS = {f"{PACKAGE}>CosineSoftmax": CosineSoftmax, f"{PACKAGE}>CosineMarginLoss": CosineMarginLoss,
                  "CosineSoftmax": CosineSoftmax, "CosineMarginLoss": CosineMarginLoss}
