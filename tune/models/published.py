"""Published Fashion-MNIST / product-image CNNs, rebuilt as baselines.

Parameter counts below are for the default input shape and 10 classes and are checked by
``tests/tune/test_models.py``. Where a paper's figures or tables were not available the
topology is a documented reconstruction that matches the published parameter count.
"""

from __future__ import annotations

import keras
from keras import layers

from .registry import EMBEDDING_LAYER, register_model

FASHION_MNIST_SHAPE = (28, 28, 1)


def _input(input_shape: tuple[int, int, int]) -> keras.KerasTensor:
    return keras.Input(shape=tuple(input_shape), name="image")


def _predictions(x: keras.KerasTensor, num_classes: int) -> keras.KerasTensor:
    return layers.Dense(num_classes, activation="softmax", name="predictions")(x)


# --------------------------------------------------------------------------------------
# Sandag & Waworundeng
# --------------------------------------------------------------------------------------
def _seed_cnn(num_classes: int, input_shape: tuple[int, int, int], *, dropout: bool, name: str) -> keras.Model:
    inputs = _input(input_shape)
    x = inputs
    for i, filters in enumerate((32, 64, 128), start=1):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"conv{i}")(x)
        x = layers.MaxPooling2D(2, name=f"pool{i}")(x)
        if dropout:
            x = layers.Dropout(0.25, name=f"dropout{i}")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(128, activation="relu", name=EMBEDDING_LAYER)(x)
    if dropout:
        x = layers.Dropout(0.5, name="dropout_embedding")(x)
    return keras.Model(inputs, _predictions(x, num_classes), name=name)


@register_model(
    "seed_cnn",
    input_shape=FASHION_MNIST_SHAPE,
    description="3x [Conv 32/64/128 3x3 same + MaxPool] -> Dense 128 -> softmax (241,546 params)",
    reference="Sandag & Waworundeng, Fashion-MNIST CNN",
)
def build_seed_cnn(num_classes: int = 10, input_shape: tuple[int, int, int] = FASHION_MNIST_SHAPE) -> keras.Model:
    """Sandag & Waworundeng's CNN for Fashion-MNIST (no dropout).

    Conv2D 32 3x3 same relu -> MaxPool 2 -> Conv 64 -> MaxPool -> Conv 128 -> MaxPool ->
    Flatten (3x3x128) -> Dense 128 relu ("embedding") -> Dense softmax.
    241,546 parameters at 28x28x1 / 10 classes, as published.
    """
    return _seed_cnn(num_classes, input_shape, dropout=False, name="seed_cnn")


@register_model(
    "seed_cnn_dropout",
    input_shape=FASHION_MNIST_SHAPE,
    description="seed_cnn with Dropout 0.25 after each pool and 0.5 after the dense (241,546 params)",
    reference="Sandag & Waworundeng, Fashion-MNIST CNN with dropout",
)
def build_seed_cnn_dropout(
    num_classes: int = 10, input_shape: tuple[int, int, int] = FASHION_MNIST_SHAPE
) -> keras.Model:
    """Sandag & Waworundeng's CNN with dropout.

    Same topology as ``seed_cnn`` plus Dropout 0.25 after each MaxPool and Dropout 0.5
    after the 128-unit dense ("embedding") layer. 241,546 parameters.
    """
    return _seed_cnn(num_classes, input_shape, dropout=True, name="seed_cnn_dropout")


# --------------------------------------------------------------------------------------
# Hodecker et al. (topologies reconstructed: the paper's figures were not available)
# --------------------------------------------------------------------------------------
def _cnn_dropout_1_topology(
    num_classes: int,
    input_shape: tuple[int, int, int],
    *,
    conv_dropout: float,
    dense_dropout: float,
    name: str,
) -> keras.Model:
    inputs = _input(input_shape)
    x = inputs
    for i, filters in enumerate((24, 16), start=1):
        x = layers.Conv2D(filters, 5, padding="valid", activation="relu", name=f"conv{i}")(x)
        x = layers.MaxPooling2D(2, name=f"pool{i}")(x)
        x = layers.Dropout(conv_dropout, name=f"dropout{i}")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(128, activation="relu", name=EMBEDDING_LAYER)(x)
    x = layers.Dropout(dense_dropout, name="dropout_embedding")(x)
    return keras.Model(inputs, _predictions(x, num_classes), name=name)


