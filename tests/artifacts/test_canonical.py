"""The canonical input (PreprocessSpec.canonical()): a photo of a garment, whatever its
background, polarity, framing and contrast, becomes close to the catalogue tile it shows; old
model cards keep the old pipeline exactly. The photos here are made in the test (not by
artifacts/photo_style.py), so the thresholds are not fitted to one renderer."""

import io
import os

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageOps

from artifacts.model_card import ModelCard
from artifacts.preprocess import (PreprocessSpec, arrays_to_model_input, canonicalise, preprocess_bytes,
                                  to_model_input)

CANON = PreprocessSpec.canonical()
OLD_CARD = {"height": 28, "width": 28, "channels": 1, "invert_light_background": True, "scale": 1 / 255}


def tile(kind: str = "shirt") -> np.ndarray:
    """A Fashion-MNIST-like tile: light textured object on black, filling the frame, max 255."""
    img = Image.new("L", (28, 28), 0)
    d = ImageDraw.Draw(img)
    if kind == "shirt":
        d.polygon([(7, 0), (20, 0), (27, 7), (23, 11), (21, 9), (21, 27), (6, 27), (6, 9), (4, 11), (0, 7)], fill=170)
        d.rectangle([11, 4, 16, 27], fill=255)
    else:  # trousers
        d.polygon([(8, 0), (19, 0), (21, 27), (15, 27), (14, 8), (12, 27), (6, 27)], fill=200)
        d.line([(13, 0), (13, 6)], fill=255, width=2)
    arr = np.asarray(img).astype(np.float32)
    arr *= np.linspace(0.75, 1.0, 28)[None, :]  # some shading
    arr = arr * 255.0 / arr.max()
    return np.rint(arr).astype(np.uint8)


def photo(t: np.ndarray, *, bg=(255, 255, 255), garment=(30, 30, 30), size=128, scale=0.8,
          offset=(0, 0), gradient=0.0, tint=(1.0, 1.0, 1.0), noise=0.0, quality=85, seed=0) -> bytes:
    """The tile as a product photo: alpha-composited in ``garment`` over ``bg``, scaled and moved,
    with an optional horizontal background gradient, colour tint, noise and JPEG."""
    side = int(size * scale)
    alpha = np.asarray(Image.fromarray(t).resize((side, side), Image.Resampling.BICUBIC), np.float32) / 255.0
    a = np.zeros((size, size), np.float32)
    y0 = (size - side) // 2 + offset[0]
    x0 = (size - side) // 2 + offset[1]
    a[y0:y0 + side, x0:x0 + side] = alpha
    canvas = np.empty((size, size, 3), np.float32)
    canvas[:] = np.asarray(bg, np.float32)
    canvas *= (1.0 - gradient * np.linspace(0, 1, size))[None, :, None]
    canvas = canvas * (1 - a[..., None]) + np.asarray(garment, np.float32) * a[..., None]
    canvas *= np.asarray(tint, np.float32)
    canvas += np.random.default_rng(seed).normal(0, noise, canvas.shape)
    img = Image.fromarray(np.clip(np.rint(canvas), 0, 255).astype(np.uint8), "RGB")
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def canon_tile(t: np.ndarray, spec: PreprocessSpec = CANON) -> np.ndarray:
    return arrays_to_model_input(t[None], spec)[0]


PHOTOS = {
    "white bg, dark garment": dict(),
    "light grey bg, mid garment, off-centre": dict(bg=(225, 225, 220), garment=(90, 80, 70), scale=0.55,
                                                   offset=(-20, 22)),
    "coloured bg": dict(bg=(200, 120, 60), garment=(40, 40, 50)),
    "saturated bg, light garment": dict(bg=(20, 90, 200), garment=(240, 235, 220), scale=0.7),
    "dark bg, light garment": dict(bg=(15, 15, 20), garment=(230, 230, 230)),
    "tinted": dict(bg=(250, 250, 250), garment=(60, 90, 160), tint=(1.0, 0.9, 0.72)),
    "gradient bg": dict(bg=(250, 250, 250), garment=(50, 50, 50), gradient=0.3, scale=0.65, offset=(8, -10)),
    "noisy, low quality": dict(bg=(240, 240, 240), garment=(70, 70, 70), noise=8.0, quality=60, scale=0.6),
    "low contrast": dict(bg=(200, 200, 200), garment=(140, 140, 140)),
}


