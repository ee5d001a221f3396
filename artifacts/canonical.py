"""The canonical input: what makes a shop photo comparable with a catalogue tile, as one
vectorised function of raw pixels (:func:`canonicalise`), switched step by step by the fields of
:class:`artifacts.preprocess.PreprocessSpec` (the only caller is that module's pipeline).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from .preprocess import PreprocessSpec

# A shop photo and a catalogue tile differ in background (white, coloured, dark, a gradient),
# polarity, framing and contrast. canonicalise() removes those differences: the model sees the
# object's distance from its background (light object on black, Fashion-MNIST's convention),
# cropped to the object, padded to the input's aspect, resized and stretched. A Fashion-MNIST
# tile (black background, object filling the frame, maximum 255) passes through unchanged.

# The stretch never scales a level below this (0-255 units) up to 1.0: a nearly flat image
# (a blank upload, a photo of a white shirt on white) must not turn sensor noise into an object.
MIN_STRETCH_LEVEL = 24.0
# A crop box smaller than this fraction of the image's longer side is noise that survived the
# smoothing, not an object: the image is kept whole.
MIN_CROP_FRACTION = 0.05
# The gradient background replaces the flat one only where it halves the border's median misfit.
GRADIENT_FIT_GAIN = 0.5
# A crop box's edges: map above this fraction of its 99th percentile (and above the noise).
EDGE_LEVEL = 0.03
# An object this close to filling the frame fills it (no crop): of the Fashion-MNIST test tiles,
# 94% span all 28 px along their longer side and 99.6% at least 27; re-cropping by one pixel
# would only rescale them.
FRAME_TOLERANCE = 1.0 / 28.0
# Images per vectorised canonicalise() call in arrays_to_model_input.
CANONICAL_CHUNK = 2048
# Deskew (spec.deskew): the object is turned upright by the angle, within this range, at which
# its bounding box is smallest (Fashion-MNIST's objects are upright, a shop photo may be a little
# rotated), tried in steps of DESKEW_STEP_DEGREES ...
DESKEW_MAX_DEGREES = 20.0
DESKEW_STEP_DEGREES = 1.0
# ... and only where that box is this much smaller than the upright one: a catalogue tile stays
# as it is (an irregular shape, a sandal, can have a slightly smaller box at another angle).
DESKEW_MIN_GAIN = 0.05


def _border_background(x: np.ndarray, gradient: bool) -> np.ndarray:
    """Per-channel background of a batch ``x`` (n, h, w, c), broadcastable against it.

    The median of the border pixels ignores an object that touches the border over less than
    half of it. With ``gradient`` the background may also vary smoothly: a plane (a light
    falling off across the frame) plus a radial term (vignetting), fitted to the border by
    least squares with the outliers (an object touching the border) trimmed twice, and kept
    only where it fits the border clearly better than the flat level (GRADIENT_FIT_GAIN): on a
    flat background, or a catalogue tile whose trousers span its top row, the level stays."""
    n, h, w, c = x.shape
    if h < 3 or w < 3:
        return np.median(x.reshape(n, -1, c), axis=1)[:, None, None, :]
    ys = np.concatenate([np.zeros(w), np.full(w, h - 1), np.arange(h), np.arange(h)]).astype(int)
    xs = np.concatenate([np.arange(w), np.arange(w), np.zeros(h), np.full(h, w - 1)]).astype(int)
    vals = x[:, ys, xs, :]  # (n, P, c): top, bottom, left, right rows
    level = np.median(vals, axis=1)  # (n, c)
    if not gradient:
        return level[:, None, None, :]

    def design(yy, xx):
        yn, xn = yy / (h - 1) - 0.5, xx / (w - 1) - 0.5
        return np.stack([np.ones_like(yn), yn, xn, yn * yn + xn * xn - 0.25], axis=-1).astype(np.float64)

    a = design(ys.astype(np.float64), xs.astype(np.float64))  # (P, 4)
    flat_res = np.abs(vals - level[:, None, :]).mean(axis=-1)  # (n, P)
    flat_misfit = np.median(flat_res, axis=1)
    res = flat_res
    for _ in range(2):
        cut = 3.0 * np.median(res, axis=1, keepdims=True) + 1.0
        wt = (res <= cut).astype(np.float64)  # (n, P)
        ata = np.einsum("pi,np,pj->nij", a, wt, a) + 1e-6 * np.eye(4)
        aty = np.einsum("pi,np,npc->nic", a, wt, vals.astype(np.float64))
        beta = np.linalg.solve(ata, aty)  # (n, 4, c)
        res = np.abs(vals - np.einsum("pi,nic->npc", a, beta)).mean(axis=-1)
    use = np.median(res, axis=1) < GRADIENT_FIT_GAIN * flat_misfit
    if not use.any():
        return level[:, None, None, :]
    grid = design(*np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij"))
    model = np.einsum("hwi,nic->nhwc", grid, beta[use]).astype(np.float32)
    out = np.broadcast_to(level[:, None, None, :], x.shape).copy()
    out[use] = model
    return out


def _foreground_map(x: np.ndarray, background: np.ndarray, channels: int) -> np.ndarray:
    """uint8 distance of each pixel from the background: for a grayscale model the RMS over
    the colour channels (a red garment on a green wall of the same brightness still shows),
    for an RGB model per channel, so the object keeps a colour while the background is black."""
    diff = x - background
    if channels == 1:
        d = np.sqrt(np.mean(diff * diff, axis=-1, keepdims=True))
    else:
        d = np.abs(diff)
    n, h, w, _ = d.shape
    if h >= 3 and w >= 3:
        # A distance is never negative, so sensor noise leaves the background grey (a mean of
        # about 1.6 sigma): its level on the border is the floor, subtracted. A catalogue tile's
        # border is black, floor 0.
        border = np.concatenate([d[:, 0], d[:, -1], d[:, :, 0], d[:, :, -1]], axis=1)
        d = d - np.median(border, axis=1)[:, None, None, :]
    return np.clip(np.rint(d), 0, 255).astype(np.uint8)


def _box_mean(g: np.ndarray, k: int) -> np.ndarray:
    """k×k box mean of a batch (n, h, w), same size (zero padding), by integral images."""
    n, h, w = g.shape
    r = k // 2
    s = np.zeros((n, h + 2 * r + 1, w + 2 * r + 1), np.float64)
    s[:, 1:, 1:] = np.pad(g, ((0, 0), (r, r), (r, r))).cumsum(1).cumsum(2)
    return ((s[:, k:, k:] - s[:, :-k, k:] - s[:, k:, :-k] + s[:, :-k, :-k]) / (k * k)).astype(np.float32)


def _border_noise(g: np.ndarray) -> np.ndarray:
    """Per image of ``g`` (n, h, w): a level the background's noise stays under, median + 6
    median absolute deviations of the border (0 on a clean catalogue tile)."""
    n, h, w = g.shape
    if h < 3 or w < 3:
        return np.zeros(n, np.float32)
    border = np.concatenate([g[:, 0], g[:, -1], g[:, :, 0], g[:, :, -1]], axis=1)
    med = np.median(border, axis=1)
    return med + 6.0 * np.median(np.abs(border - med[:, None]), axis=1)


def _object_boxes(m: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """(n, 4) boxes ``y0, y1, x0, x1`` around the object in each map of ``m`` (n, h, w, c).

    Foreground is the map, smoothed over a window of 1/32 of the image (isolated noise and JPEG
    ringing average out; a thin strap of a bright garment does not), above ``crop_threshold``
    of its 99th percentile; the box's edges are then taken from the unsmoothed map inside it.
    The box grows by ``crop_margin`` of its longer side, within the image. No object, or a
    speck: the whole image."""
    n, h, w, _ = m.shape
    g = m.max(axis=-1).astype(np.float32)
    mask, ref = _object_mask(m, spec)
    thr = (spec.crop_threshold * ref)[:, None, None]
    rows, cols = mask.any(axis=2), mask.any(axis=1)
    y0, y1 = rows.argmax(axis=1), h - rows[:, ::-1].argmax(axis=1)
    x0, x1 = cols.argmax(axis=1), w - cols[:, ::-1].argmax(axis=1)
    # The smoothed mask reaches k/2 pixels past a strong edge: a margin that depends on the
    # image's size, not the object's. The unsmoothed map, within that box, gives the edge, at
    # a lower level that still clears the border's noise (median + 6 MADs: a Fashion-MNIST
    # tile's faint outermost pixels count, a noisy photo's background does not).
    yy, xx = np.arange(h)[None, :, None], np.arange(w)[None, None, :]
    inside = ((yy >= y0[:, None, None]) & (yy < y1[:, None, None]) & (xx >= x0[:, None, None])
              & (xx < x1[:, None, None]))
    fine = np.minimum(thr, np.maximum(EDGE_LEVEL * ref, _border_noise(g))[:, None, None])
    exact = (g > fine) & inside
    er, ec = exact.any(axis=2), exact.any(axis=1)
    found = er.any(axis=1)
    y0 = np.where(found, er.argmax(axis=1), y0)
    y1 = np.where(found, h - er[:, ::-1].argmax(axis=1), y1)
    x0 = np.where(found, ec.argmax(axis=1), x0)
    x1 = np.where(found, w - ec[:, ::-1].argmax(axis=1), x1)
    margin = np.rint(spec.crop_margin * np.maximum(y1 - y0, x1 - x0)).astype(int)
    boxes = np.stack([np.maximum(y0 - margin, 0), np.minimum(y1 + margin, h),
                      np.maximum(x0 - margin, 0), np.minimum(x1 + margin, w)], axis=1)
    side = np.maximum(boxes[:, 1] - boxes[:, 0], boxes[:, 3] - boxes[:, 2])
    whole = ~rows.any(axis=1) | (ref < 1.0) | (side < MIN_CROP_FRACTION * max(h, w))
    boxes[whole] = (0, h, 0, w)
    return boxes


def _fit_aspect(boxes: np.ndarray, h: int, w: int, spec: PreprocessSpec) -> np.ndarray:
    """Grow each box about its centre to the model input's aspect (square for square inputs);
    the part outside the image is background. A box that then spans the image in either
    direction, to within FRAME_TOLERANCE (the object fills the frame, as in a catalogue tile),
    becomes the image itself, fitted the same way, so such an image is neither shifted nor
    shrunk."""
    aspect = spec.width / spec.height
    out = boxes.copy()
    for i, (y0, y1, x0, x1) in enumerate(boxes):
        bh, bw = y1 - y0, x1 - x0
        th, tw = (bh, int(round(bh * aspect))) if bw < bh * aspect else (int(round(bw / aspect)), bw)
        if th >= h * (1 - FRAME_TOLERANCE) or tw >= w * (1 - FRAME_TOLERANCE):
            y0, y1, x0, x1, bh, bw = 0, h, 0, w, h, w
            th, tw = (h, int(round(h * aspect))) if w < h * aspect else (int(round(w / aspect)), w)
        ny0, nx0 = y0 - (th - bh) // 2, x0 - (tw - bw) // 2
        out[i] = (ny0, ny0 + th, nx0, nx0 + tw)
    return out


def _crop_resize(m: np.ndarray, box, spec: PreprocessSpec) -> np.ndarray:
    """One map (h, w, c) cut to ``box`` (zero = background outside the image) and resized."""
    h, w, c = m.shape
    y0, y1, x0, x1 = (int(v) for v in box)
    if (y0, y1, x0, x1) == (0, h, 0, w):
        canvas = m
    else:
        canvas = np.zeros((y1 - y0, x1 - x0, c), np.uint8)
        sy0, sy1, sx0, sx1 = max(y0, 0), min(y1, h), max(x0, 0), min(x1, w)
        canvas[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = m[sy0:sy1, sx0:sx1]
    if canvas.shape[:2] == (spec.height, spec.width):
        return canvas
    img = Image.fromarray(canvas[..., 0] if c == 1 else canvas, mode="L" if c == 1 else "RGB")
    return np.asarray(img.resize((spec.width, spec.height), Image.Resampling.LANCZOS)).reshape(
        spec.height, spec.width, c)


def _object_mask(m: np.ndarray, spec: PreprocessSpec) -> tuple[np.ndarray, np.ndarray]:
    """The object's pixels in each map of ``m`` (n, h, w, c), smoothed over a window of 1/32 of
    the image and above ``crop_threshold`` of the smoothed map's 99th percentile (isolated noise
    and JPEG ringing average out; a thin strap of a bright garment does not), and that
    percentile (n,)."""
    n, h, w, _ = m.shape
    g = m.max(axis=-1).astype(np.float32)
    k = max(3, int(round(max(h, w) / 32)) | 1)
    smooth = _box_mean(g, k)
    ref = np.percentile(smooth.reshape(n, -1), 99, axis=1)
    return smooth > (spec.crop_threshold * ref)[:, None, None], ref


def _box_areas(mask: np.ndarray, t: np.ndarray) -> np.ndarray:
    """(n, A) area of the box around each mask's (n, h, w) pixels, with its sides along the
    directions ``t`` (A radians, float32); infinite where a mask is empty."""
    n, h, w = mask.shape
    # A linear function of x is extreme, along each row, at the row's leftmost or rightmost
    # object pixel: those 2h points give the box at every angle (not all h*w pixels).
    rows = mask.any(axis=2)  # (n, h)
    left = mask.argmax(axis=2).astype(np.float32)
    right = (w - 1 - mask[:, :, ::-1].argmax(axis=2)).astype(np.float32)
    xs = np.concatenate([left, right], axis=1)[:, None, :]  # (n, 1, 2h)
    ys = np.tile(np.arange(h, dtype=np.float32), 2)[None, None, :]
    valid = np.concatenate([rows, rows], axis=1)[:, None, :]
    cos, sin = np.cos(t)[None, :, None], np.sin(t)[None, :, None]
    # Box side along a direction t of the image axes (y grows downwards): the extent of
    # x cos t - y sin t and x sin t + y cos t over the object's pixels.
    sides = []
    for proj in (xs * cos - ys * sin, xs * sin + ys * cos):  # (n, A, 2h)
        sides.append(np.where(valid, proj, -np.inf).max(axis=2) - np.where(valid, proj, np.inf).min(axis=2) + 1)
    area = sides[0] * sides[1]
    return np.where(np.isfinite(area), area, np.inf)


def deskew_angles(m: np.ndarray, spec: PreprocessSpec) -> tuple[np.ndarray, np.ndarray]:
    """(n,) degrees (counter-clockwise, Pillow's convention) that turn the object in each map of
    ``m`` (n, h, w, c) upright, and (n, 2) centres ``x, y`` to turn it about (its box's): the
    angle within ±DESKEW_MAX_DEGREES whose axis-aligned box around the object's pixels is
    smallest, kept only where that box is DESKEW_MIN_GAIN smaller than the unrotated one; 0
    where there is no object."""
    n, h, w, _ = m.shape
    mask, ref = _object_mask(m, spec)
    steps = np.arange(-DESKEW_MAX_DEGREES, DESKEW_MAX_DEGREES + DESKEW_STEP_DEGREES / 2, DESKEW_STEP_DEGREES)
    t = np.deg2rad(steps).astype(np.float32)
    rows = mask.any(axis=2)
    area = _box_areas(mask, t)
    upright = int(np.argmin(np.abs(steps)))
    best = area.argmin(axis=1)
    with np.errstate(invalid="ignore"):
        gain = 1.0 - area[np.arange(n), best] / area[:, upright]
    use = mask.reshape(n, -1).sum(axis=1) >= 10
    use &= (ref >= 1.0) & np.isfinite(gain) & (gain > DESKEW_MIN_GAIN)
    cols = mask.any(axis=1)
    cy = (rows.argmax(axis=1) + h - rows[:, ::-1].argmax(axis=1)) / 2.0
    cx = (cols.argmax(axis=1) + w - cols[:, ::-1].argmax(axis=1)) / 2.0
    # The box is smallest where the axes follow the object's, at its tilt: turning back undoes it.
    return np.where(use, -steps[best], 0.0).astype(np.float32), np.stack([cx, cy], axis=1)


def _rotate_maps(m: np.ndarray, angles: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Each map of ``m`` (n, h, w, c) turned by its angle about its centre, same size (the
    object stays where it was, so it rarely leaves the frame), background (0) where the turn
    brings in pixels from outside."""
    out = m.copy()
    for i in np.flatnonzero(angles):
        centre = (float(centres[i, 0]), float(centres[i, 1]))
        for ch in range(m.shape[-1]):
            img = Image.fromarray(m[i, ..., ch], mode="L")
            out[i, ..., ch] = np.asarray(img.rotate(float(angles[i]), resample=Image.Resampling.BILINEAR,
                                                    center=centre, fillcolor=0))
    return out


def _map_and_boxes(pixels: np.ndarray, spec: PreprocessSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Steps 1-4 of :func:`canonicalise`: the foreground maps (deskewed where the spec says),
    the box each is cut to, and each map's turn (n, 3): degrees, centre x, centre y."""
    n, h, w, _ = pixels.shape
    if spec.channels == 3 and pixels.shape[-1] == 1:
        pixels = np.repeat(pixels, 3, axis=-1)
    m = _foreground_map(pixels.astype(np.float32), _border_background(pixels.astype(np.float32),
                        spec.background_gradient), spec.channels)
    turns = np.zeros((n, 3), np.float32)
    if spec.deskew:
        angles, centres = deskew_angles(m, spec)
        m = _rotate_maps(m, angles, centres)
        turns = np.concatenate([angles[:, None], centres], axis=1).astype(np.float32)
    boxes = _object_boxes(m, spec) if spec.crop else np.tile(np.array([0, h, 0, w]), (n, 1))
    if spec.pad_square:
        boxes = _fit_aspect(boxes, h, w, spec)
    return m, boxes, turns


def input_regions(pixels: np.ndarray, spec: PreprocessSpec) -> tuple[np.ndarray, np.ndarray]:
    """Where :func:`canonicalise` takes each model input from in each image (n, h, w, c),
    computed the same way: (n, 4) boxes ``y0, y1, x0, x1`` (a box may reach past the image:
    padding with background) and (n, 3) turns ``degrees, x, y`` (the box is in the image turned
    by that angle about that centre; 0 degrees without deskew). For mapping what a model saw
    back onto the image (artifacts/explain.py)."""
    _, boxes, turns = _map_and_boxes(pixels, spec)
    return boxes, turns


def canonicalise(pixels: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Canonical input of a batch of uint8 images (n, h, w, c), c = 1 or 3, as uint8
    (n, *spec.input_shape); the steps are the spec's switches, in this order:

    1. background: per-channel median of the border (``background_gradient``: a plane plus a
       radial falloff fitted to the border, where it fits clearly better);
    2. foreground map = distance from it, less its level on the border (the noise floor)
       (polarity-free: a dark garment on white, a light one on
       black, either on a coloured wall all become a light object on black); a grayscale model
       gets the RMS over colour channels, an RGB model each channel's distance (so colour is
       kept relative to the background, and the background is black); ``deskew``: the map
       turned upright (:func:`deskew_angles`);
    3. ``crop`` to the object's box with a margin; 4. ``pad_square``: pad to the input's aspect
       with background (else the crop is stretched); 5. resize (LANCZOS);
    6. ``stretch_percentile``: that percentile of the map becomes 255.

    Both the single-image and the vectorised batch paths call this, so a tile in training and
    the same tile uploaded to the service give the same input."""
    n, h, w, _ = pixels.shape
    m, boxes, _ = _map_and_boxes(pixels, spec)
    if (h, w) == (spec.height, spec.width):
        out = m.copy()
        todo = np.flatnonzero((boxes != np.array([0, h, 0, w])).any(axis=1))
    else:
        out = np.empty((n, *spec.input_shape), np.uint8)
        todo = range(n)
    for i in todo:
        out[i] = _crop_resize(m[i], boxes[i], spec)
    if spec.stretch_percentile > 0 and n:
        level = np.percentile(out.reshape(n, -1), spec.stretch_percentile, axis=1)
        gain = 255.0 / np.maximum(level, MIN_STRETCH_LEVEL)
        out = np.clip(np.rint(out * gain[:, None, None, None]), 0, 255).astype(np.uint8)
    return out
