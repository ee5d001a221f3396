import gzip
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import idx_bytes, write_fashion_mnist
from tune.data import fashion_mnist as fm


def test_reads_local_directory(tiny_fashion_mnist):
    ds = fm.load(str(tiny_fashion_mnist))
    assert ds.train_images.shape == (600, 28, 28) and ds.train_images.dtype == np.uint8
    assert ds.test_images.shape == (200, 28, 28)
    assert np.bincount(ds.train_labels).tolist() == [60] * 10
    assert ds.class_names[0] == "T-shirt/top" and len(ds.class_names) == 10
    raw = (tiny_fashion_mnist / "train-images-idx3-ubyte.gz").read_bytes()
    assert ds.sha256["train-images-idx3-ubyte.gz"] == hashlib.sha256(raw).hexdigest()


def test_reads_uncompressed_files(tmp_path, tiny_fashion_mnist):
    for f in tiny_fashion_mnist.iterdir():
        (tmp_path / f.name[:-3]).write_bytes(gzip.decompress(f.read_bytes()))
    ds = fm.load(str(tmp_path))
    assert len(ds.train_labels) == 600


def test_env_var_is_used(monkeypatch, tiny_fashion_mnist):
    monkeypatch.setenv(fm.ENV_VAR, str(tiny_fashion_mnist))
    assert fm.resolve_source() == str(tiny_fashion_mnist)


def test_missing_dataset_says_how_to_fix(monkeypatch, tmp_path):
    monkeypatch.delenv(fm.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with pytest.raises(fm.DatasetNotFoundError, match="FASHION_MNIST_DIR"):
        fm.resolve_source(allow_download=False)
    with pytest.raises(fm.DatasetNotFoundError, match="train-images"):
        fm.load(str(tmp_path / "empty"))


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[: len(b) // 2], "corrupt or truncated gzip"),
    (lambda b: gzip.compress(gzip.decompress(b)[:-100]), "truncated"),
    (lambda b: gzip.compress(b"\x00\x00\x08\x01" + gzip.decompress(b)[4:]), "bad magic"),
    (lambda b: gzip.compress(b"\x00\x00"), "too short"),
])
def test_corrupt_files_get_clear_errors(tmp_path, damage, message):
    d = write_fashion_mnist(tmp_path / "d", 2, 2)
    target = d / "train-images-idx3-ubyte.gz"
    target.write_bytes(damage(target.read_bytes()))
    with pytest.raises(fm.IdxFormatError, match=message) as err:
        fm.load(str(d))
    assert "train-images" in str(err.value)


def test_label_count_mismatch(tmp_path):
    d = write_fashion_mnist(tmp_path / "d", 3, 2)
    (d / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(5, np.uint8))))
    with pytest.raises(fm.IdxFormatError, match="20 images but 5 labels"):
        fm.load(str(d))


def test_stratified_split_is_seeded_and_balanced():
    labels = np.repeat(np.arange(10), 100)
    tr, va = fm.stratified_split(labels, 0.1, seed=3)
    assert len(va) == 100 and len(tr) == 900 and not set(tr) & set(va)
    assert np.bincount(labels[va]).tolist() == [10] * 10
    tr2, va2 = fm.stratified_split(labels, 0.1, seed=3)
    assert (va == va2).all() and (tr == tr2).all()
    assert not (fm.stratified_split(labels, 0.1, seed=4)[1] == va).all()
    with pytest.raises(ValueError):
        fm.stratified_split(labels, 1.5)


def test_real_copy_has_the_standard_sizes():
    d = os.environ.get(fm.ENV_VAR)
    if not d or not Path(d, "train-images-idx3-ubyte.gz").exists():
        pytest.skip("no real Fashion-MNIST copy configured")
    ds = fm.load(d)
    assert ds.train_images.shape == (60000, 28, 28) and ds.test_images.shape == (10000, 28, 28)
    assert np.bincount(ds.train_labels).tolist() == [6000] * 10
    assert np.bincount(ds.test_labels).tolist() == [1000] * 10
