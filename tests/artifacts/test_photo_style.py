import io

import numpy as np
import pytest
from PIL import Image

from artifacts.photo_style import BACKGROUND_KINDS, JPEG_QUALITY, photo_jpeg, render_photo, sample_params


def tile(seed: int = 0) -> np.ndarray:
    """A light garment-like blob on black, like a Fashion-MNIST tile."""
    t = np.zeros((28, 28), np.uint8)
    t[4:24, 8:20] = np.random.default_rng(seed).integers(120, 256, size=(20, 12), dtype=np.uint8)
    return t


def corner_colour(img: Image.Image) -> np.ndarray:
    return np.asarray(img, np.float32)[:6, :6].reshape(-1, 3).mean(0)


def test_same_seed_same_photo_and_other_seeds_differ():
    a = np.asarray(render_photo(tile(), np.random.default_rng(3)))
    b = np.asarray(render_photo(tile(), np.random.default_rng(3)))
    c = np.asarray(render_photo(tile(), np.random.default_rng(4)))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a.astype(int) - c.astype(int)).mean() > 5
    assert photo_jpeg(tile(), np.random.default_rng(9)) == photo_jpeg(tile(), np.random.default_rng(9))


@pytest.mark.parametrize("size", [32, 128])
def test_rgb_of_the_requested_size_and_the_jpeg_decodes(size):
    img = render_photo(tile(), np.random.default_rng(0), size=size)
    assert img.mode == "RGB" and img.size == (size, size)
    data = photo_jpeg(tile(), np.random.default_rng(0), size=size)
    decoded = Image.open(io.BytesIO(data))
    assert decoded.format == "JPEG" and decoded.mode == "RGB" and decoded.size == (size, size)
    # The JPEG is the same photo as render_photo with that seed, up to compression.
    diff = np.abs(np.asarray(decoded, np.float32) - np.asarray(img, np.float32)).mean()
    assert diff < 12


def test_backgrounds_garments_and_quality_vary_across_seeds():
    params = [sample_params(np.random.default_rng(s)) for s in range(300)]
    assert {p.background_kind for p in params} == set(BACKGROUND_KINDS)
    assert len({p.garment_kind for p in params}) == 4
    qualities = [p.jpeg_quality for p in params]
    assert JPEG_QUALITY[0] <= min(qualities) < 66 and 89 < max(qualities) <= JPEG_QUALITY[1]
    corners = np.stack([corner_colour(render_photo(tile(), np.random.default_rng(s), size=48)) for s in range(100)])
    grey = corners.mean(1)
    assert grey.min() < 70 and grey.max() > 230  # dark and white backgrounds both occur
    assert (corners.max(1) - corners.min(1)).max() > 60  # and strongly coloured ones


def test_object_stays_visible_and_is_not_always_centred():
    centres = []
    for s in range(30):
        img = np.asarray(render_photo(tile(s), np.random.default_rng(s), size=64), np.float32)
        background = np.median(np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]]), axis=0)
        mask = np.abs(img - background).sum(-1) > 40
        assert mask.mean() > 0.03, f"seed {s}: object hardly visible"
        ys, xs = np.nonzero(mask)
        centres.append((xs.mean(), ys.mean()))
    spread = np.asarray(centres).std(0)
    assert (spread > 1.5).all()


def test_refuses_a_non_uint8_or_non_2d_tile():
    with pytest.raises(ValueError):
        render_photo(np.zeros((28, 28, 3), np.uint8), np.random.default_rng(0))
    with pytest.raises(ValueError):
        render_photo(np.zeros((28, 28), np.float32), np.random.default_rng(0))
