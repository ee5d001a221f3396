"""Storage, publishing, model artifacts and dataset reading against a real S3-protocol server."""

import numpy as np
import pytest

from artifacts import model_artifact, publish, storage
from artifacts.model_card import ModelCard
from artifacts.preprocess import PreprocessSpec
from tune.data import fashion_mnist


def test_s3_roundtrip_listing_and_dirs(s3_bucket, tmp_path):
    uri = storage.join(s3_bucket, "root", "a.txt")
    storage.write_text(uri, "hello")
    assert storage.read_text(uri) == "hello" and storage.exists(uri)
    assert storage.list_dir(storage.join(s3_bucket, "root")) == ["a.txt"]
    with pytest.raises(storage.StorageError, match="not found"):
        storage.read_bytes(storage.join(s3_bucket, "missing"))
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "sub" / "x.bin").write_bytes(b"\x00\x01")
    storage.upload_dir(tmp_path / "d", storage.join(s3_bucket, "copy"))
    with storage.local_copy(storage.join(s3_bucket, "copy")) as local:
        assert (local / "sub" / "x.bin").read_bytes() == b"\x00\x01"


def test_copy_file_within_s3_across_to_local_and_a_missing_source(s3_bucket, tmp_path):
    src = storage.join(s3_bucket, "runs", "a", "part-0.parquet")
    storage.write_bytes(src, b"PAR1 payload")
    storage.copy_file(src, storage.join(s3_bucket, "runs", "b", "part-c-1.parquet"))  # server-side
    assert storage.read_bytes(storage.join(s3_bucket, "runs", "b", "part-c-1.parquet")) == b"PAR1 payload"
    storage.copy_file(src, str(tmp_path / "local" / "copy.parquet"))  # across filesystems
    assert (tmp_path / "local" / "copy.parquet").read_bytes() == b"PAR1 payload"
    storage.copy_file(str(tmp_path / "local" / "copy.parquet"), str(tmp_path / "local" / "again.parquet"))
    assert (tmp_path / "local" / "again.parquet").read_bytes() == b"PAR1 payload"
    with pytest.raises(storage.StorageError):
        storage.copy_file(storage.join(s3_bucket, "runs", "missing.parquet"), storage.join(s3_bucket, "x"))


def test_gzip_objects_are_not_decompressed(s3_bucket):
    uri = storage.join(s3_bucket, "f.gz")
    storage.write_bytes(uri, b"\x1f\x8b not really gzip")
    assert storage.read_bytes(uri) == b"\x1f\x8b not really gzip"


def test_fashion_mnist_from_an_s3_prefix(s3_bucket, tiny_fashion_mnist):
    prefix = storage.join(s3_bucket, "datasets", "fashion-mnist")
    storage.upload_dir(tiny_fashion_mnist, prefix)
    ds = fashion_mnist.load(prefix)
    local = fashion_mnist.load(str(tiny_fashion_mnist))
    assert ds.source == prefix and ds.sha256 == local.sha256
    np.testing.assert_array_equal(ds.train_images, local.train_images)


def test_model_artifact_roundtrip_on_s3(s3_bucket):
    import keras

    inputs = keras.Input((28, 28, 1))
    emb = keras.layers.Dense(4, activation="relu", name="embedding")(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(emb))
    spec = PreprocessSpec()
    card = ModelCard(model_id="m-1", architecture="tiny", class_names=list("abcdefghij"), input_shape=[28, 28, 1],
                     preprocessing=spec.to_dict(), embedding_layer="embedding", embedding_dim=4)
    models = storage.join(s3_bucket, "models")
    model_artifact.save(model, card, models)
    assert publish.latest_id(models) == "m-1"
    loaded = model_artifact.load(models)
    x = np.random.default_rng(0).random((3, 28, 28, 1), dtype=np.float32)
    np.testing.assert_allclose(loaded.model.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)
    assert loaded.card.preprocess_spec == spec
    embedding, probs = loaded.embedding_model().predict(x, verbose=0)
    assert embedding.shape == (3, 4) and probs.shape == (3, 10)
