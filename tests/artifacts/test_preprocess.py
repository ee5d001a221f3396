import io

import numpy as np
import pytest
from PIL import Image

from artifacts.preprocess import (ImageDecodeError, PreprocessSpec, arrays_to_model_input, decode_image,
                                  preprocess_bytes, to_model_input)

SPEC = PreprocessSpec()


def encode(img: Image.Image, fmt="PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def garment(light_background: bool, size=(60, 80), mode="L") -> Image.Image:
    arr = np.full(size[::-1], 255 if light_background else 0, np.uint8)
    arr[10:-10, 15:-15] = 60 if light_background else 200
    return Image.fromarray(arr, "L").convert(mode)


def test_fashion_mnist_pixels_pass_through_unchanged():
    pixels = np.random.default_rng(0).integers(0, 60, size=(5, 28, 28), dtype=np.uint8)
    out = arrays_to_model_input(pixels, SPEC)
    assert out.shape == (5, 28, 28, 1) and out.dtype == np.float32
    np.testing.assert_allclose(out[..., 0], pixels / 255.0, rtol=1e-6)


def test_batch_and_single_image_paths_agree():
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, size=(4, 28, 28), dtype=np.uint8)
    pixels[:2, 0, :] = 255  # light border → inverted on both paths
    pixels[:2, -1, :] = 255
    pixels[:2, :, 0] = 255
    pixels[:2, :, -1] = 255
    batch = arrays_to_model_input(pixels, SPEC)
    single = np.stack([to_model_input(Image.fromarray(p, "L"), SPEC) for p in pixels])
    np.testing.assert_allclose(batch, single, atol=1e-6)
    big = PreprocessSpec(height=32, width=32, channels=3)
    resized = arrays_to_model_input(pixels, big)
    assert resized.shape == (4, 32, 32, 3)
    np.testing.assert_allclose(resized[1], to_model_input(Image.fromarray(pixels[1], "L"), big), atol=1e-6)


def test_shop_photo_is_inverted_to_dark_background():
    out = preprocess_bytes(encode(garment(True, mode="RGB"), "JPEG"), SPEC)
    assert out.shape == (28, 28, 1)
    assert out[0, 0, 0] < 0.1 and out[14, 14, 0] > 0.6  # dark background, light garment
    same = preprocess_bytes(encode(garment(False)), SPEC)
    assert same[0, 0, 0] < 0.1 and same[14, 14, 0] > 0.6


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "LA", "P", "CMYK", "1", "I;16", "I", "F"])
def test_every_mode_gives_a_valid_input(mode):
    img = garment(True, mode="L")
    if mode == "I;16":
        img = Image.fromarray(np.asarray(img).astype(np.uint16) * 257)
        assert img.mode == "I;16"
    else:
        img = img.convert(mode)
    out = to_model_input(img, SPEC)
    assert out.shape == (28, 28, 1) and np.isfinite(out).all()
    assert 0.0 <= out.min() and out.max() <= 1.0
    assert out[14, 14, 0] > out[0, 0, 0]  # garment brighter than background after inversion


def test_transparent_cutout_is_composited_on_white():
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[10:30, 10:30] = (20, 20, 20, 255)
    out = to_model_input(Image.fromarray(rgba, "RGBA"), SPEC)
    assert out[0, 0, 0] < 0.05 and out[14, 14, 0] > 0.8


def test_odd_sizes_keep_aspect_and_fill():
    wide = Image.fromarray(np.full((3, 900), 255, np.uint8), "L")
    tiny = Image.fromarray(np.full((1, 1), 255, np.uint8), "L")
    assert to_model_input(wide, SPEC).shape == (28, 28, 1)
    assert to_model_input(tiny, SPEC).shape == (28, 28, 1)


