"""Folder-per-category image catalogues: ``<root>/<category>/<item_id>.<ext>``, local or ``s3://``.

The layout the published visual-search system trained on; its thesis nests one more level,
``<root>/<category>/<sub-category>/<item_id>.<ext>`` (``category_level=2``): the label is the
category, the sub-category is kept per image. A manifest beside the folders (as
``vitrine export-catalogue`` writes) names the classes, as it names them to the embedding job.
Images of any format, size and mode go through the shared preprocessing function, so training
sees exactly what serving will. An unreadable image is skipped and reported with its reason,
never fatal.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import numpy as np

from artifacts import storage
from artifacts.catalogue import CATEGORY_LEVELS, IMAGE_EXTENSIONS
from artifacts.preprocess import ImageDecodeError, PreprocessSpec, preprocess_bytes

log = logging.getLogger("vitrine.data")


@dataclass
class ImageFolder:
    images: np.ndarray  # uint8 (N, H, W) or (N, H, W, 3), already at the model's input size
    labels: np.ndarray  # int64 (N,)
    class_names: list[str]
    item_ids: list[str]
    uris: list[str]
    errors: list[dict] = field(default_factory=list)  # {"image_uri", "reason"}
    sub_categories: list[str | None] = field(default_factory=list)  # per image; None in flat folders


def list_image_folder(root: str, category_level: int = 1) -> list[tuple[str, str, str, str | None]]:
    """``(category, item_id, uri, sub_category)`` for every image file, categories sorted by name;
    ``category_level`` 2 reads ``<category>/<sub-category>/<image>`` (sub_category None at 1)."""
    if category_level not in CATEGORY_LEVELS:
        raise ValueError(f"category_level {category_level!r}: valid are 1 (<category>/<image>) and 2 "
                         f"(<category>/<sub-category>/<image>)")
    entries = []
    for category in storage.list_dir(root):
        cat_uri = storage.join(root, category)
        if not storage.is_dir(cat_uri) or category.startswith("."):
            continue
        folders = [(cat_uri, None)]
        if category_level == 2:
            folders = [(storage.join(cat_uri, sub), sub) for sub in storage.list_dir(cat_uri)
                       if not sub.startswith(".") and storage.is_dir(storage.join(cat_uri, sub))]
        for folder, sub in folders:
            for name in storage.list_dir(folder):
                stem, ext = os.path.splitext(name)
                if ext.lower() in IMAGE_EXTENSIONS:
                    entries.append((category, stem, storage.join(folder, name), sub))
    return entries


def _manifest_names(root: str, entries: list) -> tuple[list, list[str]]:
    """The entries with the categories the catalogue's manifest gives their items, and the class
    order. Exported folders are slugs (``t-shirt-top``) while the manifest, the embeddings and the
    index say ``T-shirt/top``: a model trained on the folders must answer with the names search
    filters by. Classes follow the manifest's ``label`` column when it numbers each category once
    (Fashion-MNIST's order for an exported catalogue), else they are sorted by name."""
    from artifacts import catalogue_manifest

    manifest = catalogue_manifest.find_manifest(root) if entries else None
    if manifest is None:
        return entries, sorted({e[0] for e in entries})
    rows = catalogue_manifest.read_manifest(manifest).to_pylist()
    named = {r["item_id"]: r["category"] for r in rows if r.get("category")}
    entries = [(named.get(item_id, category), item_id, uri, sub) for category, item_id, uri, sub in entries]
    present = {e[0] for e in entries}
    labels: dict[str, set] = {}
    for r in rows:
        if r.get("category") in present and isinstance(r.get("label"), int):
            labels.setdefault(r["category"], set()).add(r["label"])
    numbered = len(labels) == len(present) and all(len(v) == 1 for v in labels.values()) \
        and len({next(iter(v)) for v in labels.values()}) == len(present)
    return entries, sorted(present, key=(lambda c: next(iter(labels[c]))) if numbered else None)


def load_image_folder(root: str, spec: PreprocessSpec, *, max_per_class: int = 0,
                      category_level: int = 1) -> ImageFolder:
    """Decode and preprocess a folder-per-category catalogue into arrays for training."""
    entries, class_names = _manifest_names(root, list_image_folder(root, category_level))
    if not class_names:
        layout = "<category>/<sub-category>/<image>" if category_level == 2 else "<category>/<image>"
        raise FileNotFoundError(f"{root}: no {layout} files found ({', '.join(IMAGE_EXTENSIONS)})")
    index = {c: i for i, c in enumerate(class_names)}
    images, labels, ids, uris, errors, subs = [], [], [], [], [], []
    taken: dict[str, int] = {}
    for category, item_id, uri, sub in entries:
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
        subs.append(sub)
        taken[category] = taken.get(category, 0) + 1
    if errors:
        log.warning("%s: skipped %d unreadable images (first: %s: %s)", root, len(errors),
                    errors[0]["image_uri"], errors[0]["reason"])
    if not images:
        raise ValueError(f"{root}: none of the {len(entries)} images could be read")
    return ImageFolder(np.stack(images), np.asarray(labels, dtype=np.int64), class_names, ids, uris, errors,
                       sub_categories=subs)
