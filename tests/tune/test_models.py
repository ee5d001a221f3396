"""Tests for the model registry and every registered architecture (tune.models)."""

from __future__ import annotations

import logging
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tune.models import (  # noqa: E402
    EMBEDDING_LAYER,
    build_model,
    describe_models,
    get_model_info,
    list_models,
    register_model,
)
from tune.models import transfer  # noqa: E402

MODEL_NAMES = [info.name for info in list_models()]
TRANSFER_MODELS = ["mobilenet_v2", "resnet50", "vgg16"]
DESCRIBE_KEYS = {
    "name",
    "params",
    "trainable_params",
    "input_shape",
    "embedding_dim",
    "description",
    "reference",
}
EXACT_PARAMS = {
    "seed_cnn": 241_546,
    "seed_cnn_dropout": 241_546,
    "cnn_dropout_1": 44_426,
    "cnn_dropout_3": 44_426,
}
PUBLISHED_PARAMS = {  # reconstructed topologies: within 1% of the published count
    "cnn_dropout_2": 32_340,
    "cnn_simple": 110_968,
}


@pytest.fixture(autouse=True)
def _no_weights_env(monkeypatch):
    # Hermetic: never pick up a developer's local backbone weights directory.
    monkeypatch.delenv(transfer.WEIGHTS_ENV, raising=False)


@pytest.fixture(scope="module")
def described() -> dict[str, dict]:
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(transfer.WEIGHTS_ENV, raising=False)
        return {row["name"]: row for row in describe_models()}


_BUILT: dict[str, keras.Model] = {}


def _built(name: str) -> keras.Model:
    """Each model at its defaults, built once per test session."""
    if name not in _BUILT:
        _BUILT[name] = build_model(name)
    return _BUILT[name]


def _all_layers(model: keras.Model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


def _random_batch(shape, n=2, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, *shape), dtype=np.float32)


# --------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------
def test_expected_models_registered():
    expected = {
        "seed_cnn",
        "seed_cnn_dropout",
        "cnn_dropout_1",
        "cnn_dropout_2",
        "cnn_dropout_3",
        "cnn_simple",
        "lenet5",
        "thesis_cnn",
        "vgg16",
        "resnet50",
        "mobilenet_v2",
        "vitrine_cnn",
    }
    assert expected <= set(MODEL_NAMES)
    assert MODEL_NAMES == sorted(MODEL_NAMES)


def test_model_info_fields():
    for info in list_models():
        assert get_model_info(info.name) is info
        assert len(info.input_shape) == 3 and all(isinstance(d, int) and d > 0 for d in info.input_shape)
        assert info.description and info.reference
        assert callable(info.builder)
        assert info.builder.__doc__, f"{info.name} builder has no docstring"
    assert get_model_info("thesis_cnn").input_shape == (128, 128, 3)
    assert get_model_info("vgg16").input_shape == (28, 28, 1)


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError) as excinfo:
        build_model("nope")
    message = str(excinfo.value)
    assert "nope" in message
    for name in MODEL_NAMES:
        assert name in message
    with pytest.raises(ValueError):
        get_model_info("nope")


def test_unknown_option_is_rejected():
    with pytest.raises(TypeError, match="bogus"):
        build_model("seed_cnn", bogus=1)
    with pytest.raises(TypeError, match="width"):  # the message lists the valid options
        build_model("vitrine_cnn", widht=64)
    with pytest.raises(TypeError, match="backbone_size"):
        build_model("mobilenet_v2", backbone=64)


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="num_classes"):
        build_model("seed_cnn", num_classes=1)
    with pytest.raises(ValueError, match="input_shape"):
        build_model("seed_cnn", input_shape=(28, 28))
    with pytest.raises(ValueError, match="backbone_size"):
        build_model("mobilenet_v2", backbone_size=16)
    with pytest.raises(ValueError, match="channels"):
        build_model("vgg16", input_shape=(32, 32, 2))
    with pytest.raises(ValueError, match="dropout"):
        build_model("vitrine_cnn", dropout=1.5)
    with pytest.raises(ValueError, match="convs_per_block"):
        build_model("vitrine_cnn", convs_per_block=())


def test_duplicate_registration_raises():
    with pytest.raises(ValueError, match="already registered"):

        @register_model("seed_cnn", input_shape=(28, 28, 1), description="dup", reference="dup")
        def _dup(num_classes=10, input_shape=(28, 28, 1)):  # pragma: no cover - never built
            raise AssertionError