def test_animated_gif_uses_first_frame():
    frames = [garment(False, mode="L"), Image.new("L", (60, 80), 255)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    out = preprocess_bytes(data, SPEC)
    assert out[14, 14, 0] > 0.6


@pytest.mark.parametrize("data, reason", [
    (b"", "empty"),
    (b"hello, not an image", "not a recognised image"),
])
def test_garbage_is_rejected_with_a_reason(data, reason):
    with pytest.raises(ImageDecodeError, match=reason):
        decode_image(data)


def test_truncated_image_is_rejected():
    data = encode(garment(False, size=(200, 200)).convert("RGB"), "JPEG")
    with pytest.raises(ImageDecodeError, match="truncated"):
        decode_image(data[: len(data) // 3])


def test_pixel_limit_stops_decompression_bombs():
    data = encode(Image.new("L", (5000, 5000)))
    with pytest.raises(ImageDecodeError, match="too large"):
        decode_image(data, max_pixels=1_000_000)


def test_big_jpegs_decode_in_draft_mode_and_give_the_same_model_input():
    photo = garment(True, size=(4000, 3000), mode="RGB")
    data = encode(photo, "JPEG", quality=90)
    full = decode_image(data)
    draft = decode_image(data, draft_size=(112, 112))
    assert full.size == (4000, 3000)
    # libjpeg scales by 1/8 at most and never below the size asked for.
    assert draft.size == (500, 375)
    np.testing.assert_allclose(preprocess_bytes(data, SPEC), to_model_input(full, SPEC), atol=0.03)
    png = encode(garment(True, size=(600, 400)))
    assert decode_image(png, draft_size=(112, 112)).size == (600, 400)  # no draft mode: decoded whole


def test_header_pixels_reads_the_size_without_decoding():
    from artifacts.preprocess import header_pixels

    # A pixel bomb: 6000×6000 of one colour compresses to a few KB.
    bomb = encode(Image.new("L", (6000, 6000), 255))
    assert len(bomb) < 100_000 and header_pixels(bomb) == 36_000_000
    assert header_pixels(b"not an image") == 0 and header_pixels(b"") == 0
    with pytest.raises(ImageDecodeError, match="too large") as err:
        decode_image(bomb, max_pixels=16_000_000)
    assert err.value.too_large


@pytest.mark.parametrize("channels", [1, 3])
def test_many_images_at_once_give_each_image_s_own_input_and_reason(channels):
    """preprocess_many (the embedding job's decode) groups images by shape for one canonicalise
    call per group: the inputs must be exactly preprocess_bytes', the reasons those of
    preprocess_or_reason, whatever the mix."""
    from artifacts import photo_style
    from artifacts.preprocess import preprocess_many, preprocess_or_reason

    spec = PreprocessSpec(channels=channels, height=28, width=28, foreground_map=True, background_gradient=True,
                          crop=True, pad_square=True, stretch_percentile=99.0)
    assert spec.is_canonical
    rng = np.random.default_rng(7)
    tiles = [np.clip(rng.normal(0, 1, (28, 28)).cumsum(0) * 20 + 60, 0, 255).astype(np.uint8) for _ in range(6)]
    datas = [encode(Image.fromarray(t)) for t in tiles]  # same shape: one group
    datas += [photo_style.encode_jpeg(photo_style.render_photo(t, rng, size=s), 80) for t, s in zip(tiles, (64, 96, 128))]
    datas += [encode(garment(True, (50, 70), "RGB")), encode(garment(False)), b"not an image", None,
              encode(garment(True, (3, 900)))]
    inputs, reasons = preprocess_many(datas, spec)
    assert inputs.shape == (len(datas), 28, 28, channels)
    for i, data in enumerate(datas):
        if data is None:
            assert reasons[i] is None and not inputs[i].any()
            continue
        x, reason = preprocess_or_reason(data, spec)
        assert reasons[i] == reason
        if x is not None:
            np.testing.assert_array_equal(inputs[i], x)
    assert reasons[datas.index(b"not an image")] is not None
