"""vitrine's own CNN, designed to beat the published baselines on Fashion-MNIST."""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers

from artifacts.heads import CosineSoftmax

from .registry import EMBEDDING_LAYER, register_model


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"vitrine_cnn option {name} must be a positive int; got {value!r}")
    return value


def _rate(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) < 1.0:
        raise ValueError(f"vitrine_cnn option {name} must be a float in [0, 1); got {value!r}")
    return float(value)


def _check_head(head: object) -> None:
    if head not in ("softmax", "cosine"):
        raise ValueError(f"vitrine_cnn option head must be 'softmax' or 'cosine'; got {head!r}")


def _head(head: str, num_classes: int, scale: float, margin: float) -> layers.Layer:
    if head == "cosine":
        return CosineSoftmax(num_classes, scale=scale, margin=margin, name="predictions")
    return layers.Dense(num_classes, activation="softmax", name="predictions")


@register_model(
    "vitrine_cnn",
    input_shape=(28, 28, 1),
    description="BN-ReLU VGG-style CNN (32/64 filters, 1+2 convs) -> Dense 256 + BN -> Dropout 0.4",
    reference="vitrine (this project)",
)
def build(
    num_classes: int = 10,
    input_shape: tuple[int, int, int] = (28, 28, 1),
    *,
    width: int = 32,
    convs_per_block: Sequence[int] = (1, 2),
    dense: int = 256,
    dropout: float = 0.4,
    head: str = "softmax",
    head_scale: float = 16.0,
    head_margin: float = 0.2,
) -> keras.Model:
    """vitrine's CNN (our design, not from a paper).

    Block i (one per entry of ``convs_per_block``):
    ``convs_per_block[i]`` x [Conv2D(width * 2**i, 3x3, same, no bias) -> BatchNorm -> ReLU]
    -> MaxPool 2 -> Dropout 0.25.
    Then Flatten -> Dense(dense, no bias) -> BatchNorm -> ReLU ("embedding") ->
    Dropout(dropout) -> Dense softmax.

    Augmentation is deliberately not part of the model; it lives in the data pipeline.

    Options: ``width`` (filters of the first block, doubled per block), ``convs_per_block``
    (tuple, convs in each block; its length is the number of blocks), ``dense`` (embedding
    size), ``dropout`` (rate after the embedding), ``head``: ``softmax`` (a Dense softmax) or
    ``cosine`` (:class:`artifacts.heads.CosineSoftmax`: classes by cosine to the L2-normalised
    embedding, trained with the CosFace margin ``head_margin`` at scale ``head_scale``; the
    embedding then ranks across categories in the geometry search uses).
    """
    _check_head(head)
    width = _positive_int("width", width)
    dense = _positive_int("dense", dense)
    dropout = _rate("dropout", dropout)
    if isinstance(convs_per_block, (str, bytes)) or not isinstance(convs_per_block, Sequence) or not convs_per_block:
        raise ValueError(f"vitrine_cnn option convs_per_block must be a non-empty tuple of ints; got {convs_per_block!r}")
    convs = [_positive_int("convs_per_block[]", n) for n in convs_per_block]
    if min(input_shape[0], input_shape[1]) // 2 ** len(convs) < 1:
        raise ValueError(
            f"vitrine_cnn: {len(convs)} pooling blocks need inputs of at least {2 ** len(convs)}px; "
            f"got input_shape={tuple(input_shape)}"
        )

    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = inputs
    for i, n_convs in enumerate(convs):
        block = i + 1
        filters = width * 2**i
        for j in range(1, n_convs + 1):
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"block{block}_conv{j}")(x)
            x = layers.BatchNormalization(name=f"block{block}_bn{j}")(x)
            x = layers.Activation("relu", name=f"block{block}_relu{j}")(x)
        x = layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
        x = layers.Dropout(0.25, name=f"block{block}_dropout")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(dense, use_bias=False, name="dense")(x)
    x = layers.BatchNormalization(name="bn_dense")(x)
    x = layers.Activation("relu", name=EMBEDDING_LAYER)(x)
    x = layers.Dropout(dropout, name="dropout_embedding")(x)
    outputs = _head(head, num_classes, head_scale, head_margin)(x)
    return keras.Model(inputs, outputs, name="vitrine_cnn")
