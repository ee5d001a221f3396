"""Training-time augmentation, applied in the input pipeline (never saved inside a model).

The published Fashion-MNIST work and the product-search thesis used shear, zoom, rotation and
horizontal and vertical flips. Shop photos also differ from Fashion-MNIST in colour, lighting,
background, framing and compression; ``photo_probability`` swaps a training tile for one of its
rendered photos (tune/data/photo_bank.py), read through the serving path, which covers all of
those at once. ``geometric_probability`` applies the geometric layers to only that share of each
batch, so the model still sees most items upright, as the catalogue holds them. Everything is
off unless configured.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AugmentConfig:
    enabled: bool = False
    flip_horizontal: bool = False
    flip_vertical: bool = False
    rotation_deg: float = 0.0
    shear: float = 0.0  # RandomShear factor (fraction of the side)
    zoom: float = 0.0  # ± fraction
    shift: float = 0.0  # ± fraction of height/width
    brightness: float = 0.0  # ± delta on the [0, 1] scale
    tint: float = 0.0  # ± per-channel gain (RGB inputs only)
    invert_probability: float = 0.0
    geometric_probability: float = 1.0  # share of each batch the flips / rotation / shear / zoom / shift touch
    photo_probability: float = 0.0  # share of training items shown as one of their photos
    photo_variants: int = 2  # photos rendered per training tile
    photo_min_size: int = 64  # photos are rendered at a random side in [min, max] pixels
    photo_max_size: int = 128

    @property
    def active(self) -> bool:
        return self.enabled and any([self.flip_horizontal, self.flip_vertical, self.rotation_deg, self.shear,
                                     self.zoom, self.shift, self.brightness, self.tint, self.invert_probability])

    @property
    def uses_photos(self) -> bool:
        return self.enabled and self.photo_probability > 0


def make_augmenter(cfg: AugmentConfig, channels: int, seed: int = 0):
    """A function ``images -> images`` on float batches in [0, 1], or None when inactive."""
    if not cfg.active:
        return None
    import keras
    import tensorflow as tf

    layers = []
    flips = {(True, False): "horizontal", (False, True): "vertical", (True, True): "horizontal_and_vertical"}
    if cfg.flip_horizontal or cfg.flip_vertical:
        layers.append(keras.layers.RandomFlip(flips[(cfg.flip_horizontal, cfg.flip_vertical)], seed=seed))
    if cfg.rotation_deg:
        layers.append(keras.layers.RandomRotation(cfg.rotation_deg / 360.0, fill_mode="constant", seed=seed))
    if cfg.shear:
        layers.append(keras.layers.RandomShear(x_factor=cfg.shear, y_factor=cfg.shear, fill_mode="constant", seed=seed))
    if cfg.zoom:
        layers.append(keras.layers.RandomZoom(cfg.zoom, fill_mode="constant", seed=seed))
    if cfg.shift:
        layers.append(keras.layers.RandomTranslation(cfg.shift, cfg.shift, fill_mode="constant", seed=seed))
    if cfg.brightness:
        layers.append(keras.layers.RandomBrightness(cfg.brightness, value_range=(0.0, 1.0), seed=seed))
    if cfg.invert_probability:
        layers.append(keras.layers.RandomInvert(factor=cfg.invert_probability, value_range=(0.0, 1.0), seed=seed))
    geometric = keras.Sequential(layers, name="augment") if layers else None
    gen = tf.random.Generator.from_seed(seed)

    def augment(images):
        if geometric is not None:
            moved = geometric(images, training=True)
            if cfg.geometric_probability < 1.0:
                pick = gen.uniform([tf.shape(images)[0], 1, 1, 1]) < cfg.geometric_probability
                moved = tf.where(pick, moved, images)
            images = moved
        if cfg.tint and channels == 3:
            gains = gen.uniform([tf.shape(images)[0], 1, 1, 3], 1.0 - cfg.tint, 1.0 + cfg.tint)
            images = images * gains
        return tf.clip_by_value(images, 0.0, 1.0)

    return augment


def mix_photos(probability: float, seed: int = 0):
    """A function ``(tiles, photos) -> images``: a batch of tiles (float model inputs) with each
    item swapped, with ``probability``, for one of its photos (uint8 model inputs,
    ``(batch, variants, H, W, C)``) chosen at random."""
    import tensorflow as tf

    gen = tf.random.Generator.from_seed(seed + 1)

    def mix(x, p):
        n, variants = tf.shape(p)[0], tf.shape(p)[1]
        which = gen.uniform([n], 0, variants, dtype=tf.int32)
        photo = tf.cast(tf.gather(p, which, axis=1, batch_dims=1), tf.float32) / 255.0
        pick = gen.uniform([n, 1, 1, 1]) < probability
        return tf.where(pick, photo, x)

    return mix