@pytest.mark.parametrize("kind", ["shirt", "trousers"])
@pytest.mark.parametrize("case", list(PHOTOS))
def test_photos_of_a_garment_look_like_its_tile(case, kind):
    t = tile(kind)
    want = canon_tile(t)
    got = preprocess_bytes(photo(t, **PHOTOS[case]), CANON)
    assert got.shape == (28, 28, 1)
    assert corr(got, want) > 0.9, case
    assert got[0, 0, 0] < 0.12 and got.max() > 0.9  # background black, object stretched


def test_canonical_beats_the_old_pipeline_where_it_failed():
    t = tile()
    want = canon_tile(t)
    for case in ("light grey bg, mid garment, off-centre", "coloured bg", "saturated bg, light garment",
                 "gradient bg"):
        data = photo(t, **PHOTOS[case])
        old = corr(preprocess_bytes(data, PreprocessSpec()), want)
        new = corr(preprocess_bytes(data, CANON), want)
        assert new > old + 0.05, (case, old, new)


def test_crop_centres_an_off_centre_object():
    arr = np.full((120, 160), 250, np.uint8)
    arr[8:38, 12:32] = 40  # a dark 30×20 object in the top-left corner of a light image
    out = to_model_input(Image.fromarray(arr, "L"), CANON)[..., 0]
    ys, xs = np.nonzero(out > 0.5)
    assert abs(ys.mean() - 13.5) < 1.0 and abs(xs.mean() - 13.5) < 1.0
    assert ys.max() - ys.min() >= 24  # the object's long side fills the input, less the margin
    # Without the crop it stays a small object in the corner.
    uncropped = to_model_input(Image.fromarray(arr, "L"), PreprocessSpec.canonical(crop=False))[..., 0]
    ys, xs = np.nonzero(uncropped > 0.5)
    assert ys.mean() < 10 and ys.max() - ys.min() < 10


def test_pad_square_keeps_the_aspect_and_stretch_fills_it_otherwise():
    arr = np.zeros((100, 100), np.uint8)
    arr[20:80, 40:60] = 200  # a tall 60×20 bar
    img = Image.fromarray(arr, "L")
    padded = to_model_input(img, CANON)[..., 0] > 0.5
    stretched = to_model_input(img, PreprocessSpec.canonical(pad_square=False))[..., 0] > 0.5
    assert 5 <= padded.any(axis=0).sum() <= 12  # about 20/60 of the width
    assert stretched.any(axis=0).sum() >= 24


def _old_pipeline(img: Image.Image) -> np.ndarray:
    """The pipeline before canonical input existed (artifacts/preprocess.py at 81a907b), grayscale."""
    img = img.convert("L")
    arr = np.asarray(img)
    border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
    if border.mean() > 127.5:
        img = ImageOps.invert(img)
        arr = np.asarray(img)
    if img.size != (28, 28):
        b = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
        img = ImageOps.pad(img, (28, 28), method=Image.Resampling.LANCZOS, color=int(b.mean()))
        arr = np.asarray(img)
    return (arr.astype(np.float32) * np.float32(1 / 255))[..., None]


def test_an_old_model_card_keeps_the_old_preprocessing_exactly():
    spec = PreprocessSpec.from_dict(OLD_CARD)
    assert spec == PreprocessSpec() and not spec.is_canonical
    card = ModelCard(model_id="m", architecture="vitrine_cnn", class_names=["a"], input_shape=[28, 28, 1],
                     preprocessing=OLD_CARD, embedding_layer="embedding", embedding_dim=8)
    assert ModelCard.from_json(card.to_json()).preprocess_spec == spec
    rng = np.random.default_rng(3)
    for arr in (tile(), 255 - tile(), rng.integers(0, 256, (60, 80), dtype=np.uint8)):
        img = Image.fromarray(arr, "L")
        np.testing.assert_array_equal(to_model_input(img, spec), _old_pipeline(img))
    data = photo(tile(), **PHOTOS["coloured bg"])
    from artifacts.preprocess import decode_image

    np.testing.assert_array_equal(preprocess_bytes(data, spec), _old_pipeline(decode_image(data, draft_size=(112, 112))))


