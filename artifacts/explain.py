"""Which pixels a prediction rests on: Grad-CAM on a model's last convolutional layer and a plain
gradient saliency map, for any model artifact (softmax or cosine head), and the overlay images
that show them.

Shared by ``vitrine explain`` (jobs/explain.py), ``POST /v1/explain`` (the Classifier replica
computes the map, serve/explanations.py draws it) and the grid report's panel
(tune/explain_report.py), so a heatmap means the same everywhere. Inputs come from the one
preprocessing function (artifacts/preprocess.py); nothing here reads images another way.

The explained score is the class's log-probability less its mean over the classes. Both heads end
in a softmax, which is shift-invariant, so ``log p`` is the logit up to a constant per image and
this is the logit centred over the classes: Grad-CAM's pre-softmax score, recovered without
knowing the head (a Dense softmax or :class:`artifacts.heads.CosineSoftmax`), and unlike ``p``
itself it does not saturate when the model is sure.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

METHODS = ("gradcam", "saliency")
# A feature map of one pixel gives one weight for the whole image: Grad-CAM uses the last
# convolution whose output is at least this many pixels on each side (a transfer backbone at
# 32 px ends in a 1x1 map).
MIN_SIDE = 2
_TINY = 1e-37  # log-probabilities clipped here, as the cosine head's loss does
# Where the overlay shows colour: alpha * heat, so a cold pixel shows the image as it is.
ALPHA = 0.6
# Anchors of the colour map (dark blue -> cyan -> yellow -> red), as heat rises from 0 to 1.
_ANCHORS = np.array([[0, 0, 96], [0, 160, 255], [255, 230, 0], [220, 20, 0]], np.float32)


@dataclass
class Explanation:
    """One image's explanation: ``heatmap`` (the model input's height x width, float32 in [0, 1])
    for ``class_index``, and the model's probabilities."""

    heatmap: np.ndarray
    class_index: int
    probability: float
    probabilities: np.ndarray
    method: str
    layer: str  # the layer Grad-CAM read ("input" for saliency), nested models joined with "/"

    @property
    def empty(self) -> bool:
        """Nothing at the layer speaks for the class (Grad-CAM is negative everywhere: what
        decides it is an absence, e.g. no upper garment above a shoe): the map is all zeros."""
        return not self.heatmap.any()


def _conv_types():
    from keras import layers

    return (layers.Conv2D, layers.SeparableConv2D, layers.DepthwiseConv2D, layers.Conv2DTranspose)


def _elementwise_types():
    from keras import layers

    return (layers.BatchNormalization, layers.Activation, layers.ReLU, layers.LeakyReLU, layers.ELU,
            layers.PReLU)


def _convolutions(model, path=()):
    """``(path, layer)`` of every convolution in graph order, inside nested models too."""
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _convolutions(layer, (*path, layer))
        elif isinstance(layer, _conv_types()):
            yield path, layer


def last_conv_layer(model):
    """``(nested models from the outside in, layer)``: the layer Grad-CAM reads. The last
    convolution with a map of at least MIN_SIDE pixels a side, then the normalisation and
    activation layers that follow it directly (the rectified features, where there are any)."""
    found = [(p, l) for p, l in _convolutions(model) if min(l.output.shape[1:3]) >= MIN_SIDE]
    if not found:
        raise ValueError(f"model {model.name} has no convolution with a map of at least {MIN_SIDE}x{MIN_SIDE} "
                         "pixels: Grad-CAM needs one (the saliency method does not)")
    path, layer = found[-1]
    owner = path[-1] if path else model
    order = list(owner.layers)
    i = order.index(layer)
    while i + 1 < len(order) and isinstance(order[i + 1], _elementwise_types()) and order[i + 1].input is order[i].output:
        i += 1
    return list(path), order[i]


def _feature_model(model, path: list, layer):
    """A callable ``x -> (feature map, probabilities)`` sharing ``model``'s weights."""
    import keras

    if not path:
        return keras.Model(model.inputs, [layer.output, model.outputs[0]])
    if len(path) > 1:
        raise ValueError(f"model {model.name}: Grad-CAM reaches one nested model deep, not {len(path)}")
    backbone = path[0]
    split = keras.Model(backbone.inputs, [layer.output, backbone.outputs[0]])
    outer = list(model.layers)[1:]  # after the input layer

    # The outer layers run one after another, eagerly (calling a layer on a real tensor adds no
    # node to the saved graph); the caller checks this gives the model's own output.
    def forward(x, training=False):
        features = None
        for op in outer:
            if op is backbone:
                features, x = split(x, training=training)
            else:
                x = op(x, training=training)
        return features, x

    return forward


