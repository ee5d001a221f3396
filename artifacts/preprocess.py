"""The one image-preprocessing function: bytes → model input, identical in training, embedding
and serving.

A model card carries a :class:`PreprocessSpec`; every consumer turns images into model inputs
with :func:`to_model_input` (one image) or :func:`arrays_to_model_input` (a training batch of
raw pixel arrays), so the pixels a model sees never depend on which part of the system asked.

Fashion-MNIST is light garments on a black background, each filling its tile; shop photos are
garments of any colour on white, coloured or dark backgrounds, off-centre, tinted, unevenly lit.
Two pipelines, chosen by the spec the model card records:

- old (every field at its default, so cards written before the canonical fields existed): a
  light-bordered image is inverted (``invert_light_background``) and padded to the input size;
- canonical (``PreprocessSpec.canonical()``, what tune/training.py gives new models): the
  distance of each pixel from a background estimated on the border, turned upright, cropped to the object,
  padded to a square, resized and stretched (:func:`canonicalise`; benchmarks/preprocess_ablation.py
  measures each step). A Fashion-MNIST tile comes out (nearly) as it went in.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .canonical import CANONICAL_CHUNK, canonicalise, input_regions

# Batch jobs read catalogue images (a shop's own, up to large studio shots); the service's
# upload limit is lower (serve/args.py max_pixels).
DEFAULT_MAX_PIXELS = 40_000_000
# A JPEG is decoded at no less than this multiple of the model's input size (see decode_image).
DRAFT_FACTOR = 4


class ImageDecodeError(ValueError):
    """An input is not a usable image; ``reason`` is a short, user-facing explanation."""

    def __init__(self, reason: str, *, too_large: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.too_large = too_large  # over the pixel limit (a service answers 413, not 400)


@dataclass(frozen=True)
class PreprocessSpec:
    height: int = 28
    width: int = 28
    channels: int = 1  # 1 = grayscale, 3 = RGB
    invert_light_background: bool = True  # old pipeline only; the foreground map has no polarity
    # Inputs are scaled to [0, 1]; backbone-specific normalisation lives inside the model.
    scale: float = 1.0 / 255.0
    # Canonical input (see canonicalise()). Every default is the old behaviour, so a model card
    # written before these fields existed keeps exactly the preprocessing it was trained with;
    # new models get PreprocessSpec.canonical().
    foreground_map: bool = False  # model sees |pixel - border background|: light object on black
    background_gradient: bool = False  # background may be a gradient / vignetting fitted to the border
    crop: bool = False  # crop to the object's bounding box ...
    crop_threshold: float = 0.1  # ... of map > this × the map's 99th percentile ...
    # ... grown by this fraction of its longer side each way. 0 by default: a Fashion-MNIST
    # object spans the whole tile along its longer side (94% of test tiles), so any margin
    # makes a photo's object smaller than the catalogue's (0.02 already cost 0.06 correlation
    # with the tile in tests/artifacts/test_canonical.py); the smoothing in canonical._object_boxes
    # still keeps faint edges inside the box.
    crop_margin: float = 0.0
    pad_square: bool = False  # pad the crop to a square with background (else stretch it)
    stretch_percentile: float = 0.0  # > 0: this percentile of the resized map becomes 1.0
    # Turn the object upright before cropping (canonical.deskew_angles): a photo taken a little
    # askew; an upright catalogue tile is left as it is. Off in cards written before it existed.
    deskew: bool = False

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, self.channels)

    @property
    def is_canonical(self) -> bool:
        return self.foreground_map

    @classmethod
    def canonical(cls, **kw) -> "PreprocessSpec":
        """The pipeline new models train with: every canonicalisation step on.

        The stretch goes to the maximum (percentile 100) of the *resized* map, where resizing
        has already averaged sensor noise away: Fashion-MNIST's own conversion scaled every
        tile to a maximum of 255 (all test tiles have max 254 or 255), so tiles pass unchanged,
        whereas a 99th-percentile stretch would brighten half of them (their p99 is 150-250).
        Deskew turns 0.2% of the test tiles and lifts a tiles-only model's photo accuracy by
        6.5 points (docs/RESULTS.md, "Deskew")."""
        base = dict(foreground_map=True, background_gradient=True, crop=True, pad_square=True,
                    stretch_percentile=100.0, deskew=True)
        return cls(**{**base, **kw})

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessSpec":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    @classmethod
    def for_input_shape(cls, shape, *, canonical: bool = False, **kw) -> "PreprocessSpec":
        h, w, c = shape
        make = cls.canonical if canonical else cls
        return make(height=int(h), width=int(w), channels=int(c), **kw)


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, draft_size: tuple[int, int] | None = None
                 ) -> Image.Image:
    """Decode bytes into a loaded PIL image (first frame of an animation), or raise
    :class:`ImageDecodeError` with a reason: empty, not an image, truncated, or too many pixels.

    With ``draft_size`` a JPEG is decoded at the smallest of 1/1, 1/2, 1/4, 1/8 scale that still
    covers it (libjpeg's DCT scaling): a 24-megapixel phone photo meant for a 28×28 model costs a
    fraction of a full decode. Other formats have no such mode and are decoded whole."""
    if not data:
        raise ImageDecodeError("empty file")
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageDecodeError("not a recognised image format") from None
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"image too large: {exc}", too_large=True) from None
    except Exception as exc:  # Pillow raises many types for garbage headers
        raise ImageDecodeError(f"unreadable image header: {exc}") from None
    w, h = img.size
    if w < 1 or h < 1:
        raise ImageDecodeError(f"image has no pixels ({w}x{h})")
    if w * h > max_pixels:
        raise ImageDecodeError(f"image too large: {w}x{h} = {w * h} pixels, limit {max_pixels}", too_large=True)
    try:
        img.seek(0)
        if draft_size is not None and img.format == "JPEG":
            img.draft(img.mode, draft_size)
        img.load()
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"image too large: {exc}", too_large=True) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageDecodeError(f"truncated or corrupt image data: {exc}") from None
    return img


def _to_8bit(img: Image.Image) -> Image.Image:
    """Bring every Pillow mode to L or RGB, scaling 16/32-bit data instead of clipping it, and
    compositing transparency onto white (what a shop page shows behind a cut-out)."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        return Image.fromarray(np.clip(arr / hi * 255.0, 0, 255).astype(np.uint8), mode="L")
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Pillow converts premultiplied "La" only to "LA"; every other alpha mode goes to RGBA directly.
        rgba = (img.convert("LA") if mode == "La" else img).convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    if mode in ("L", "RGB"):
        return img
    if mode == "1":
        return img.convert("L")
    return img.convert("RGB")  # CMYK, YCbCr, LAB, HSV


def _border_mean(arr: np.ndarray) -> float:
    """Mean of the outermost pixels, in [0, 255]; the background of a product shot."""
    if arr.shape[0] < 3 or arr.shape[1] < 3:
        return float(arr.mean())
    border = np.concatenate([arr[0].ravel(), arr[-1].ravel(), arr[:, 0].ravel(), arr[:, -1].ravel()])
    return float(border.mean())


def to_model_input(img: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """A decoded image → float32 array of ``spec.input_shape``."""
    img = _to_8bit(img)
    if spec.is_canonical:
        arr = np.asarray(img)
        arr = arr[None, ..., None] if arr.ndim == 2 else arr[None]
        return canonicalise(arr, spec)[0].astype(np.float32) * np.float32(spec.scale)
    img = img.convert("L" if spec.channels == 1 else "RGB")
    arr = np.asarray(img)
    if spec.invert_light_background and _border_mean(arr) > 127.5:
        img = ImageOps.invert(img)
        arr = np.asarray(img)
    if img.size != (spec.width, spec.height):
        fill = int(_border_mean(arr)) if spec.channels == 1 else tuple(int(v) for v in arr[0, 0])
        # Fit inside the target keeping the aspect ratio, as Fashion-MNIST's own pipeline did.
        img = ImageOps.pad(img, (spec.width, spec.height), method=Image.Resampling.LANCZOS, color=fill)
        arr = np.asarray(img)
    out = arr.astype(np.float32) * np.float32(spec.scale)
    if out.ndim == 2:
        out = out[..., None]
    return out


def input_box(img: Image.Image, spec: PreprocessSpec) -> tuple[float, float, float, float]:
    """``(y0, y1, x0, x1)`` in ``img``'s pixels: the region :func:`to_model_input` turns into the
    model input (the canonical crop, or the old pipeline's letterbox; it may reach past the image
    where the input is padding). What a model saw maps back onto the image through it."""
    return input_region(img, spec)[0]


def input_region(img: Image.Image, spec: PreprocessSpec) -> tuple[tuple[float, ...], tuple[float, float, float]]:
    """:func:`input_box` and the turn ``(degrees, x, y)`` it is taken after: a deskewing spec
    turns the image by that angle about that point first (counter-clockwise, Pillow's
    convention); ``(0, 0, 0)`` otherwise."""
    img = _to_8bit(img)
    w, h = img.size
    if spec.is_canonical:
        arr = np.asarray(img)
        arr = arr[None, ..., None] if arr.ndim == 2 else arr[None]
        boxes, turns = input_regions(arr, spec)
        return tuple(float(v) for v in boxes[0]), tuple(float(v) for v in turns[0])
    none = (0.0, 0.0, 0.0)
    if (w, h) == (spec.width, spec.height):
        return (0.0, float(h), 0.0, float(w)), none
    # ImageOps.pad: fit inside keeping the aspect ratio, centred; input pixels map to image pixels / s.
    s = min(spec.width / w, spec.height / h)
    rw, rh = max(1, round(w * s)), max(1, round(h * s))
    x_off, y_off = round((spec.width - rw) / 2), round((spec.height - rh) / 2)
    sx, sy = rw / w, rh / h
    return (-y_off / sy, (spec.height - y_off) / sy, -x_off / sx, (spec.width - x_off) / sx), none


def draft_size(spec: PreprocessSpec) -> tuple[int, int]:
    """The smallest decode a model input is made from: DRAFT_FACTOR × its size, so the LANCZOS
    resize still averages several source pixels into each input pixel."""
    return (DRAFT_FACTOR * spec.width, DRAFT_FACTOR * spec.height)


def header_pixels(data: bytes) -> int:
    """Width × height from the image header alone (no pixel data decoded); 0 when the header is
    unreadable (the full decode then says why). For budgets over many images in one request."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
    except Exception:  # Pillow raises many types for garbage headers
        return 0
    return max(0, w) * max(0, h)


def preprocess_bytes(data: bytes, spec: PreprocessSpec, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Encoded image bytes → model input; raises :class:`ImageDecodeError` for bad input."""
    return to_model_input(decode_image(data, max_pixels=max_pixels, draft_size=draft_size(spec)), spec)


def preprocess_or_reason(data: bytes, spec: PreprocessSpec, *, max_pixels: int = DEFAULT_MAX_PIXELS):
    """``(model input, None)``, or ``(None, reason)`` for an unusable image: for batches, where
    one odd image must not fail the others."""
    try:
        return preprocess_bytes(data, spec, max_pixels=max_pixels), None
    except ImageDecodeError as exc:
        return None, exc.reason
    except Exception as exc:  # Pillow raises many types on odd files
        return None, f"cannot preprocess image: {type(exc).__name__}: {exc}"


def preprocess_many(datas, spec: PreprocessSpec, *, max_pixels: int = DEFAULT_MAX_PIXELS):
    """Many encoded images → ``(inputs (n, *spec.input_shape) float32, reasons)``: the result of
    :func:`preprocess_or_reason` on each (``reasons[i]`` is None where ``inputs[i]`` is the image's
    input, else why not; ``datas[i]`` None is skipped with reason None left to the caller).

    With a canonical spec the decoded images are grouped by shape and each group goes through
    :func:`canonicalise` at once: the same function on the same pixels, so the same inputs,
    without paying numpy's per-call overhead once per image (a 28x28 catalogue tile costs ~2 ms
    alone, a fraction of that in a batch; docs/BENCHMARKS.md, "Scale")."""
    n = len(datas)
    inputs = np.zeros((n, *spec.input_shape), np.float32)
    reasons: list[str | None] = [None] * n
    if not spec.is_canonical:
        for i, data in enumerate(datas):
            if data is not None:
                x, reasons[i] = preprocess_or_reason(data, spec, max_pixels=max_pixels)
                if x is not None:
                    inputs[i] = x
        return inputs, reasons
    groups: dict[tuple, list[tuple[int, np.ndarray]]] = {}
    for i, data in enumerate(datas):
        if data is None:
            continue
        try:
            arr = np.asarray(_to_8bit(decode_image(data, max_pixels=max_pixels, draft_size=draft_size(spec))))
        except ImageDecodeError as exc:
            reasons[i] = exc.reason
            continue
        except Exception as exc:  # Pillow raises many types on odd files
            reasons[i] = f"cannot preprocess image: {type(exc).__name__}: {exc}"
            continue
        arr = arr[..., None] if arr.ndim == 2 else arr
        groups.setdefault(arr.shape, []).append((i, arr))
    scale = np.float32(spec.scale)
    for members in groups.values():
        for start in range(0, len(members), CANONICAL_CHUNK):
            part = members[start:start + CANONICAL_CHUNK]
            rows = [i for i, _ in part]
            try:
                inputs[rows] = canonicalise(np.stack([a for _, a in part]), spec).astype(np.float32) * scale
            except Exception:  # never let one odd image fail the others: one at a time, with reasons
                for i, _ in part:
                    x, reasons[i] = preprocess_or_reason(datas[i], spec, max_pixels=max_pixels)
                    if x is not None:
                        inputs[i] = x
    return inputs, reasons


def arrays_to_model_input(pixels: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """A batch of uint8 images (N, H, W) or (N, H, W, C) → model inputs (N, *spec.input_shape).

    Same result as :func:`to_model_input` on each image; when the pixels already have the
    target size and channel count (Fashion-MNIST into a 28×28×1 model) it runs vectorised.
    """
    if pixels.ndim == 3:
        pixels = pixels[..., None]
    n, h, w, c = pixels.shape
    if spec.is_canonical and c in (1, 3):
        # The same canonicalise() as one image at a time, vectorised over chunks (memory stays
        # bounded: a 28x28 chunk is a few MB); only tiles whose object needs a crop loop.
        result = np.empty((n, *spec.input_shape), dtype=np.float32)
        for start in range(0, n, CANONICAL_CHUNK):
            chunk = canonicalise(np.ascontiguousarray(pixels[start:start + CANONICAL_CHUNK]), spec)
            result[start:start + len(chunk)] = chunk.astype(np.float32) * np.float32(spec.scale)
        return result
    if (h, w, c) == spec.input_shape:
        out = pixels.astype(np.float32) * np.float32(spec.scale)
        if spec.invert_light_background and n:
            border = np.concatenate(
                [pixels[:, 0].reshape(n, -1), pixels[:, -1].reshape(n, -1),
                 pixels[:, :, 0].reshape(n, -1), pixels[:, :, -1].reshape(n, -1)], axis=1)
            light = border.mean(axis=1) > 127.5
            if light.any():
                out[light] = np.float32(255 * spec.scale) - out[light]
        return out
    result = np.empty((n, *spec.input_shape), dtype=np.float32)
    for i in range(n):
        arr = pixels[i]
        img = Image.fromarray(arr[..., 0] if c == 1 else arr, mode="L" if c == 1 else "RGB")
        result[i] = to_model_input(img, spec)
    return result