def test_a_canonical_spec_round_trips_through_the_card():
    spec = PreprocessSpec.for_input_shape((28, 28, 1), canonical=True)
    assert spec == CANON and spec.is_canonical
    card = ModelCard(model_id="m", architecture="vitrine_cnn", class_names=["a"], input_shape=[28, 28, 1],
                     preprocessing=spec.to_dict(), embedding_layer="embedding", embedding_dim=8)
    assert ModelCard.from_json(card.to_json()).preprocess_spec == spec


@pytest.mark.parametrize("kind", ["shirt", "trousers"])
def test_tiles_pass_through_unchanged(kind):
    t = tile(kind)
    np.testing.assert_array_equal(canon_tile(t), canon_tile(t, PreprocessSpec()))


@pytest.mark.skipif(not os.environ.get("FASHION_MNIST_DIR"), reason="FASHION_MNIST_DIR not set")
def test_fashion_mnist_tiles_are_nearly_unchanged():
    from tune.data import fashion_mnist

    x = fashion_mnist.load(os.environ["FASHION_MNIST_DIR"], allow_download=False).test_images[:2000]
    diff = np.abs(arrays_to_model_input(x, CANON) - arrays_to_model_input(x, PreprocessSpec()))
    per_tile = diff.reshape(len(x), -1).mean(axis=1)
    assert diff.mean() < 0.002 and (per_tile > 0.01).mean() < 0.02


def test_batch_and_single_image_paths_agree():
    rng = np.random.default_rng(5)
    tiles = [tile(), tile("trousers"), 255 - tile()]
    small = np.zeros((28, 28), np.uint8)
    small[2:12, 15:22] = tile()[::3, ::4][:10, :7]  # off-centre: this one is cropped in the batch path too
    tiles += [small, rng.integers(0, 256, (28, 28), dtype=np.uint8), np.zeros((28, 28), np.uint8)]
    pixels = np.stack(tiles)
    for spec in (CANON, PreprocessSpec.canonical(height=32, width=32, channels=3),
                 PreprocessSpec.canonical(stretch_percentile=99.0)):
        batch = arrays_to_model_input(pixels, spec)
        single = np.stack([to_model_input(Image.fromarray(p, "L"), spec) for p in pixels])
        np.testing.assert_array_equal(batch, single)
    rgb = np.stack([np.asarray(Image.open(io.BytesIO(photo(tile(), **PHOTOS[c])))) for c in PHOTOS])
    batch = arrays_to_model_input(rgb, CANON)
    single = np.stack([to_model_input(Image.fromarray(p, "RGB"), CANON) for p in rgb])
    np.testing.assert_array_equal(batch, single)


def test_canonical_input_is_nearly_idempotent():
    # Image-folder training stores canonical pixels and the training pipeline canonicalises
    # them again: the second pass must not move them.
    t = tile()
    once = np.stack([np.rint(preprocess_bytes(photo(t, **PHOTOS[c]), CANON) * 255).astype(np.uint8) for c in PHOTOS])
    twice = canonicalise(once, CANON)
    assert np.abs(twice.astype(int) - once.astype(int)).mean() < 2.0


def test_rgb_models_get_colour_on_black():
    spec = PreprocessSpec.canonical(height=32, width=32, channels=3)
    t = tile()
    red = preprocess_bytes(photo(t, garment=(200, 30, 30)), spec)
    blue = preprocess_bytes(photo(t, garment=(30, 30, 200)), spec)
    assert red.shape == (32, 32, 3)
    # The garment's pixels: where the grayscale canonical form of the same photo is bright.
    gray = preprocess_bytes(photo(t, garment=(200, 30, 30)), PreprocessSpec.canonical(height=32, width=32))[..., 0]
    mask = gray > 0.5
    assert red[gray < 0.02].max() < 0.15 and blue[gray < 0.02].max() < 0.15  # background black in every channel
    r_mean, b_mean = red[mask].mean(axis=0), blue[mask].mean(axis=0)
    # Colour kept as distance from the white background: red differs from white most in G and B.
    assert r_mean[1] > r_mean[0] + 0.2 and b_mean[0] > b_mean[2] + 0.2


