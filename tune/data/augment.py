"""Training-time augmentation, applied in the input pipeline (never saved inside a model).

The published Fashion-MNIST work used shear, zoom, rotation and flips. Shop photos also differ
from Fashion-MNIST in colour, lighting and background polarity, so tint, brightness and
inversion are available too. Everything is off unless configured.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AugmentConfig:
    enabled: bool = False
    flip_horizontal: bool = False
    rotation_deg: float = 0.0
    shear: float = 0.0  # RandomShear factor (fraction of the side)
    zoom: float = 0.0  # ± fraction
    shift: float = 0.0  # ± fraction of height/width
    brightness: float = 0.0  # ± delta on the [0, 1] scale
    tint: float = 0.0  # ± per-channel gain (RGB inputs only)
    invert_probability: float = 0.0

    @property
    def active(self) -> bool:
        return self.enabled and any([self.flip_horizontal, self.rotation_deg, self.shear, self.zoom,
                                     self.shift, self.brightness, self.tint, self.invert_probability])


def make_augmenter(cfg: AugmentConfig, channels: int, seed: int = 0):
    """A function ``images -> images`` on float batches in [0, 1], or None when inactive."""
    if not cfg.active:
        return None
    import keras
    import tensorflow as tf

    layers = []
    if cfg.flip_horizontal:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed))
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
            images = geometric(images, training=True)
        if cfg.tint and channels == 3:
            gains = gen.uniform([tf.shape(images)[0], 1, 1, 3], 1.0 - cfg.tint, 1.0 + cfg.tint)
            images = images * gains
        return tf.clip_by_value(images, 0.0, 1.0)

    return augment
