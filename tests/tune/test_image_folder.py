"""Folder-per-category catalogues: mixed formats and modes, a corrupt file, training on them."""

import io

import numpy as np
import pytest
from PIL import Image

from artifacts.preprocess import PreprocessSpec
from tune.data.image_folder import load_image_folder
from tune.data.splits import load_splits
from tune.training import TrainConfig, prepare_data, train


def product_photo(category: int, rng, size, mode) -> Image.Image:
    """A dark garment on a white background whose shape depends on the category."""
    w, h = size
    arr = np.full((h, w, 3), 250, np.uint8)
    colour = rng.integers(0, 120, size=3)
    if category == 0:
        arr[h // 4: 3 * h // 4, w // 3: 2 * w // 3] = colour  # tall block
    elif category == 1:
        arr[h // 3: 2 * h // 3, w // 8: 7 * w // 8] = colour  # wide block
    else:
        arr[h // 8: 7 * h // 8, w // 8: 7 * w // 8] = colour  # big square
    return Image.fromarray(arr, "RGB").convert(mode)


def write_catalogue(root, per_class=12, corrupt=1):
    rng = np.random.default_rng(0)
    modes = ["RGB", "L", "RGBA", "P", "CMYK"]
    for c, name in enumerate(["dresses", "scarves", "bags"]):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            img = product_photo(c, rng, (int(rng.integers(40, 300)), int(rng.integers(40, 300))), modes[i % 5])
            jpeg = img.mode == "CMYK" or (img.mode in ("RGB", "L") and i % 2)
            fmt, ext = ("JPEG", "jpg") if jpeg else ("PNG", "png")
            buf = io.BytesIO()
            img.save(buf, format=fmt)
            (root / name / f"{name}-{i}.{ext}").write_bytes(buf.getvalue())
    for i in range(corrupt):
        (root / "bags" / f"broken-{i}.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (root / "bags" / "notes.txt").write_text("not an image, ignored")
    return root


def test_reads_mixed_images_and_reports_corrupt_ones(tmp_path):
    root = write_catalogue(tmp_path / "cat")
    spec = PreprocessSpec(height=32, width=32, channels=3)
    folder = load_image_folder(str(root), spec)
    assert folder.class_names == ["bags", "dresses", "scarves"]
    assert folder.images.shape == (36, 32, 32, 3) and folder.images.dtype == np.uint8
    assert np.bincount(folder.labels).tolist() == [12, 12, 12]
    assert len(folder.errors) == 1 and folder.errors[0]["image_uri"].endswith("broken-0.jpg")
    reason = folder.errors[0]["reason"].lower()
    assert "truncated" in reason or "corrupt" in reason
    # White shop backgrounds are inverted to Fashion-MNIST's dark ones.
    assert folder.images[:, 0, 0].mean() < 30


def test_empty_folder_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no <category>/<image>"):
        load_image_folder(str(tmp_path / "empty"), PreprocessSpec())


def test_trains_on_an_image_folder(tmp_path):
    root = write_catalogue(tmp_path / "cat", per_class=20, corrupt=0)
    cfg = TrainConfig(architecture="cnn_dropout_1", dataset="image-folder", epochs=2, batch_size=16,
                      early_stopping_patience=0, validation_fraction=0.2, threads=1)
    splits = prepare_data(cfg, str(root))
    assert len(splits.test_y) == 6 and len(splits.val_y) + len(splits.train_y) == 54
    assert splits.train_x.shape[1:] == (28, 28)  # cnn_dropout_1 takes 28x28x1
    again = load_splits("image-folder", str(root), spec=PreprocessSpec(), validation_fraction=0.2)
    np.testing.assert_array_equal(again.test_y, splits.test_y)  # same seed, same split
    outcome = train(cfg, splits, workdir=tmp_path / "work")
    assert outcome.epochs_run == 2 and outcome.best_model_path.exists()
    assert [row["epoch"] for row in outcome.history] == [1, 2]


def test_nested_folders_read_as_category_plus_sub_category_and_train(tmp_path):
    flat = write_catalogue(tmp_path / "flat", per_class=12, corrupt=0)
    root = tmp_path / "nested"
    for category in ("bags", "dresses", "scarves"):  # <category>/<sub-category>/<image>, the thesis layout
        for i, path in enumerate(sorted((flat / category).glob("*.*"))):
            if path.suffix == ".txt":
                continue
            sub = root / category / ("small" if i % 2 else "large")
            sub.mkdir(parents=True, exist_ok=True)
            path.rename(sub / path.name)
    folder = load_image_folder(str(root), PreprocessSpec(), category_level=2)
    assert folder.class_names == ["bags", "dresses", "scarves"]
    assert np.bincount(folder.labels).tolist() == [12, 12, 12]
    assert sorted(set(folder.sub_categories)) == ["large", "small"]
    for uri, sub, label in zip(folder.uris, folder.sub_categories, folder.labels):
        assert uri.split("/")[-3:-1] == [folder.class_names[label], sub]
    with pytest.raises(FileNotFoundError, match="no <category>/<image>"):
        load_image_folder(str(root), PreprocessSpec())  # level 1 sees only folders, no images

    cfg = TrainConfig(architecture="cnn_dropout_1", dataset="image-folder", category_level=2, epochs=1, batch_size=16,
                      early_stopping_patience=0, validation_fraction=0.2, threads=1)
    splits = prepare_data(cfg, str(root))
    assert len(splits.test_y) + len(splits.val_y) + len(splits.train_y) == 36
    assert splits.describe()["category_level"] == 2  # the card records it, so evaluation reads the same way
    outcome = train(cfg, splits, workdir=tmp_path / "work")
    assert outcome.epochs_run == 1 and outcome.best_model_path.exists()


def test_an_exported_catalogue_is_named_by_its_manifest(tmp_path, tiny_fashion_mnist):
    # Folders are slugs (t-shirt-top); the manifest, the embeddings and the index say T-shirt/top,
    # so a model trained on the folders must too, in the manifest's label order (Fashion-MNIST's).
    from jobs.export_catalogue import ExportConfig, category_slug
    from jobs.export_catalogue import run as export
    from tune.data.fashion_mnist import CLASS_NAMES

    root = tmp_path / "tiles"
    export(ExportConfig(split="train", out=str(root), data=str(tiny_fashion_mnist), limit=100))
    folder = load_image_folder(str(root), PreprocessSpec())
    assert folder.class_names == list(CLASS_NAMES)
    for uri, label in zip(folder.uris, folder.labels):
        assert uri.split("/")[-2] == category_slug(CLASS_NAMES[label])
    (root / "manifest.parquet").unlink()  # plain folders: their own names, sorted
    assert load_image_folder(str(root), PreprocessSpec()).class_names == sorted(map(category_slug, CLASS_NAMES))