@register_model(
    "cnn_dropout_1",
    input_shape=FASHION_MNIST_SHAPE,
    description="2x [Conv 24/16 5x5 valid + MaxPool + Dropout 0.3] -> Dense 128 -> Dropout 0.5 (44,426 params)",
    reference="Hodecker et al., CNN-Dropout-1 (reconstructed)",
)
def build_cnn_dropout_1(num_classes: int = 10, input_shape: tuple[int, int, int] = FASHION_MNIST_SHAPE) -> keras.Model:
    """Hodecker et al., "CNN-Dropout-1". Topology reconstructed (paper figures lost).

    Conv 24 5x5 valid relu -> MaxPool 2 -> Dropout 0.3 -> Conv 16 5x5 valid relu ->
    MaxPool 2 -> Dropout 0.3 -> Flatten (4x4x16 = 256) -> Dense 128 relu ("embedding") ->
    Dropout 0.5 -> Dense softmax. 44,426 parameters, matching the published count.
    """
    return _cnn_dropout_1_topology(
        num_classes, input_shape, conv_dropout=0.3, dense_dropout=0.5, name="cnn_dropout_1"
    )


@register_model(
    "cnn_dropout_3",
    input_shape=FASHION_MNIST_SHAPE,
    description="cnn_dropout_1 topology with low dropout 0.05 / 0.05 / 0.1 (44,426 params)",
    reference="Hodecker et al., CNN-Dropout-3 (reconstructed)",
)
def build_cnn_dropout_3(num_classes: int = 10, input_shape: tuple[int, int, int] = FASHION_MNIST_SHAPE) -> keras.Model:
    """Hodecker et al., "CNN-Dropout-3". Topology reconstructed (paper figures lost).

    Identical to ``cnn_dropout_1`` but with much lower dropout: 0.05 after each pool and
    0.1 after the 128-unit dense ("embedding") layer. 44,426 parameters.
    """
    return _cnn_dropout_1_topology(
        num_classes, input_shape, conv_dropout=0.05, dense_dropout=0.1, name="cnn_dropout_3"
    )


@register_model(
    "cnn_dropout_2",
    input_shape=FASHION_MNIST_SHAPE,
    description="2x [2x Conv 20/24 3x3 valid + MaxPool + Dropout 0.25] -> Dense 48 -> Dropout 0.5 (32,342 params)",
    reference="Hodecker et al., CNN-Dropout-2 (reconstructed)",
)
def build_cnn_dropout_2(num_classes: int = 10, input_shape: tuple[int, int, int] = FASHION_MNIST_SHAPE) -> keras.Model:
    """Hodecker et al., "CNN-Dropout-2". Topology reconstructed (paper figures lost).

    [Conv 20 3x3 valid, Conv 20 3x3 valid] -> MaxPool 2 -> Dropout 0.25 ->
    [Conv 24 3x3 valid, Conv 24 3x3 valid] -> MaxPool 2 -> Dropout 0.25 ->
    Flatten (4x4x24 = 384) -> Dense 48 relu ("embedding") -> Dropout 0.5 -> Dense softmax.
    32,342 parameters (published: about 32,340).
    """
    inputs = _input(input_shape)
    x = inputs
    for block, filters in enumerate((20, 24), start=1):
        for j in (1, 2):
            x = layers.Conv2D(filters, 3, padding="valid", activation="relu", name=f"conv{block}_{j}")(x)
        x = layers.MaxPooling2D(2, name=f"pool{block}")(x)
        x = layers.Dropout(0.25, name=f"dropout{block}")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(48, activation="relu", name=EMBEDDING_LAYER)(x)
    x = layers.Dropout(0.5, name="dropout_embedding")(x)
    return keras.Model(inputs, _predictions(x, num_classes), name="cnn_dropout_2")