class Explainer:
    """Grad-CAM and saliency maps of one Keras model (probabilities out, as every registered
    model has); built once per model, one traced gradient pass for every batch size."""

    def __init__(self, model, card=None, uri: str = ""):
        import tensorflow as tf

        self.card, self.uri = card, uri  # the artifact's, when loaded from one (load_explainer)
        self.shape = tuple(int(d) for d in model.inputs[0].shape[1:])
        try:
            path, layer = last_conv_layer(model)
        except ValueError as exc:  # saliency still works; Grad-CAM says why not when asked
            self.layer, self._no_gradcam = "", str(exc)
            features = lambda x, training=False: (x, model(x, training=training))  # noqa: E731
        else:
            self.layer, self._no_gradcam = "/".join([*(m.name for m in path), layer.name]), ""
            features = _feature_model(model, path, layer)

        def grads(x, target):
            with tf.GradientTape(persistent=True) as tape:
                tape.watch(x)  # a frozen backbone has no trainable weights to record its ops
                fmap, probs = features(x, training=False)
                logp = tf.math.log(tf.maximum(probs, _TINY))
                centred = logp - tf.reduce_mean(logp, axis=-1, keepdims=True)
                cls = tf.where(target < 0, tf.argmax(probs, axis=-1, output_type=tf.int32), target)
                score = tf.gather(centred, cls, batch_dims=1)
            g_map, g_x = tape.gradient(score, fmap), tape.gradient(score, x)
            return probs, cls, fmap, g_map, g_x

        self._grads = tf.function(grads, reduce_retracing=True, input_signature=[
            tf.TensorSpec((None, *self.shape), tf.float32), tf.TensorSpec((None,), tf.int32)])
        probe = tf.random.stateless_uniform((2, *self.shape), seed=(1, 2))
        mine, theirs = features(probe, training=False)[1], model(probe, training=False)
        if not np.allclose(np.asarray(mine), np.asarray(theirs), atol=1e-5):
            raise ValueError(f"model {model.name}: its graph is not a chain around {self.layer}; Grad-CAM "
                             "cannot reach that layer")

    def explain(self, x: np.ndarray, method: str = "gradcam", target=None) -> list[Explanation]:
        """Model inputs (n, *shape) → one :class:`Explanation` each, for ``target`` (class
        indices, one per image) or, by default, the predicted class."""
        import tensorflow as tf

        if method not in METHODS:
            raise ValueError(f"unknown explanation method {method!r}; use one of {', '.join(METHODS)}")
        if method == "gradcam" and self._no_gradcam:
            raise ValueError(self._no_gradcam)
        x = np.asarray(x, np.float32)
        if x.ndim == len(self.shape):
            x = x[None]
        if x.shape[1:] != self.shape:
            raise ValueError(f"the model takes inputs of shape {self.shape}, got {x.shape[1:]}")
        t = np.full(len(x), -1, np.int32) if target is None else np.broadcast_to(np.asarray(target, np.int32), len(x))
        probs, cls, fmap, g_map, g_x = (v.numpy() for v in self._grads(tf.constant(x), tf.constant(t)))
        if method == "gradcam":
            cam = np.maximum((fmap * g_map.mean(axis=(1, 2), keepdims=True)).sum(axis=-1), 0.0)
            maps = [resize_heatmap(c, (self.shape[1], self.shape[0])) for c in cam]
            layer = self.layer
        else:
            maps, layer = list(np.abs(g_x).max(axis=-1)), "input"
        return [Explanation(heatmap=_unit(m), class_index=int(c), probability=float(p[c]), probabilities=p,
                            method=method, layer=layer) for m, c, p in zip(maps, cls, probs)]


def load_explainer(uri: str) -> Explainer:
    """The explainer of a model artifact (a model directory, or ``LATEST`` under a models
    directory), loaded as every consumer loads one (artifacts/model_artifact.py)."""
    from . import model_artifact

    loaded = model_artifact.load(uri)
    if loaded.model is None:  # a quantized variant runs as TFLite: no graph to take gradients through
        raise ValueError(f"model {loaded.card.model_id} is a {getattr(loaded.card, 'variant', 'quantized')} variant "
                         "without a Keras graph: explain the model it was made from")
    return Explainer(loaded.model, card=loaded.card, uri=loaded.uri)


