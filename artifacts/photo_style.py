"""Render a Fashion-MNIST tile (28×28 uint8, light object on black) as an RGB product photo.

    from artifacts.photo_style import photo_jpeg, render_photo
    img = render_photo(tile, np.random.default_rng(7), size=128)   # PIL RGB, 128×128
    data = photo_jpeg(tile, np.random.default_rng(7))              # the same photo as JPEG bytes

This stands in for a shop's product photos, which cannot be downloaded here. Every parameter is
drawn from ``rng`` over a wide range, so no model can fit one fixed perturbation; acceptance uses
photo-style queries from a recipe that is *not* this one, so do not narrow the ranges to flatter a
model. Deterministic: the same tile and the same seed give the same pixels.

The recipe (``sample_params`` draws it, ``render`` applies it), with each range:

- **Background** (``background_kind``, weights): ``white`` 0.25 (grey 0.94–1.0), ``light`` 0.20
  (off-white / light grey 0.75–0.94, hue tint saturation ≤ 0.06), ``light-colour`` 0.20 (HSV
  saturation 0.10–0.35, value 0.80–1.0), ``saturated`` 0.15 (saturation 0.50–1.0, value
  0.40–0.95), ``dark`` 0.20 (value 0.0–0.25, saturation ≤ 0.4). Half the backgrounds get a
  linear gradient (random direction, ±0–15 %).
- **Garment colour** (``garment_kind``): ``dark`` 0.30 (value 0.03–0.30), ``mid`` 0.25 (value
  0.30–0.65, saturation ≤ 0.6), ``saturated`` 0.25 (saturation 0.55–1.0, value 0.45–1.0),
  ``light`` 0.20 (value 0.75–1.0, saturation ≤ 0.25). A colour closer than 0.2 (RGB distance,
  0–1 scale) to the background is redrawn (up to 20 times) — a photographer keeps the product
  visible — so light garments land on dark or saturated backgrounds.
- **Garment texture**: tile intensity I shades the colour, ``colour · (1 − k·(1 − I))``
  (``positive``) or ``colour · (1 − k·I)`` (``negative``, closer to the source photo, which
  Fashion-MNIST stored inverted), 50/50, shading strength k 0.15–0.8; 30 % get stripes
  (period 4–16 px, amplitude 0.04–0.18, any angle), 20 % a blotchy fabric texture (amplitude
  0.03–0.12).
- **Alpha**: ``clip(I / t, 0, 1)``, t 0.15–0.5, composites the garment over the background.
- **Geometry**: the tile is upscaled (LANCZOS or bicubic, 50/50) to 0.55–0.95 of the canvas side,
  rotated ±15° (bicubic), and its centre offset anywhere the object stays in the canvas (up to
  4 % of the side may be cut off).
- **Shadow**: 40 % on non-dark backgrounds, the alpha blurred (radius 1.5–6 px), shifted 0–6 px,
  darkening by 0.08–0.35.
- **Lighting**: per-channel gains 0.85–1.15 (colour tint), brightness −0.10…+0.10, contrast
  0.75–1.25 (about mid grey), gamma 0.7–1.4, vignetting on 40 % (corner darkening 0–35 %).
- **Blur**: 30 %, gaussian radius 0.3–1.2 px.
- **Sensor noise**: gaussian, σ 0–10/255 per pixel and channel.
- **JPEG** (``photo_jpeg``): quality 60–95, 4:2:0 chroma subsampling.
"""

from __future__ import annotations

import colorsys
import io
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageFilter

BACKGROUND_KINDS = ("white", "light", "light-colour", "saturated", "dark")
_BACKGROUND_WEIGHTS = (0.25, 0.20, 0.20, 0.15, 0.20)
GARMENT_KINDS = ("dark", "mid", "saturated", "light")
_GARMENT_WEIGHTS = (0.30, 0.25, 0.25, 0.20)
JPEG_QUALITY = (60, 95)
_MIN_COLOUR_DISTANCE = 0.2


@dataclass(frozen=True)
class PhotoParams:
    """Everything one photo is made from; ``sample_params`` draws it, ``render`` applies it."""

    size: int
    background_kind: str
    background: tuple[float, float, float]
    gradient: float  # 0 = flat; relative brightness change across the canvas
    gradient_angle: float  # radians
    garment_kind: str
    garment: tuple[float, float, float]
    shading: str  # "positive" | "negative"
    shading_strength: float
    texture: str  # "none" | "stripes" | "fabric"
    texture_amplitude: float
    stripe_period: float
    stripe_angle: float
    alpha_threshold: float
    resample: str  # "lanczos" | "bicubic"
    fraction: float  # object side / canvas side
    angle: float  # degrees
    offset: tuple[float, float]  # in [-1, 1] of the free room on each axis
    shadow: float  # 0 = none; else darkening strength
    shadow_radius: float
    shadow_shift: tuple[int, int]
    gains: tuple[float, float, float]
    brightness: float
    contrast: float
    gamma: float
    vignette: float
    blur: float  # 0 = none; else gaussian radius in px
    noise_sigma: float  # on the 0–1 scale
    jpeg_quality: int
    noise_seed: int