# --------------------------------------------------------------------------------------
# Contract every registered model must satisfy
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_contract(name, described):
    info = get_model_info(name)
    model = _built(name)
    assert isinstance(model, keras.Model)
    assert not model.compiled, "builders must return uncompiled models"
    assert tuple(model.input_shape) == (None, *info.input_shape)

    batch = _random_batch(info.input_shape)
    probs = np.asarray(model(batch, training=False))
    assert probs.shape == (2, 10)
    assert np.all(probs >= 0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)

    embedding_layers = [layer for layer in _all_layers(model) if layer.name == EMBEDDING_LAYER]
    assert len(embedding_layers) == 1
    embedding = model.get_layer(EMBEDDING_LAYER)
    dim = described[name]["embedding_dim"]
    assert tuple(embedding.output.shape) == (None, dim)
    features = keras.Model(model.input, embedding.output)(batch, training=False)
    assert tuple(features.shape) == (2, dim)

    for layer in _all_layers(model):
        assert type(layer).__module__.startswith("keras"), f"{layer.name}: {type(layer)} is not a Keras layer"
        assert not isinstance(layer, keras.layers.Lambda), f"{layer.name} is a Lambda layer"


def test_parameter_counts(described):
    for name, expected in EXACT_PARAMS.items():
        assert described[name]["params"] == expected, name
        assert _built(name).count_params() == expected, name
    for name, published in PUBLISHED_PARAMS.items():
        params = described[name]["params"]
        assert abs(params - published) / published < 0.01, (name, params, published)
    assert described["cnn_dropout_2"]["params"] == 32_342
    assert described["cnn_simple"]["params"] == 110_954


def test_describe_models(described):
    assert list(described) == MODEL_NAMES
    for name, row in described.items():
        assert set(row) == DESCRIBE_KEYS, name
        info = get_model_info(name)
        assert row["input_shape"] == list(info.input_shape)
        assert row["description"] == info.description and row["reference"] == info.reference
        assert isinstance(row["params"], int) and isinstance(row["trainable_params"], int)
        assert 0 < row["trainable_params"] <= row["params"]
        assert isinstance(row["embedding_dim"], int) and row["embedding_dim"] > 0


@pytest.mark.parametrize("name", ["seed_cnn", "lenet5", "vitrine_cnn", "mobilenet_v2"])
def test_num_classes_changes_output(name):
    model = build_model(name, num_classes=5)
    out = model(_random_batch(get_model_info(name).input_shape), training=False)
    assert tuple(out.shape) == (2, 5)
    assert tuple(model.get_layer("predictions").output.shape) == (None, 5)


def test_thesis_cnn_builds_on_fashion_mnist_shape():
    model = build_model("thesis_cnn", input_shape=(28, 28, 1))
    out = model(_random_batch((28, 28, 1)), training=False)
    assert tuple(out.shape) == (2, 10)
    assert tuple(model.get_layer(EMBEDDING_LAYER).output.shape) == (None, 512)


def test_vitrine_cnn_options():
    model = build_model("vitrine_cnn", width=16, convs_per_block=(2, 2, 1), dense=64, dropout=0.2)
    assert tuple(model.get_layer(EMBEDDING_LAYER).output.shape) == (None, 64)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.filters for c in convs] == [16, 16, 32, 32, 64]
    assert all(not c.use_bias for c in convs)
    assert model.get_layer("dropout_embedding").rate == pytest.approx(0.2)
    assert not any(isinstance(layer, keras.layers.RandomFlip) for layer in model.layers)


# --------------------------------------------------------------------------------------
# Transfer models
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", TRANSFER_MODELS)
def test_transfer_missing_weights_file(name, tmp_path):
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        build_model(name, weights=str(tmp_path / "does-not-exist.h5"))


@pytest.mark.parametrize("name", TRANSFER_MODELS)
def test_transfer_backbone_frozen_by_default(name, described):
    row = described[name]
    assert row["trainable_params"] < row["params"] / 2
    model = _built(name)
    backbone = model.get_layer(f"{name}_backbone")
    assert not backbone.trainable
    assert not model.get_layer("gray_to_rgb").trainable
    assert [layer.name for layer in model.layers][:3] == ["image", "resize", "gray_to_rgb"]


def test_transfer_trainable_backbone_option(described):
    model = build_model("mobilenet_v2", trainable_backbone=True)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable > described["mobilenet_v2"]["trainable_params"] * 2
    # The fixed preprocessing stays frozen even when fine-tuning.
    assert not model.get_layer("gray_to_rgb").trainable


def test_transfer_skips_resize_and_gray_for_rgb_at_backbone_size():
    model = build_model("mobilenet_v2", input_shape=(48, 48, 3), backbone_size=48)
    names = [layer.name for layer in model.layers]
    assert "resize" not in names and "gray_to_rgb" not in names
    assert tuple(model(_random_batch((48, 48, 3)), training=False).shape) == (2, 10)


