"""Transfer-learning models: an ImageNet backbone from ``keras.applications`` plus the thesis head.

Every model is self-contained and built from built-in Keras layers only, so a saved ``.keras``
file can be served without this package:

``image (H, W, C) in [0, 1]``
-> ``Resizing(backbone_size)`` (skipped when the input already has that size)
-> ``gray_to_rgb`` (1-channel inputs only: non-trainable 1x1 Conv2D, kernel all ones)
-> the backbone's own input normalisation (``caffe`` for VGG16/ResNet50: x*255, RGB->BGR,
   minus the ImageNet mean, as a non-trainable 1x1 Conv2D; ``tf`` for MobileNetV2:
   ``Rescaling(2, offset=-1)``)
-> backbone (``include_top=False, pooling="avg"``; frozen unless ``trainable_backbone``)
-> Dense 512 -> BN -> ReLU -> Dropout 0.5 -> Dense 512 -> BN -> ReLU ("embedding")
-> Dropout 0.5 -> Dense softmax.

Backbone weights (option ``weights``):

* ``None`` (default): if the environment variable ``VITRINE_BACKBONE_WEIGHTS`` names a
  directory holding ``<model>_notop.h5`` or ``<model>_notop.weights.h5`` (e.g.
  ``vgg16_notop.h5``), that file is loaded; otherwise the backbone is randomly initialised.
* ``"imagenet"``: downloaded by Keras (or taken from the Keras cache). If that fails (no
  network), a warning is logged and the ``VITRINE_BACKBONE_WEIGHTS`` file is used if present,
  else random initialisation.
* a path to a local weights file (``.h5`` / ``.weights.h5``) for the backbone (or a
  directory holding ``<model>_notop.h5``); a missing path raises ``FileNotFoundError``.

:func:`backbone_weights` says which of these a model starts from; the grid records it in the
model card (``training_config.backbone_weights``) and the report.

A frozen backbone (the default) also keeps its BatchNormalization layers in inference mode
(Keras 3 semantics for ``trainable=False``).
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

import keras
from keras import layers

from .registry import EMBEDDING_LAYER, register_model

logger = logging.getLogger("vitrine.models")

WEIGHTS_ENV = "VITRINE_BACKBONE_WEIGHTS"
FASHION_MNIST_SHAPE = (28, 28, 1)
MIN_BACKBONE_SIZE = 32
# ImageNet channel means in BGR order, as used by keras.applications "caffe" preprocessing.
IMAGENET_MEAN_BGR = (103.939, 116.779, 123.68)
HEAD_UNITS = 512
HEAD_DROPOUT = 0.5

_BACKBONES: dict[str, tuple[Callable[..., keras.Model], str]] = {
    "vgg16": (keras.applications.VGG16, "caffe"),
    "resnet50": (keras.applications.ResNet50, "caffe"),
    "mobilenet_v2": (keras.applications.MobileNetV2, "tf"),
}


def _weight_file_names(name: str) -> tuple[str, str]:
    return (f"{name}_notop.h5", f"{name}_notop.weights.h5")


def _find_in_dir(name: str, directory: Path) -> Path | None:
    for fname in _weight_file_names(name):
        candidate = directory / fname
        if candidate.is_file():
            return candidate
    return None


def _env_weights(name: str) -> Path | None:
    """The ``VITRINE_BACKBONE_WEIGHTS`` file for ``name``, or None (with a log line saying why)."""
    env = os.environ.get(WEIGHTS_ENV)
    if not env:
        return None
    directory = Path(env).expanduser()
    if not directory.is_dir():
        logger.warning("%s=%s is not a directory; ignoring it for the %s backbone", WEIGHTS_ENV, env, name)
        return None
    found = _find_in_dir(name, directory)
    if found is None:
        logger.warning(
            "%s=%s has no %s or %s; the %s backbone starts from random weights",
            WEIGHTS_ENV,
            env,
            *_weight_file_names(name),
            name,
        )
    return found


def _how_to_pass_weights(name: str) -> str:
    h5, weights_h5 = _weight_file_names(name)
    return (
        f"to use pretrained weights offline, pass weights='/path/to/{h5}' (a Keras "
        f"include_top=False weights file, .h5 or .weights.h5) or set {WEIGHTS_ENV} to a directory "
        f"containing {h5} or {weights_h5}"
    )


def _resolve_weights(name: str, weights: Any) -> str | None:
    """Map the ``weights`` option to what ``keras.applications`` takes: None, "imagenet" or a path."""
    if weights is None:
        found = _env_weights(name)
        if found is not None:
            logger.info("loading %s backbone weights from %s (%s)", name, found, WEIGHTS_ENV)
            return str(found)
        logger.info("the %s backbone starts from random weights (%s)", name, _how_to_pass_weights(name))
        return None
    if isinstance(weights, str) and weights == "imagenet":
        return "imagenet"
    if isinstance(weights, (str, os.PathLike)):
        path = Path(weights).expanduser()
        if path.is_dir():
            found = _find_in_dir(name, path)
            if found is None:
                raise FileNotFoundError(
                    f"no {' or '.join(_weight_file_names(name))} in weights directory {str(path)!r} "
                    f"for the {name} backbone"
                )
            return str(found)
        if not path.is_file():
            raise FileNotFoundError(
                f"backbone weights file {str(path)!r} for {name} does not exist; pass weights=None "
                f"(random or {WEIGHTS_ENV}), 'imagenet', or an existing .h5/.weights.h5 file"
            )
        return str(path)
    raise ValueError(
        f"weights for {name} must be None, 'imagenet' or a path to a weights file; got {weights!r}"
    )


RANDOM_WEIGHTS = "random (no local file)"


def backbone_weights(architecture: str, options: dict | None = None) -> str | None:
    """What a transfer model's backbone starts from, as its card and the grid report say it: the
    weights file's path, ``"random (no local file)"``, or ``"imagenet"`` (a Keras download,
    which falls back to random when offline, with a warning in the trial's log); None for models
    without a backbone. Resolved as the builder resolves it, so call it where the model is built
    (the ``VITRINE_BACKBONE_WEIGHTS`` directory is read from that process's environment)."""
    if architecture not in _BACKBONES:
        return None
    resolved = _resolve_weights(architecture, (options or {}).get("weights"))
    if resolved is None:
        return RANDOM_WEIGHTS
    return "imagenet (Keras download; random if it failed, see the trial log)" if resolved == "imagenet" else resolved


def _make_backbone(name: str, size: int, weights: Any) -> keras.Model:
    constructor, _ = _BACKBONES[name]
    resolved = _resolve_weights(name, weights)

    def construct(w: str | None) -> keras.Model:
        with warnings.catch_warnings():
            # MobileNetV2 warns that ImageNet weights for 224x224 are loaded at other input sizes;
            # its convolution weights do not depend on the input size, so this is noise.
            warnings.filterwarnings("ignore", message=r"`input_shape` is undefined or non-square")
            return constructor(
                include_top=False,
                weights=w,
                input_shape=(size, size, 3),
                pooling="avg",
                name=f"{name}_backbone",
            )

    if resolved == "imagenet":
        try:
            return construct("imagenet")
        except Exception as exc:  # noqa: BLE001 - any download/cache failure falls back
            fallback = _env_weights(name)
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            outcome = (
                f"loading {fallback} from {WEIGHTS_ENV} instead"
                if fallback is not None
                else "the backbone is randomly initialised"
            )
            logger.warning(
                "ImageNet weights for the %s backbone could not be fetched (%s); %s. To %s",
                name,
                reason,
                outcome,
                _how_to_pass_weights(name)[len("to "):],
            )
            resolved = str(fallback) if fallback is not None else None
    try:
        return construct(resolved)
    except Exception as exc:
        if resolved is None:
            raise
        raise ValueError(f"could not load {name} backbone weights from {resolved!r}: {exc}") from exc


def _build_transfer(
    name: str,
    num_classes: int,
    input_shape: tuple[int, int, int],
    backbone_size: int,
    weights: Any,
    trainable_backbone: bool,
    bn_momentum: float | None = None,
) -> keras.Model:
    height, width, channels = _checked_input(name, input_shape, backbone_size, trainable_backbone, bn_momentum)
    _, mode = _BACKBONES[name]
    backbone = _make_backbone(name, backbone_size, weights)
    backbone.trainable = trainable_backbone

    inputs = keras.Input(shape=(height, width, channels), name="image")
    x, gray_to_rgb, caffe = _backbone_input(inputs, (height, width, channels), backbone_size, mode)
    x = backbone(x)
    for i in (1, 2):
        x = layers.Dense(HEAD_UNITS, name=f"head_dense{i}")(x)
        x = layers.BatchNormalization(name=f"head_bn{i}")(x)
        x = layers.Activation("relu", name=EMBEDDING_LAYER if i == 2 else f"head_relu{i}")(x)
        x = layers.Dropout(HEAD_DROPOUT, name=f"head_dropout{i}")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    model = keras.Model(inputs, outputs, name=name)

    _set_fixed_weights(gray_to_rgb, caffe)
    if bn_momentum is not None:
        # A backbone trained from random weights for a few hundred steps: with Keras's momenta
        # (0.999 in MobileNetV2, 0.99 in the head) the moving statistics still describe the random
        # start, and validation stays at chance (docs/RESULTS.md, "The RGB path").
        for layer in [*backbone.layers, *model.layers]:
            if isinstance(layer, layers.BatchNormalization):
                layer.momentum = float(bn_momentum)
    return model


def _checked_input(
    name: str,
    input_shape: tuple[int, int, int],
    backbone_size: int,
    trainable_backbone: bool,
    bn_momentum: float | None,
) -> tuple[int, int, int]:
    """``(height, width, channels)`` of ``input_shape``, once the builder's options are valid."""
    if isinstance(backbone_size, bool) or not isinstance(backbone_size, int) or backbone_size < MIN_BACKBONE_SIZE:
        raise ValueError(f"{name}: backbone_size must be an int >= {MIN_BACKBONE_SIZE}; got {backbone_size!r}")
    if not isinstance(trainable_backbone, bool):
        raise ValueError(f"{name}: trainable_backbone must be a bool; got {trainable_backbone!r}")
    height, width, channels = (int(d) for d in input_shape)
    if channels not in (1, 3):
        raise ValueError(f"{name}: input must have 1 (grayscale) or 3 (RGB) channels; got input_shape={input_shape}")
    if bn_momentum is not None and not (isinstance(bn_momentum, (int, float)) and 0 <= bn_momentum < 1):
        raise ValueError(f"{name}: bn_momentum must be a number in [0, 1); got {bn_momentum!r}")
    return height, width, channels


def _backbone_input(inputs, shape: tuple[int, int, int], backbone_size: int, mode: str):
    """The layers between the model's input and the backbone: resize to the backbone's size,
    grayscale to RGB, then the backbone's own preprocessing (caffe or tf). Returns ``(tensor,
    gray_to_rgb layer or None, caffe layer or None)``; those two get fixed weights once built."""
    x = inputs
    height, width, channels = shape
    if (height, width) != (backbone_size, backbone_size):
        x = layers.Resizing(backbone_size, backbone_size, name="resize")(x)
    gray_to_rgb = None
    if channels == 1:
        gray_to_rgb = layers.Conv2D(
            3, 1, use_bias=False, kernel_initializer="ones", trainable=False, name="gray_to_rgb"
        )
        x = gray_to_rgb(x)
    caffe = None
    if mode == "caffe":
        # x*255, RGB->BGR, minus the BGR ImageNet mean: out[j] = 255 * in[2 - j] - mean[j].
        caffe = layers.Conv2D(3, 1, trainable=False, name="caffe_preprocess")
        x = caffe(x)
    else:
        x = layers.Rescaling(2.0, offset=-1.0, name="tf_preprocess")(x)
    return x, gray_to_rgb, caffe


def _set_fixed_weights(gray_to_rgb, caffe) -> None:
    if gray_to_rgb is not None:
        gray_to_rgb.set_weights([np.ones((1, 1, 1, 3), dtype="float32")])
    if caffe is not None:
        kernel = np.zeros((1, 1, 3, 3), dtype="float32")
        for j in range(3):
            kernel[0, 0, 2 - j, j] = 255.0
        caffe.set_weights([kernel, -np.asarray(IMAGENET_MEAN_BGR, dtype="float32")])


@register_model(
    "vgg16",
    input_shape=FASHION_MNIST_SHAPE,
    description="VGG16 backbone (frozen, avg-pooled) + Dense 512-BN-ReLU x2 head",
    reference="Simonyan & Zisserman 2014 (keras.applications); head from the product visual-search thesis",
)
def build_vgg16(
    num_classes: int = 10,
    input_shape: tuple[int, int, int] = FASHION_MNIST_SHAPE,
    *,
    backbone_size: int = 32,
    weights: Any = None,
    trainable_backbone: bool = False,
) -> keras.Model:
    """VGG16 transfer model: ``keras.applications.VGG16`` (caffe preprocessing) + thesis head.

    Backbone from Simonyan & Zisserman (2014); the Dense 512-BN-ReLU-Dropout 0.5 head is
    the product visual-search thesis's. See the module docstring for the options.
    """
    return _build_transfer("vgg16", num_classes, input_shape, backbone_size, weights, trainable_backbone)


@register_model(
    "resnet50",
    input_shape=FASHION_MNIST_SHAPE,
    description="ResNet50 backbone (frozen, avg-pooled) + Dense 512-BN-ReLU x2 head",
    reference="He et al. 2015 (keras.applications); head from the product visual-search thesis",
)
def build_resnet50(
    num_classes: int = 10,
    input_shape: tuple[int, int, int] = FASHION_MNIST_SHAPE,
    *,
    backbone_size: int = 32,
    weights: Any = None,
    trainable_backbone: bool = False,
) -> keras.Model:
    """ResNet50 transfer model: ``keras.applications.ResNet50`` (caffe preprocessing) + thesis head.

    Backbone from He et al. (2015); the Dense 512-BN-ReLU-Dropout 0.5 head is the product
    visual-search thesis's. See the module docstring for the options.
    """
    return _build_transfer("resnet50", num_classes, input_shape, backbone_size, weights, trainable_backbone)


@register_model(
    "mobilenet_v2",
    input_shape=FASHION_MNIST_SHAPE,
    description="MobileNetV2 backbone (frozen, avg-pooled) + Dense 512-BN-ReLU x2 head",
    reference="Sandler et al. 2018 (keras.applications); head from the product visual-search thesis",
)
def build_mobilenet_v2(
    num_classes: int = 10,
    input_shape: tuple[int, int, int] = FASHION_MNIST_SHAPE,
    *,
    backbone_size: int = 32,
    weights: Any = None,
    trainable_backbone: bool = False,
    bn_momentum: float | None = None,
) -> keras.Model:
    """MobileNetV2 transfer model: ``keras.applications.MobileNetV2`` (x*2-1) + thesis head.

    Backbone from Sandler et al. (2018), alpha 1.0; the Dense 512-BN-ReLU-Dropout 0.5 head
    is the product visual-search thesis's. See the module docstring for the options;
    ``bn_momentum`` replaces the BatchNormalization momentum of the backbone (Keras: 0.999) and
    the head (0.99), for a backbone trained from random weights.
    """
    return _build_transfer("mobilenet_v2", num_classes, input_shape, backbone_size, weights, trainable_backbone,
                           bn_momentum)