def _hsv(h: float, s: float, v: float) -> tuple[float, float, float]:
    return tuple(float(c) for c in colorsys.hsv_to_rgb(h, s, v))


# Saturation and value ranges (HSV, hue uniform) per kind; the last of each table is the default.
_BACKGROUND_SV = {"light": ((0.0, 0.06), (0.75, 0.94)), "light-colour": ((0.10, 0.35), (0.80, 1.0)),
                  "saturated": ((0.50, 1.0), (0.40, 0.95)), "dark": ((0.0, 0.4), (0.0, 0.25))}
_GARMENT_SV = {"dark": ((0.0, 0.5), (0.03, 0.30)), "mid": ((0.0, 0.6), (0.30, 0.65)),
               "saturated": ((0.55, 1.0), (0.45, 1.0)), "light": ((0.0, 0.25), (0.75, 1.0))}


def _colour(table: dict, kind: str, rng: np.random.Generator) -> tuple[float, float, float]:
    (s_lo, s_hi), (v_lo, v_hi) = table.get(kind, list(table.values())[-1])
    # Drawn hue, saturation, value in that order: the order fixes a seed's colours.
    h = rng.uniform()
    sat = rng.uniform(s_lo, s_hi)
    return _hsv(h, sat, rng.uniform(v_lo, v_hi))


def _background(kind: str, rng: np.random.Generator) -> tuple[float, float, float]:
    if kind == "white":
        g = rng.uniform(0.94, 1.0)
        return (g, g, g)
    return _colour(_BACKGROUND_SV, kind, rng)


def _garment(kind: str, rng: np.random.Generator) -> tuple[float, float, float]:
    return _colour(_GARMENT_SV, kind, rng)


