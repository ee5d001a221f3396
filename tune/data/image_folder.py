"""Folder-per-category image catalogues: ``<root>/<category>/<item_id>.<ext>``, local or ``s3://``.

The layout the published visual-search system trained on. Images of any format, size and mode
go through the shared preprocessing function, so training sees exactly what serving will. An
unreadable image is skipped and reported with its reason, never fatal.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import numpy as np

from artifacts import storage
from artifacts.preprocess import ImageDecodeError, PreprocessSpec, preprocess_bytes

log = logging.getLogger("vitrine.data")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")


@dataclass
class ImageFolder:
    images: np.ndarray  # uint8 (N, H, W) or (N, H, W, 3), already at the model's input size
    labels: np.ndarray  # int64 (N,)
    class_names: list[str]
    item_ids: list[str]
    uris: list[str]
    errors: list[dict] = field(default_factory=list)  # {"image_uri", "reason"}


def list_image_folder(root: str) -> list[tuple[str, str, str]]:
    """``(category, item_id, uri)`` for every image file, categories sorted by name."""
    entries = []
    for category in storage.list_dir(root):
        cat_uri = storage.join(root, category)
        if not storage.is_dir(cat_uri) or category.startswith("."):
            continue
        for name in storage.list_dir(cat_uri):
            stem, ext = os.path.splitext(name)
            if ext.lower() in IMAGE_EXTENSIONS:
                entries.append((category, stem, storage.join(cat_uri, name)))
    return entries


def load_image_folder(root: str, spec: PreprocessSpec, *, max_per_class: int = 0) -> ImageFolder:
    """Decode and preprocess a folder-per-category catalogue into arrays for training."""
    entries = list_image_folder(root)
    class_names = sorted({c for c, _, _ in entries})
    if not class_names:
        raise FileNotFoundError(f"{root}: no <category>/<image> files found ({', '.join(IMAGE_EXTENSIONS)})")
    index = {c: i for i, c in enumerate(class_names)}
    images, labels, ids, uris, errors = [], [], [], [], []
    taken: dict[str, int] = {}
    for category, item_id, uri in entries:
        if max_per_class and taken.get(category, 0) >= max_per_class:
            continue
        try:
            x = preprocess_bytes(storage.read_bytes(uri), spec)
        except (ImageDecodeError, storage.StorageError) as exc:
            errors.append({"image_uri": uri, "reason": getattr(exc, "reason", str(exc))})
            continue
        # Back to uint8: the values are exact multiples of 1/255, so nothing is lost, and the
        # training pipeline handles these like any other raw pixels.
        pixels = np.rint(x / spec.scale).astype(np.uint8)
        images.append(pixels[..., 0] if spec.channels == 1 else pixels)
        labels.append(index[category])
        ids.append(item_id)
        uris.append(uri)
        taken[category] = taken.get(category, 0) + 1
    if errors:
        log.warning("%s: skipped %d unreadable images (first: %s: %s)", root, len(errors),
                    errors[0]["image_uri"], errors[0]["reason"])
    if not images:
        raise ValueError(f"{root}: none of the {len(entries)} images could be read")
    return ImageFolder(np.stack(images), np.asarray(labels, dtype=np.int64), class_names, ids, uris, errors)