def _unit(m: np.ndarray) -> np.ndarray:
    """Scaled to [0, 1] by its maximum; all zeros when nothing speaks for the class."""
    m = np.nan_to_num(np.asarray(m, np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    top = float(m.max()) if m.size else 0.0
    return np.clip(m / top, 0.0, 1.0).astype(np.float32) if top > 1e-12 else np.zeros_like(m)


def resize_heatmap(heat: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A heatmap at ``size`` (width, height), bilinear, values kept in [0, 1]."""
    heat = np.asarray(heat, np.float32)
    if heat.shape == (size[1], size[0]):
        return heat.copy()
    out = np.asarray(Image.fromarray(heat, mode="F").resize(size, Image.Resampling.BILINEAR), np.float32)
    return np.clip(out, 0.0, 1.0)


def place_heatmap(heat: np.ndarray, box, size: tuple[int, int], turn=(0.0, 0.0, 0.0)) -> np.ndarray:
    """A heatmap of the model input onto the image it came from: ``box`` and ``turn`` are
    :func:`artifacts.preprocess.input_region` (the region the input was made from, in the image
    turned by ``turn``'s degrees about its point when the model deskews), ``size`` the image's
    (width, height); 0 outside the region."""
    w, h = size
    y0, y1, x0, x1 = (int(round(v)) for v in box)
    big = resize_heatmap(heat, (max(1, x1 - x0), max(1, y1 - y0)))
    out = np.zeros((h, w), np.float32)
    sy0, sy1, sx0, sx1 = max(y0, 0), min(y1, h), max(x0, 0), min(x1, w)
    if sy1 > sy0 and sx1 > sx0:
        out[sy0:sy1, sx0:sx1] = big[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0]
    degrees, cx, cy = (float(v) for v in turn)
    if degrees:  # back from the upright frame the input was cut from
        out = np.asarray(Image.fromarray(out, mode="F").rotate(-degrees, resample=Image.Resampling.BILINEAR,
                                                               center=(cx, cy), fillcolor=0.0), np.float32)
    return np.clip(out, 0.0, 1.0)


def colour(heat: np.ndarray) -> np.ndarray:
    """(h, w) heat in [0, 1] → (h, w, 3) uint8 colours (blue cold, red hot)."""
    pos = np.clip(np.asarray(heat, np.float32), 0, 1) * (len(_ANCHORS) - 1)
    lo = np.minimum(pos.astype(int), len(_ANCHORS) - 2)
    f = (pos - lo)[..., None]
    return np.rint(_ANCHORS[lo] * (1 - f) + _ANCHORS[lo + 1] * f).astype(np.uint8)


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = ALPHA) -> np.ndarray:
    """The heatmap's colours blended over ``image`` ((h, w) or (h, w, c) uint8), where it is hot;
    ``heat`` is resized to the image. (h, w, 3) uint8."""
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    rgb = np.repeat(img[..., None], 3, axis=-1) if img.ndim == 2 else img[..., :3]
    heat = resize_heatmap(heat, (rgb.shape[1], rgb.shape[0]))
    a = (alpha * heat)[..., None]
    return np.rint(rgb.astype(np.float32) * (1 - a) + colour(heat).astype(np.float32) * a).astype(np.uint8)


def input_image(x: np.ndarray, scale: float) -> np.ndarray:
    """A model input back to uint8 pixels (what the model saw), (h, w) or (h, w, 3)."""
    arr = np.clip(np.rint(np.asarray(x, np.float32) / scale), 0, 255).astype(np.uint8)
    return arr[..., 0] if arr.shape[-1] == 1 else arr


def upload_overlay(upload: "Upload", heat: np.ndarray, max_side: int) -> np.ndarray:
    """The heatmap over the upload, placed by its input box, at the upload's size (the longer side
    at most ``max_side``)."""
    from .preprocess import _to_8bit, decode_image  # 16-bit and transparent images shown as the model reads them

    w, h = upload.size
    f = min(1.0, max_side / max(w, h))
    size = (max(1, round(w * f)), max(1, round(h * f)))
    img = upload.image
    if img.width < size[0]:  # a JPEG decoded at a fraction of its size for the model: again, to be shown
        img = decode_image(upload.data, max_pixels=w * h, draft_size=size)
    rgb = _to_8bit(img).convert("RGB")
    if rgb.size != size:
        rgb = rgb.resize(size, Image.Resampling.LANCZOS)
    sx, sy = size[0] / upload.image.width, size[1] / upload.image.height
    y0, y1, x0, x1 = upload.box
    degrees, cx, cy = upload.turn
    return overlay(np.asarray(rgb), place_heatmap(heat, (y0 * sy, y1 * sy, x0 * sx, x1 * sx), size,
                                                  (degrees, cx * sx, cy * sy)))


@dataclass
class Upload:
    """An upload as the model takes it: ``image`` decoded for the model (a large JPEG at a
    fraction of its size), the model input made from it by the one preprocessing function, the
    region of ``image`` that input shows (``box``, in ``image`` turned by ``turn``: degrees, x, y,
    when the model deskews), and the upload's own ``size`` (width, height)."""

    data: bytes
    image: Image.Image
    pixels: np.ndarray
    box: tuple[float, float, float, float]
    size: tuple[int, int]
    turn: tuple[float, float, float] = (0.0, 0.0, 0.0)


def read_upload(data: bytes, spec, *, max_pixels: int) -> Upload:
    """Encoded bytes → :class:`Upload`; raises :class:`artifacts.preprocess.ImageDecodeError` for
    an unusable image. The input is exactly ``preprocess_bytes(data, spec)``."""
    from .preprocess import decode_image, draft_size, input_region, to_model_input

    img = decode_image(data, max_pixels=max_pixels, draft_size=draft_size(spec))
    with Image.open(io.BytesIO(data)) as header:  # decoded above: the size before any draft
        size = header.size
    box, turn = input_region(img, spec)
    return Upload(data=data, image=img, pixels=to_model_input(img, spec), box=box, size=size, turn=turn)


def png_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(pixels, np.uint8)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()
