"""Deskew (PreprocessSpec.deskew): a garment photographed a little askew is turned upright
before it is cropped, so the model sees what the upright catalogue tile shows; an upright tile
is left alone. The photos are drawn here (not by artifacts/photo_style.py)."""

import dataclasses
import io
import os

import numpy as np
import pytest
from PIL import Image, ImageDraw

from artifacts import canonical
from artifacts.preprocess import PreprocessSpec, arrays_to_model_input, preprocess_bytes, to_model_input

DESKEW = PreprocessSpec.canonical()  # what new models train with
CANON = dataclasses.replace(DESKEW, deskew=False)  # the canonical input before deskew


def garment(kind: str) -> np.ndarray:
    """A light, upright object on black, filling a 28x28 tile."""
    img = Image.new("L", (28, 28), 0)
    d = ImageDraw.Draw(img)
    if kind == "trousers":
        d.polygon([(8, 0), (19, 0), (21, 27), (15, 27), (14, 8), (12, 27), (6, 27)], fill=210)
    elif kind == "dress":
        d.polygon([(10, 0), (17, 0), (18, 8), (23, 27), (4, 27), (9, 8)], fill=190)
    else:  # bag
        d.rectangle([3, 9, 24, 27], fill=200)
        d.arc([8, 1, 19, 14], 180, 360, fill=255, width=2)
    return np.asarray(img)


def askew_photo(t: np.ndarray, angle: float, *, offset=(0, 0), bg=(236, 232, 224), ink=(40, 50, 70)) -> bytes:
    """``t`` turned by ``angle`` degrees, dark on a light wall, 128 px, JPEG."""
    obj = Image.fromarray(t).resize((84, 84), Image.Resampling.BICUBIC).rotate(angle, Image.Resampling.BICUBIC,
                                                                               expand=True)
    alpha = np.zeros((128, 128), np.float32)
    a = np.asarray(obj, np.float32) / 255.0
    y0, x0 = (128 - a.shape[0]) // 2 + offset[0], (128 - a.shape[1]) // 2 + offset[1]
    alpha[y0:y0 + a.shape[0], x0:x0 + a.shape[1]] = a
    rgb = np.asarray(bg, np.float32) * (1 - alpha[..., None]) + np.asarray(ink, np.float32) * alpha[..., None]
    buf = io.BytesIO()
    Image.fromarray(np.rint(rgb).astype(np.uint8)).save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def corr(a, b) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


# Not the dress: the smallest box around a turned trapezoid need not follow its axis (on
# Fashion-MNIST's dresses deskew halves the tilt, docs/RESULTS.md).
@pytest.mark.parametrize("angle", [-15.0, -9.0, 12.0, 17.0])
@pytest.mark.parametrize("kind", ["trousers", "bag"])
def test_a_turned_photo_is_turned_back(kind, angle):
    data = askew_photo(garment(kind), angle, offset=(6, -5))
    img = Image.open(io.BytesIO(data))
    arr = np.asarray(img.convert("RGB"), np.float32)[None]
    m = canonical._foreground_map(arr, canonical._border_background(arr, True), 1)
    turn, _ = canonical.deskew_angles(m, DESKEW)
    assert abs(turn[0] + angle) <= 2.0, (turn, angle)
    t = garment(kind).astype(np.float32) / 255.0
    assert corr(preprocess_bytes(data, DESKEW), t) > corr(preprocess_bytes(data, CANON), t) + 0.03


@pytest.mark.parametrize("kind", ["trousers", "dress", "bag"])
def test_an_upright_object_is_left_as_it_is(kind):
    t = garment(kind)
    np.testing.assert_array_equal(to_model_input(Image.fromarray(t), DESKEW), to_model_input(Image.fromarray(t), CANON))
    data = askew_photo(t, 0.0)
    np.testing.assert_array_equal(preprocess_bytes(data, DESKEW), preprocess_bytes(data, CANON))


def test_nothing_to_turn_in_a_blank_or_noisy_image():
    rng = np.random.default_rng(0)
    pixels = np.stack([np.zeros((40, 40, 3), np.uint8), np.full((40, 40, 3), 255, np.uint8),
                       rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)])
    m = canonical._foreground_map(pixels.astype(np.float32),
                                  canonical._border_background(pixels.astype(np.float32), True), 1)
    turn, centres = canonical.deskew_angles(m, DESKEW)
    assert turn[:2].tolist() == [0.0, 0.0] and np.isfinite(turn).all() and np.isfinite(centres).all()
    out = arrays_to_model_input(pixels, DESKEW)
    assert out.shape == (3, 28, 28, 1) and np.isfinite(out).all()


def test_new_models_deskew_and_old_cards_do_not():
    assert DESKEW.deskew and not PreprocessSpec().deskew
    card = {k: v for k, v in DESKEW.to_dict().items() if k != "deskew"}  # a card from before the field
    assert PreprocessSpec.from_dict(card) == CANON
    assert PreprocessSpec.from_dict(DESKEW.to_dict()) == DESKEW


@pytest.mark.skipif(not os.environ.get("FASHION_MNIST_DIR"), reason="FASHION_MNIST_DIR not set")
def test_fashion_mnist_tiles_are_almost_never_turned():
    from tune.data import fashion_mnist

    x = fashion_mnist.load(os.environ["FASHION_MNIST_DIR"], allow_download=False).test_images[:2000]
    changed = (arrays_to_model_input(x, DESKEW) != arrays_to_model_input(x, CANON)).reshape(len(x), -1).any(axis=1)
    assert changed.mean() < 0.01


def test_what_the_model_saw_maps_back_onto_the_turned_photo():
    """The explanation's region: the input's box, turned back, covers the askew object."""
    from artifacts import explain

    data = askew_photo(garment("trousers"), 16.0, offset=(4, 8))
    upload = explain.read_upload(data, DESKEW, max_pixels=10**7)
    assert abs(upload.turn[0] + 16.0) <= 2.0
    obj = np.asarray(upload.image.convert("L")) < 140  # the dark garment on the light wall
    seen = upload.pixels[..., 0]  # what the model saw, as a heatmap: placed back, it is the object
    placed = explain.place_heatmap(seen, upload.box, upload.image.size, upload.turn)
    unturned = explain.place_heatmap(seen, upload.box, upload.image.size)
    assert placed.shape == obj.shape
    assert corr(placed, obj) > 0.85 and corr(placed, obj) > corr(unturned, obj) + 0.1, (
        corr(placed, obj), corr(unturned, obj))
