"""The model contract for TFLite variants: the card's runtime and format, saving and loading them
(locally and on S3), and the forward pass refusing a model that does not match its card."""

import dataclasses
import json

import numpy as np
import pytest

from artifacts import model_artifact, storage
from artifacts.inference import ModelRunner
from artifacts.model_card import CARD_FILE, TFLITE_FILE, ModelCard
from artifacts.preprocess import PreprocessSpec
from artifacts.tflite_runtime import TFLiteForward
from tune.data.fashion_mnist import CLASS_NAMES


@pytest.fixture(scope="module")
def float_model():
    import keras

    from tune.models import EMBEDDING_LAYER, build_model

    keras.utils.set_random_seed(0)
    model = build_model("cnn_dropout_1")
    spec = PreprocessSpec.for_input_shape(model.input_shape[1:])
    card = ModelCard(model_id="float-a", architecture="cnn_dropout_1", class_names=list(CLASS_NAMES),
                     input_shape=list(spec.input_shape), preprocessing=spec.to_dict(), embedding_layer=EMBEDDING_LAYER,
                     embedding_dim=int(model.get_layer(EMBEDDING_LAYER).output.shape[-1]))
    return model, card


@pytest.fixture(scope="module")
def int8_blob(float_model) -> bytes:
    from jobs.quantize_model import convert

    model, card = float_model
    return convert(model, card.embedding_layer, "int8")


def _variant_card(card: ModelCard, model_id: str = "float-a-int8") -> ModelCard:
    return dataclasses.replace(card, model_id=model_id, runtime="tflite", format_version=2,
                               quantization={"variant": "int8", "parent_model_id": card.model_id})


def test_cards_of_keras_models_stay_readable_by_older_code_and_variants_do_not(float_model):
    _, card = float_model
    written = json.loads(card.to_json())
    assert written["format_version"] == 1 and written["runtime"] == "keras" and card.variant == "float32"
    variant = ModelCard.from_json(_variant_card(card).to_json())
    assert variant.runtime == "tflite" and variant.model_file == TFLITE_FILE and variant.variant == "int8"
    assert json.loads(variant.to_json())["format_version"] == 2
    with pytest.raises(ValueError, match="runtime 'onnx' is not one of keras, tflite"):
        ModelCard.from_json(json.dumps({**written, "runtime": "onnx"}))
    with pytest.raises(ValueError, match="format 3 is newer"):
        ModelCard.from_json(json.dumps({**written, "format_version": 3}))


def test_a_variant_saves_and_loads_through_the_model_loader_on_s3(s3_bucket, float_model, int8_blob):
    model, card = float_model
    models = storage.join(s3_bucket, "models")
    model_artifact.save(model, card, models, make_latest=False)
    uri = model_artifact.save(int8_blob, _variant_card(card), models)  # LATEST may name a variant too
    assert storage.read_bytes(storage.join(uri, TFLITE_FILE)) == int8_blob
    loaded = model_artifact.load(models)
    assert loaded.card.model_id == "float-a-int8" and loaded.tflite == int8_blob and loaded.model is None
    x = np.random.default_rng(0).random((5, *card.input_shape), dtype=np.float32)
    out = ModelRunner(models)(x)
    ref = ModelRunner(storage.join(models, "float-a"))(x)
    assert out.embeddings.shape == (5, card.embedding_dim) and out.probabilities.shape == (5, len(CLASS_NAMES))
    assert float(np.min(np.sum(out.embeddings * ref.embeddings, axis=1))) > 0.99
    np.testing.assert_allclose(out.probabilities.sum(axis=1), 1.0, rtol=1e-4)


def test_a_flatbuffer_that_does_not_match_its_card_is_refused(float_model, int8_blob, tmp_path):
    _, card = float_model
    with pytest.raises(ValueError, match=r"gives 138 columns; its card says inputs \(28, 28, 1\), embedding 64"):
        TFLiteForward(int8_blob, (28, 28, 1), dim=64, classes=10)
    with pytest.raises(ValueError, match=r"takes \(28, 28, 1\)"):
        TFLiteForward(int8_blob, (32, 32, 1), dim=card.embedding_dim, classes=10)
    # Through the loader: a card that lies about the embedding is refused when the model loads.
    uri = model_artifact.save(int8_blob, _variant_card(dataclasses.replace(card, embedding_dim=64)), str(tmp_path))
    with pytest.raises(ValueError, match="embedding 64 \\+ 10 classes"):
        ModelRunner(uri)
    assert json.loads((tmp_path / "float-a-int8" / CARD_FILE).read_text())["runtime"] == "tflite"