def test_caffe_preprocessing_matches_keras_applications():
    model = build_model("vgg16", input_shape=(32, 32, 1))  # no resize: 32 == backbone_size
    pre = keras.Model(model.input, model.get_layer("caffe_preprocess").output)
    x = _random_batch((32, 32, 1), seed=3)
    expected = keras.applications.vgg16.preprocess_input(np.repeat(x, 3, axis=-1) * 255.0)
    np.testing.assert_allclose(np.asarray(pre(x)), expected, rtol=1e-5, atol=1e-3)

    rgb = build_model("resnet50", input_shape=(32, 32, 3))
    pre = keras.Model(rgb.input, rgb.get_layer("caffe_preprocess").output)
    x = _random_batch((32, 32, 3), seed=4)
    expected = keras.applications.resnet50.preprocess_input(x * 255.0)
    np.testing.assert_allclose(np.asarray(pre(x)), expected, rtol=1e-5, atol=1e-3)


def test_mobilenet_preprocessing_matches_keras_applications():
    model = _built("mobilenet_v2")
    pre = keras.Model(model.input, model.get_layer("tf_preprocess").output)
    x = _random_batch((28, 28, 1), seed=5)
    resized = keras.ops.image.resize(np.repeat(x, 3, axis=-1), (32, 32))
    expected = keras.applications.mobilenet_v2.preprocess_input(np.asarray(resized) * 255.0)
    np.testing.assert_allclose(np.asarray(pre(x)), expected, atol=1e-5)


def test_local_weights_file_and_env_dir(tmp_path, monkeypatch, caplog):
    source = build_model("mobilenet_v2")
    backbone = source.get_layer("mobilenet_v2_backbone")
    path = tmp_path / "mobilenet_v2_notop.weights.h5"
    backbone.save_weights(path)

    def backbone_weights(model):
        return model.get_layer("mobilenet_v2_backbone").get_weights()

    loaded = build_model("mobilenet_v2", weights=str(path))
    for a, b in zip(backbone_weights(source), backbone_weights(loaded)):
        np.testing.assert_array_equal(a, b)

    monkeypatch.setenv(transfer.WEIGHTS_ENV, str(tmp_path))
    with caplog.at_level(logging.INFO, logger="vitrine.models"):
        from_env = build_model("mobilenet_v2")
    assert str(path) in caplog.text
    for a, b in zip(backbone_weights(source), backbone_weights(from_env)):
        np.testing.assert_array_equal(a, b)


def test_backbone_weights_says_what_the_backbone_starts_from(tmp_path, monkeypatch):
    # What the grid writes into the card (training_config.backbone_weights) and the report.
    assert transfer.backbone_weights("thesis_cnn", {}) is None
    assert transfer.backbone_weights("mobilenet_v2", {}) == "random (no local file)"
    path = tmp_path / "mobilenet_v2_notop.weights.h5"
    build_model("mobilenet_v2").get_layer("mobilenet_v2_backbone").save_weights(path)
    assert transfer.backbone_weights("mobilenet_v2", {"weights": str(path)}) == str(path)
    monkeypatch.setenv(transfer.WEIGHTS_ENV, str(tmp_path))
    assert transfer.backbone_weights("mobilenet_v2", {}) == str(path)
    assert transfer.backbone_weights("vgg16", {}) == transfer.RANDOM_WEIGHTS  # no vgg16 file there
    with pytest.raises(FileNotFoundError):
        transfer.backbone_weights("mobilenet_v2", {"weights": str(tmp_path / "missing.h5")})


def test_imagenet_failure_falls_back_to_random(monkeypatch, caplog):
    real, mode = transfer._BACKBONES["mobilenet_v2"]
    calls = []

    def offline(**kwargs):
        calls.append(kwargs["weights"])
        if kwargs["weights"] == "imagenet":
            raise Exception("URL fetch failure: [Errno -2] Name or service not known")
        return real(**kwargs)

    monkeypatch.setitem(transfer._BACKBONES, "mobilenet_v2", (offline, mode))
    with caplog.at_level(logging.WARNING, logger="vitrine.models"):
        model = build_model("mobilenet_v2", weights="imagenet")
    assert calls == ["imagenet", None]
    assert isinstance(model, keras.Model)
    text = caplog.text
    assert "ImageNet weights" in text and "could not be fetched" in text
    assert "randomly initialised" in text
    assert transfer.WEIGHTS_ENV in text and "weights=" in text


def test_default_weights_logs_random_init(caplog):
    with caplog.at_level(logging.INFO, logger="vitrine.models"):
        build_model("mobilenet_v2")
    assert "random weights" in caplog.text


# --------------------------------------------------------------------------------------
# Save / load
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["vitrine_cnn", "mobilenet_v2", "thesis_cnn"])
def test_save_load_roundtrip(name, tmp_path):
    model = _built(name)
    batch = _random_batch(get_model_info(name).input_shape, seed=7)
    before = np.asarray(model(batch, training=False))
    path = tmp_path / "m.keras"
    model.save(path)
    restored = keras.models.load_model(path, compile=False)
    after = np.asarray(restored(batch, training=False))
    np.testing.assert_allclose(after, before, rtol=1e-6, atol=1e-6)
    assert restored.get_layer(EMBEDDING_LAYER).output.shape == model.get_layer(EMBEDDING_LAYER).output.shape
