"""tf.data input pipelines from raw uint8 pixels, through the shared preprocessing function."""

from __future__ import annotations

import numpy as np

from artifacts.preprocess import PreprocessSpec, arrays_to_model_input

from .augment import AugmentConfig, make_augmenter, mix_photos


def make_dataset(images: np.ndarray, labels: np.ndarray, spec: PreprocessSpec, *, batch_size: int,
                 shuffle: bool = False, seed: int = 0, augment: AugmentConfig | None = None,
                 photos: np.ndarray | None = None):
    """Batches of ``(model_input, label)``. Pixels that already match the model's input are
    converted once up front; others (e.g. 28×28 into a 128×128×3 model) batch by batch, so
    memory stays bounded. ``photos`` (a photo bank, tune/data/photo_bank.py, row for row with
    ``images``) swaps items for their photos with ``augment.photo_probability``."""
    import tensorflow as tf

    labels = labels.astype(np.int32)
    native = images.shape[1:3] == (spec.height, spec.width) and (images.ndim == 3) == (spec.channels == 1)
    if photos is not None and not (native and augment is not None and augment.uses_photos):
        raise ValueError("a photo bank needs photo_probability > 0 and images already at the model's input size")
    if photos is not None:
        if len(photos) != len(labels):
            raise ValueError(f"photo bank has {len(photos)} rows for {len(labels)} images")
        ds = tf.data.Dataset.from_tensor_slices((arrays_to_model_input(images, spec), photos, labels))
        if shuffle:
            ds = ds.shuffle(min(len(labels), 60_000), seed=seed, reshuffle_each_iteration=True)
        mix = mix_photos(augment.photo_probability, seed)
        ds = ds.batch(batch_size).map(lambda x, p, y: (mix(x, p), y), num_parallel_calls=1)
    elif native:
        ds = tf.data.Dataset.from_tensor_slices((arrays_to_model_input(images, spec), labels))
        if shuffle:
            ds = ds.shuffle(min(len(labels), 60_000), seed=seed, reshuffle_each_iteration=True)
        ds = ds.batch(batch_size)
    else:
        ds = tf.data.Dataset.from_tensor_slices((images, labels))
        if shuffle:
            ds = ds.shuffle(min(len(labels), 60_000), seed=seed, reshuffle_each_iteration=True)
        ds = ds.batch(batch_size)

        def convert(x, y):
            out = tf.numpy_function(lambda b: arrays_to_model_input(b, spec), [x], tf.float32)
            out.set_shape((None, *spec.input_shape))
            return out, y

        ds = ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)
    augmenter = make_augmenter(augment, spec.channels, seed) if augment else None
    if augmenter is not None:
        ds = ds.map(lambda x, y: (augmenter(x), y), num_parallel_calls=1)
    return ds.prefetch(2)
