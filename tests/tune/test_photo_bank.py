"""Photo training: the bank of rendered photos, its cache, and how the input pipeline mixes it in."""

from __future__ import annotations

import numpy as np
import pytest

from artifacts.photo_style import photo_jpeg
from artifacts.preprocess import PreprocessSpec, preprocess_bytes
from tune.data import photo_bank
from tune.data.augment import AugmentConfig, make_augmenter, mix_photos
from tune.data.pipeline import make_dataset

SPEC = PreprocessSpec.canonical()


@pytest.fixture(scope="module")
def tiles(tiny_fashion_mnist):
    from tune.data import fashion_mnist

    ds = fashion_mnist.load(str(tiny_fashion_mnist))
    return ds.train_images[:24], ds.train_labels[:24]


def test_bank_photos_are_what_the_service_makes_of_the_same_upload(tiles):
    bank = photo_bank.BankSpec(variants=2, seed=3)
    out = photo_bank.render_chunk(tiles[0][:6], 10, SPEC, bank)
    assert out.shape == (6, 2, 28, 28, 1) and out.dtype == np.uint8
    for i in range(6):
        for v in range(2):
            rng = np.random.default_rng([3, 10 + i, v])
            size = int(rng.integers(bank.min_size, bank.max_size + 1))
            served = preprocess_bytes(photo_jpeg(tiles[0][i], rng, size=size), SPEC)
            assert np.abs(np.rint(served * 255) - out[i, v]).max() <= 1
    # variants differ from each other and from the tile's own input
    assert np.abs(out[:, 0].astype(int) - out[:, 1].astype(int)).mean() > 5


def test_bank_is_deterministic_cached_and_keyed(tiles, tmp_path):
    bank = photo_bank.BankSpec(variants=1, seed=0)
    first = photo_bank.load_or_build(tiles[0], SPEC, bank, directory=tmp_path)
    files = list(tmp_path.glob("*.npy"))
    assert len(files) == 1 and not list(tmp_path.glob("*.part"))
    again = photo_bank.load_or_build(tiles[0], SPEC, bank, directory=tmp_path)
    assert np.array_equal(first, again)
    # a cache file that is not a bank of this shape is rendered again, not trusted
    np.save(files[0], np.zeros((3, 3), np.uint8))
    assert np.array_equal(photo_bank.load_or_build(tiles[0], SPEC, bank, directory=tmp_path), first)
    other = photo_bank.BankSpec(variants=1, seed=1)
    assert photo_bank.bank_key(tiles[0], SPEC, other) != photo_bank.bank_key(tiles[0], SPEC, bank)
    assert photo_bank.bank_key(tiles[0], PreprocessSpec(), bank) != photo_bank.bank_key(tiles[0], SPEC, bank)
    assert not np.array_equal(photo_bank.render_chunk(tiles[0][:4], 0, SPEC, other), first[:4])


@pytest.mark.parametrize("parallel", ["processes", "ray"])
def test_bank_rendered_in_parallel_equals_one_process(tiles, parallel, monkeypatch, request):
    serial = photo_bank.render_chunk(tiles[0], 0, SPEC, photo_bank.BankSpec(variants=1))
    monkeypatch.setattr(photo_bank, "CHUNK", 8)
    if parallel == "ray":
        request.getfixturevalue("ray_local")
    else:
        import ray

        if ray.is_initialized():
            pytest.skip("a Ray session is running in this process")
    assert np.array_equal(photo_bank._render_all(tiles[0], SPEC, photo_bank.BankSpec(variants=1)), serial)


def test_bank_refuses_what_would_not_fit_and_bad_settings(tiles):
    big = PreprocessSpec.for_input_shape((128, 128, 3), canonical=True)
    with pytest.raises(ValueError, match="GiB"):
        photo_bank.load_or_build(np.zeros((60_000, 28, 28), np.uint8), big, photo_bank.BankSpec(variants=2))
    with pytest.raises(ValueError):
        photo_bank.BankSpec(variants=0)
    with pytest.raises(ValueError):
        photo_bank.BankSpec(min_size=128, max_size=64)


def test_mix_photos_swaps_the_configured_share():
    import tensorflow as tf

    tiles = tf.zeros((4000, 2, 2, 1))
    photos = np.stack([np.full((4000, 2, 2, 1), 51, np.uint8), np.full((4000, 2, 2, 1), 102, np.uint8)], axis=1)
    assert np.array_equal(mix_photos(0.0)(tiles, photos).numpy(), tiles.numpy())
    everything = mix_photos(1.0)(tiles, photos).numpy()[:, 0, 0, 0]
    assert set(np.round(everything * 255).astype(int).tolist()) == {51, 102}  # always one of the item's own variants
    half = mix_photos(0.3, seed=5)(tiles, photos).numpy()[:, 0, 0, 0]
    assert 0.25 < (half > 0).mean() < 0.35


def test_pipeline_trains_on_photos_only_with_a_matching_bank(tiles):
    x, y = tiles
    photos = photo_bank.render_chunk(x, 0, SPEC, photo_bank.BankSpec(variants=1))
    aug = AugmentConfig(enabled=True, photo_probability=1.0, photo_variants=1)
    batch, labels = next(iter(make_dataset(x, y, SPEC, batch_size=24, augment=aug, photos=photos)))
    assert np.allclose(batch.numpy(), photos[:, 0] / 255.0, atol=1e-6) and np.array_equal(labels, y)
    with pytest.raises(ValueError, match="rows"):
        make_dataset(x, y, SPEC, batch_size=8, augment=aug, photos=photos[:10])
    with pytest.raises(ValueError, match="photo_probability"):
        make_dataset(x, y, SPEC, batch_size=8, augment=AugmentConfig(), photos=photos)


def test_geometric_probability_leaves_the_rest_of_the_batch_alone():
    import tensorflow as tf

    x = tf.random.uniform((2000, 28, 28, 1), seed=1)
    flip = make_augmenter(AugmentConfig(enabled=True, flip_vertical=True, geometric_probability=0.0), 1)
    assert np.array_equal(flip(x).numpy(), x.numpy())
    some = make_augmenter(AugmentConfig(enabled=True, flip_vertical=True, geometric_probability=0.4), 1, seed=2)
    out = some(x).numpy()
    changed = np.abs(out - x.numpy()).reshape(2000, -1).max(axis=1) > 0
    flipped = np.all(np.isclose(out, x.numpy()[:, ::-1]), axis=(1, 2, 3))
    assert np.all(flipped[changed])  # what moved was flipped upside down, nothing else
    assert 0.12 < changed.mean() < 0.28  # 40% picked, half of those flipped