@register_model(
    "cnn_simple",
    input_shape=FASHION_MNIST_SHAPE,
    description="Conv 24 5x5 same -> Conv 16 5x5 same -> MaxPool -> Dense 32 -> softmax (110,954 params)",
    reference="Hodecker et al., simple CNN (reconstructed)",
)
def build_cnn_simple(num_classes: int = 10, input_shape: tuple[int, int, int] = FASHION_MNIST_SHAPE) -> keras.Model:
    """Hodecker et al., simple CNN without dropout. Topology reconstructed (paper figures lost).

    Conv 24 5x5 same relu -> Conv 16 5x5 same relu -> MaxPool 2 (14x14x16) -> Flatten ->
    Dense 32 relu ("embedding") -> Dense softmax. 110,954 parameters (published: 110,968,
    0.013% off; the exact published topology could not be recovered).
    """
    inputs = _input(input_shape)
    x = layers.Conv2D(24, 5, padding="same", activation="relu", name="conv1")(inputs)
    x = layers.Conv2D(16, 5, padding="same", activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D(2, name="pool1")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(32, activation="relu", name=EMBEDDING_LAYER)(x)
    return keras.Model(inputs, _predictions(x, num_classes), name="cnn_simple")


# --------------------------------------------------------------------------------------
# Kayed et al.
# --------------------------------------------------------------------------------------
@register_model(
    "lenet5",
    input_shape=FASHION_MNIST_SHAPE,
    description="LeNet-5 (pad to 32x32, Conv 6/16 5x5 + AvgPool, Dense 120/84/42, relu)",
    reference="Kayed et al., LeNet-5 on Fashion-MNIST (extra dense reconstructed)",
)
def build_lenet5(num_classes: int = 10, input_shape: tuple[int, int, int] = FASHION_MNIST_SHAPE) -> keras.Model:
    """LeNet-5 as applied to Fashion-MNIST by Kayed et al.

    ZeroPadding2D(2) (28x28 -> 32x32) -> Conv 6 5x5 -> AveragePooling 2 -> Conv 16 5x5 ->
    AveragePooling 2 -> Flatten (5x5x16) -> Dense 120 -> Dense 84 -> Dense 42 ("embedding")
    -> Dense softmax.

    Reconstruction notes: the paper adds one dense layer to the classic LeNet-5 head; its width
    is not recoverable, so Dense 42 (half of 84) is used. The paper allows tanh or relu; relu
    is used throughout.
    """
    inputs = _input(input_shape)
    x = layers.ZeroPadding2D(2, name="pad")(inputs)
    x = layers.Conv2D(6, 5, padding="valid", activation="relu", name="conv1")(x)
    x = layers.AveragePooling2D(2, name="pool1")(x)
    x = layers.Conv2D(16, 5, padding="valid", activation="relu", name="conv2")(x)
    x = layers.AveragePooling2D(2, name="pool2")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(120, activation="relu", name="dense1")(x)
    x = layers.Dense(84, activation="relu", name="dense2")(x)
    x = layers.Dense(42, activation="relu", name=EMBEDDING_LAYER)(x)
    return keras.Model(inputs, _predictions(x, num_classes), name="lenet5")


# --------------------------------------------------------------------------------------
# Product visual-search thesis
# --------------------------------------------------------------------------------------
@register_model(
    "thesis_cnn",
    input_shape=(128, 128, 3),
    description="4x [Conv 16/32/64/128 3x3 + MaxPool] -> 2x [Dense 512 + BN + ReLU + Dropout 0.3]",
    reference="Product visual-search thesis, custom CNN",
)
def build_thesis_cnn(num_classes: int = 10, input_shape: tuple[int, int, int] = (128, 128, 3)) -> keras.Model:
    """Custom CNN from the product visual-search thesis.

    4x [Conv 16/32/64/128 3x3 same relu -> MaxPool 2] -> Flatten ->
    Dense 512 -> BatchNorm -> ReLU -> Dropout 0.3 ->
    Dense 512 -> BatchNorm -> ReLU ("embedding") -> Dropout 0.3 -> Dense softmax.
    Default input 128x128x3; also builds at 28x28x1 (the four pools then leave 1x1x128).
    """
    inputs = _input(input_shape)
    x = inputs
    for i, filters in enumerate((16, 32, 64, 128), start=1):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"conv{i}")(x)
        x = layers.MaxPooling2D(2, name=f"pool{i}")(x)
    x = layers.Flatten(name="flatten")(x)
    for i in (1, 2):
        x = layers.Dense(512, name=f"dense{i}")(x)
        x = layers.BatchNormalization(name=f"bn_dense{i}")(x)
        x = layers.Activation("relu", name=EMBEDDING_LAYER if i == 2 else f"relu_dense{i}")(x)
        x = layers.Dropout(0.3, name=f"dropout_dense{i}")(x)
    return keras.Model(inputs, _predictions(x, num_classes), name="thesis_cnn")