@pytest.mark.parametrize("arr", [
    np.zeros((1, 1), np.uint8), np.full((2, 5), 255, np.uint8), np.full((50, 50), 128, np.uint8),
    np.random.default_rng(0).integers(0, 256, (40, 30), dtype=np.uint8),
], ids=["1x1", "2x5", "flat", "noise"])
def test_degenerate_images_give_valid_inputs(arr):
    for spec in (CANON, PreprocessSpec.canonical(channels=3)):
        out = to_model_input(Image.fromarray(arr, "L"), spec)
        assert out.shape == spec.input_shape and np.isfinite(out).all()
        assert 0.0 <= out.min() and out.max() <= 1.0


def test_a_flat_image_is_not_stretched_into_an_object():
    rng = np.random.default_rng(1)
    arr = np.clip(200 + rng.normal(0, 3, (64, 64)), 0, 255).astype(np.uint8)
    assert to_model_input(Image.fromarray(arr, "L"), CANON).max() < 0.6


# Property tests of the canonical steps (the fuzz suite's specs are the old pipeline's): any
# image, any switches, any input size gives a valid model input, the same on both paths.
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

canonical_specs = st.builds(
    PreprocessSpec.canonical, height=st.sampled_from([28, 32, 7]), width=st.sampled_from([28, 32, 5]),
    channels=st.sampled_from([1, 3]), background_gradient=st.booleans(), crop=st.booleans(),
    pad_square=st.booleans(), crop_margin=st.sampled_from([0.0, 0.1, 0.5]),
    crop_threshold=st.sampled_from([0.0, 0.1, 0.9]), stretch_percentile=st.sampled_from([0.0, 50.0, 99.0, 100.0]),
    deskew=st.booleans())


@st.composite
def scenes(draw) -> np.ndarray:
    """An object (or none) on a flat, gradient or noisy background, gray or colour, any size."""
    h, w = draw(st.integers(1, 64)), draw(st.integers(1, 64))
    c = draw(st.sampled_from([1, 3]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    arr = np.empty((h, w, c), np.float32)
    arr[:] = rng.integers(0, 256, c)
    arr += draw(st.floats(-200, 200)) * np.linspace(-0.5, 0.5, w)[None, :, None]
    if draw(st.booleans()):
        y0, x0 = rng.integers(0, h), rng.integers(0, w)
        arr[y0:y0 + rng.integers(1, h + 1), x0:x0 + rng.integers(1, w + 1)] = rng.integers(0, 256, c)
    arr += rng.normal(0, draw(st.sampled_from([0.0, 5.0, 60.0])), arr.shape)
    out = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    return out[..., 0] if c == 1 else out


@given(scenes(), canonical_specs, st.sampled_from(["PNG", "JPEG", None]))
def test_any_scene_becomes_a_canonical_model_input(arr, spec, fmt):
    img = Image.fromarray(arr, "L" if arr.ndim == 2 else "RGB")
    if fmt is None:
        out = to_model_input(img, spec)
    else:
        buf = io.BytesIO()
        img.save(buf, format=fmt)
        out = preprocess_bytes(buf.getvalue(), spec)
    assert out.shape == spec.input_shape and out.dtype == np.float32
    assert np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0


@given(st.lists(scenes(), min_size=1, max_size=3), canonical_specs)
def test_batch_and_single_canonical_paths_agree_on_any_scene(arrs, spec):
    first = arrs[0]
    same = np.stack([a for a in arrs if a.shape == first.shape])
    batch = arrays_to_model_input(same, spec)
    mode = "L" if same.ndim == 3 else "RGB"
    single = np.stack([to_model_input(Image.fromarray(a, mode), spec) for a in same])
    np.testing.assert_array_equal(batch, single)


def test_new_models_train_on_and_declare_the_canonical_input():
    from tune.models import build_model
    from tune.training import TrainConfig, input_spec, preprocess_spec_for

    assert input_spec(TrainConfig()) == CANON
    model = build_model("vitrine_cnn", num_classes=10)
    spec = preprocess_spec_for(model)  # what the grid writes into the model card
    assert spec == CANON and spec.input_shape == tuple(model.input_shape[1:])
