"""Train / validation / test splits of a named dataset, the same in every trial and evaluation.

``fashion-mnist``: the IDX train file split (seeded, stratified) into train and validation; the
IDX test file is the test split. ``image-folder``: a folder-per-category catalogue split
(seeded, stratified) into test, then train and validation, at the model's input size.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from artifacts.preprocess import PreprocessSpec

from . import fashion_mnist

DATASETS = ("fashion-mnist", "image-folder")


@dataclass
class Splits:
    train_x: np.ndarray  # uint8 pixels
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    class_names: list[str]
    name: str = "fashion-mnist"
    source: str = ""
    sha256: dict[str, str] = field(default_factory=dict)
    category_level: int = 1  # image-folder: 2 = <category>/<sub-category>/<image>

    def describe(self) -> dict:
        """What a model card records about the data a model saw."""
        out = {"name": self.name, "source": self.source, "sha256": self.sha256,
               "train": int(len(self.train_y)), "validation": int(len(self.val_y)), "test": int(len(self.test_y))}
        if self.category_level != 1:  # so evaluation re-reads the folders the same way
            out["category_level"] = self.category_level
        return out


def load_splits(name: str, source: str | None, *, spec: PreprocessSpec, validation_fraction: float = 0.1,
                test_fraction: float = 0.1, seed: int = 0, max_per_class: int = 0, category_level: int = 1) -> Splits:
    if name == "fashion-mnist":
        ds = fashion_mnist.load(source)
        images, labels = ds.train_images, ds.train_labels
        test_x, test_y = ds.test_images, ds.test_labels
        if max_per_class > 0:
            keep = fashion_mnist.per_class_subset(labels, max_per_class, seed=seed)
            images, labels = images[keep], labels[keep]
        class_names, sha256, src = ds.class_names, ds.sha256, ds.source
    elif name == "image-folder":
        from .image_folder import load_image_folder

        if not source:
            raise ValueError("dataset image-folder needs a source: --data <root>/<category>/<image> (local or s3://)")
        folder = load_image_folder(source, spec, category_level=category_level)
        rest, test = fashion_mnist.stratified_split(folder.labels, test_fraction, seed=seed + 1)
        images, labels = folder.images[rest], folder.labels[rest]
        test_x, test_y = folder.images[test], folder.labels[test]
        if max_per_class > 0:
            keep = fashion_mnist.per_class_subset(labels, max_per_class, seed=seed)
            images, labels = images[keep], labels[keep]
        class_names, sha256, src = folder.class_names, {}, source
    else:
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
    train_idx, val_idx = fashion_mnist.stratified_split(labels, validation_fraction, seed=seed)
    return Splits(images[train_idx], labels[train_idx], images[val_idx], labels[val_idx], test_x, test_y,
                  class_names=list(class_names), name=name, source=src, sha256=sha256,
                  category_level=category_level if name == "image-folder" else 1)