def sample_params(rng: np.random.Generator, *, size: int = 128) -> PhotoParams:
    """Draw one photo's parameters (the ranges are in the module docstring)."""
    if size < 16:
        raise ValueError(f"size {size} is too small for a photo (at least 16)")
    bg_kind = BACKGROUND_KINDS[rng.choice(len(BACKGROUND_KINDS), p=_BACKGROUND_WEIGHTS)]
    bg = _background(bg_kind, rng)
    for _ in range(20):
        g_kind = GARMENT_KINDS[rng.choice(len(GARMENT_KINDS), p=_GARMENT_WEIGHTS)]
        garment = _garment(g_kind, rng)
        if np.linalg.norm(np.subtract(garment, bg)) >= _MIN_COLOUR_DISTANCE:
            break
    texture = str(rng.choice(["none", "stripes", "fabric"], p=[0.5, 0.3, 0.2]))
    shadow = float(rng.uniform(0.08, 0.35)) if bg_kind != "dark" and rng.uniform() < 0.4 else 0.0
    return PhotoParams(
        size=size,
        background_kind=bg_kind,
        background=bg,
        gradient=float(rng.uniform(0.0, 0.15)) if rng.uniform() < 0.5 else 0.0,
        gradient_angle=float(rng.uniform(0, 2 * np.pi)),
        garment_kind=g_kind,
        garment=garment,
        shading=str(rng.choice(["positive", "negative"])),
        shading_strength=float(rng.uniform(0.15, 0.8)),
        texture=texture,
        texture_amplitude=float(rng.uniform(0.04, 0.18) if texture == "stripes" else rng.uniform(0.03, 0.12)),
        stripe_period=float(rng.uniform(4, 16)),
        stripe_angle=float(rng.uniform(0, np.pi)),
        alpha_threshold=float(rng.uniform(0.15, 0.5)),
        resample=str(rng.choice(["lanczos", "bicubic"])),
        fraction=float(rng.uniform(0.55, 0.95)),
        angle=float(rng.uniform(-15, 15)),
        offset=(float(rng.uniform(-1, 1)), float(rng.uniform(-1, 1))),
        shadow=shadow,
        shadow_radius=float(rng.uniform(1.5, 6)),
        shadow_shift=(int(rng.integers(0, 7)), int(rng.integers(0, 7))),
        gains=tuple(float(g) for g in rng.uniform(0.85, 1.15, size=3)),
        brightness=float(rng.uniform(-0.10, 0.10)),
        contrast=float(rng.uniform(0.75, 1.25)),
        gamma=float(rng.uniform(0.7, 1.4)),
        vignette=float(rng.uniform(0.0, 0.35)) if rng.uniform() < 0.4 else 0.0,
        blur=float(rng.uniform(0.3, 1.2)) if rng.uniform() < 0.3 else 0.0,
        noise_sigma=float(rng.uniform(0.0, 10 / 255)),
        jpeg_quality=int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1)),
        noise_seed=int(rng.integers(0, 2**63 - 1)),
    )


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates in [-1, 1] (float32), shared by gradients, stripes and vignetting."""
    c = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    return c[None, :].repeat(size, 0), c[:, None].repeat(size, 1)


def _place(layer: np.ndarray, size: int, offset: tuple[float, float]) -> np.ndarray:
    """Put ``layer`` (h, w) on a size×size zero canvas, centre offset within the free room."""
    h, w = layer.shape
    slack = int(round(0.04 * size))  # this much of the object may be cut off at the edge
    canvas = np.zeros((size, size), np.float32)
    top = int(round((size - h) / 2 + offset[1] * max(0, (size - h) / 2 + slack)))
    left = int(round((size - w) / 2 + offset[0] * max(0, (size - w) / 2 + slack)))
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + h, size), min(left + w, size)
    if y1 > y0 and x1 > x0:
        canvas[y0:y1, x0:x1] = layer[y0 - top:y1 - top, x0 - left:x1 - left]
    return canvas


def render(tile: np.ndarray, params: PhotoParams) -> Image.Image:
    """Apply ``params`` to a 28×28 (any size, 2-D) uint8 light-on-black tile: an RGB image."""
    tile = np.asarray(tile)
    if tile.ndim != 2 or tile.dtype != np.uint8:
        raise ValueError(f"tile must be a 2-D uint8 array, got {tile.dtype} {tile.shape}")
    p = params
    size = p.size
    rng = np.random.default_rng(p.noise_seed)
    side = max(4, int(round(p.fraction * size)))
    resample = Image.Resampling.LANCZOS if p.resample == "lanczos" else Image.Resampling.BICUBIC
    obj = Image.fromarray(tile, "L").resize((side, side), resample)
    obj = obj.rotate(p.angle, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=0)
    intensity = _place(np.asarray(obj, np.float32) / 255.0, size, p.offset)

    xs, ys = _grid(size)
    bg = np.empty((size, size, 3), np.float32)
    bg[:] = np.asarray(p.background, np.float32)
    if p.gradient:
        ramp = 1.0 + p.gradient * (xs * np.cos(p.gradient_angle) + ys * np.sin(p.gradient_angle))
        bg *= ramp[..., None]
    alpha = np.clip(intensity / p.alpha_threshold, 0.0, 1.0)
    if p.shadow:
        soft = Image.fromarray((alpha * 255).astype(np.uint8), "L").filter(ImageFilter.GaussianBlur(p.shadow_radius))
        shade = np.roll(np.asarray(soft, np.float32) / 255.0, p.shadow_shift, axis=(0, 1))
        bg *= (1.0 - p.shadow * shade)[..., None]

    if p.shading == "positive":
        light = 1.0 - p.shading_strength * (1.0 - intensity)
    else:
        light = 1.0 - p.shading_strength * intensity
    if p.texture == "stripes":
        phase = (xs * np.cos(p.stripe_angle) + ys * np.sin(p.stripe_angle)) * (size / 2) / p.stripe_period
        light = light * (1.0 + p.texture_amplitude * np.sin(2 * np.pi * phase))
    elif p.texture == "fabric":
        coarse = rng.standard_normal((size // 8, size // 8), dtype=np.float32)
        blotch = np.asarray(Image.fromarray(coarse, "F").resize((size, size), Image.Resampling.BICUBIC))
        light = light * (1.0 + p.texture_amplitude * blotch)
    garment = np.asarray(p.garment, np.float32) * light[..., None]
    a = alpha[..., None]
    img = bg * (1.0 - a) + garment * a

    img *= np.asarray(p.gains, np.float32)
    img = (img - 0.5) * p.contrast + 0.5 + p.brightness
    if p.vignette:
        img *= (1.0 - p.vignette * 0.5 * (xs * xs + ys * ys))[..., None]
    img = np.clip(img, 0.0, 1.0) ** p.gamma
    out = Image.fromarray((img * 255.0 + 0.5).astype(np.uint8), "RGB")
    if p.blur:
        out = out.filter(ImageFilter.GaussianBlur(p.blur))
    if p.noise_sigma:
        noisy = np.asarray(out, np.float32) + rng.standard_normal((size, size, 3), dtype=np.float32) * (
            p.noise_sigma * 255.0)
        out = Image.fromarray(np.clip(noisy + 0.5, 0, 255).astype(np.uint8), "RGB")
    return out


def render_photo(tile: np.ndarray, rng: np.random.Generator, *, size: int = 128) -> Image.Image:
    """One product photo of ``tile``: RGB, ``size``×``size``, parameters drawn from ``rng``."""
    return render(tile, sample_params(rng, size=size))


def encode_jpeg(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, subsampling=2)
    return buf.getvalue()


def photo_jpeg(tile: np.ndarray, rng: np.random.Generator, *, size: int = 128) -> bytes:
    """``render_photo`` as JPEG bytes, quality drawn from 60–95 (the same draws: same seed, same photo)."""
    params = sample_params(rng, size=size)
    return encode_jpeg(render(tile, params), params.jpeg_quality)
