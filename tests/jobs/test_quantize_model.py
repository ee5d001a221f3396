"""vitrine quantize: a trained tiny model's int8 / float16 TFLite variants are model artifacts of their
own, load through the normal loader, agree with the float model, and are a distinct model for
embeddings, indexes and serving (a mismatch is refused)."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from artifacts import model_artifact, publish, storage
from artifacts.configuration import ConfigError
from artifacts.inference import ModelRunner
from artifacts.model_card import CARD_FILE, MODEL_FILE, TFLITE_FILE, ModelCard
from artifacts.preprocess import PreprocessSpec, arrays_to_model_input
from jobs.quantize_model import QuantizeConfig, run
from tune.data import fashion_mnist

FLOAT_ID = "tiny-float"


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_fashion_mnist) -> str:
    """A storage root with a small CNN trained on the tiny tiles (it learns them: the class decides
    where the bright block sits), saved uncompiled as training exports do (no optimizer state)."""
    import keras

    from tune.models import EMBEDDING_LAYER, build_model

    root = str(tmp_path_factory.mktemp("quantize-store"))
    keras.utils.set_random_seed(0)
    ds = fashion_mnist.load(str(tiny_fashion_mnist))
    model = build_model("cnn_dropout_1")
    spec = PreprocessSpec.for_input_shape(model.input_shape[1:])
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    model.fit(arrays_to_model_input(ds.train_images, spec), ds.train_labels.astype(int), epochs=8, batch_size=32,
              verbose=0)
    exported = build_model("cnn_dropout_1")
    exported.set_weights(model.get_weights())
    card = ModelCard(model_id=FLOAT_ID, architecture="cnn_dropout_1", class_names=list(ds.class_names),
                     input_shape=list(spec.input_shape), preprocessing=spec.to_dict(), embedding_layer=EMBEDDING_LAYER,
                     embedding_dim=int(exported.get_layer(EMBEDDING_LAYER).output.shape[-1]),
                     params=int(exported.count_params()), dataset={"name": "fashion-mnist"},
                     test_metrics={"accuracy": -1.0})  # never copied to a variant: it measures its own
    model_artifact.save(exported, card, model_artifact.models_root(root))
    return root


@pytest.fixture(scope="module")
def variants(store, tiny_fashion_mnist) -> dict:
    parent = publish.artifact_uri(model_artifact.models_root(store), FLOAT_ID)
    return {v: run(QuantizeConfig(model=parent, variant=v, data=str(tiny_fashion_mnist))) for v in ("int8", "float16")}


def _test_inputs(data_dir, spec):
    ds = fashion_mnist.load(str(data_dir))
    return arrays_to_model_input(ds.test_images, spec), ds.test_labels.astype(int)


@pytest.mark.parametrize("variant, min_agreement", [("int8", 0.95), ("float16", 0.99)])
def test_a_variant_loads_as_a_model_and_agrees_with_the_float_one(store, variants, tiny_fashion_mnist, variant,
                                                                  min_agreement):
    result = variants[variant]
    float_uri = publish.artifact_uri(model_artifact.models_root(store), FLOAT_ID)
    # Written next to its parent, and LATEST still names the float model.
    assert result.model_uri == publish.artifact_uri(model_artifact.models_root(store), result.model_id)
    assert publish.latest_id(model_artifact.models_root(store)) == FLOAT_ID
    loaded = model_artifact.load(result.model_uri)
    card, parent = loaded.card, model_artifact.read_card(float_uri)
    assert card.variant == variant and card.runtime == "tflite" and loaded.model is None and loaded.tflite
    assert card.model_id != FLOAT_ID and card.model_id.startswith(f"{FLOAT_ID}-{variant}-")
    q = card.quantization
    assert q["parent_model_id"] == FLOAT_ID and q["parent_model_uri"] == float_uri
    assert q["parent_sha256"] == hashlib.sha256(Path(float_uri, MODEL_FILE).read_bytes()).hexdigest()
    assert card.preprocessing == parent.preprocessing and card.class_names == parent.class_names
    assert json.loads(Path(result.model_uri, CARD_FILE).read_text())["format_version"] == 2
    with pytest.raises(ValueError, match="no Keras graph"):
        loaded.embedding_model()

    x, labels = _test_inputs(tiny_fashion_mnist, card.preprocess_spec)
    base, quantized = ModelRunner(float_uri), ModelRunner(result.model_uri)
    a, b = base(x), quantized(x)
    assert quantized.variant == variant and base.variant == "float32"
    assert b.embeddings.shape == (len(x), card.embedding_dim) == a.embeddings.shape
    assert b.probabilities.shape == (len(x), len(card.class_names))
    np.testing.assert_allclose(np.linalg.norm(b.embeddings[~b.zero], axis=1), 1.0, rtol=1e-5)
    base_accuracy = float(np.mean(a.probabilities.argmax(1) == labels))
    assert base_accuracy >= 0.8, "the float model must have learned the tiles, or agreement says nothing"
    agreement = float(np.mean(a.probabilities.argmax(1) == b.probabilities.argmax(1)))
    assert agreement >= min_agreement
    assert float(np.mean(np.sum(a.embeddings * b.embeddings, axis=1))) >= 0.99
    # The card holds the variant's own numbers, as measured here through the same forward pass.
    assert card.test_metrics["accuracy"] == pytest.approx(float(np.mean(b.probabilities.argmax(1) == labels)))
    assert q["agreement_top1"] == pytest.approx(agreement) and q["parent_accuracy"] == pytest.approx(base_accuracy)
    # Every batch size, one and odd ones included, through the one forward pass.
    for n in (1, 7, 1, 33):
        np.testing.assert_allclose(quantized(x[:n]).embeddings, b.embeddings[:n], atol=1e-5)
    assert quantized(x[:0]).embeddings.shape == (0, card.embedding_dim)


def test_int8_is_the_smallest_file(store, variants):
    float_size = Path(model_artifact.models_root(store), FLOAT_ID, MODEL_FILE).stat().st_size
    sizes = {v: Path(r.model_uri, TFLITE_FILE).stat().st_size for v, r in variants.items()}
    assert sizes["int8"] == variants["int8"].size_bytes and variants["int8"].parent_size_bytes == float_size
    assert sizes["int8"] < 0.5 * float_size and sizes["int8"] < 0.7 * sizes["float16"] < 0.7 * float_size


def test_a_variant_or_an_unknown_variant_is_refused(variants):
    with pytest.raises(ConfigError, match="already a int8 variant of tiny-float"):
        run(QuantizeConfig(model=variants["int8"].model_uri, variant="float16", evaluate=False))
    with pytest.raises(ConfigError, match="variant must be one of"):
        run(QuantizeConfig(model=variants["int8"].parent_model_uri, variant="int4", evaluate=False))


def test_cli_writes_a_variant_without_evaluating(store, tmp_path, capsys):
    from jobs.cli import main

    out = str(tmp_path / "models")
    parent = publish.artifact_uri(model_artifact.models_root(store), FLOAT_ID)
    assert main(["quantize", "--model", parent, "--variant", "float16", "--out", out, "--no-evaluate", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["model_uri"] == publish.artifact_uri(out, result["model_id"]) and result["test_metrics"] == {}
    assert model_artifact.read_card(result["model_uri"]).variant == "float16"
    assert main(["quantize", "--model", result["model_uri"], "--variant", "int8", "--no-evaluate"]) == 2
    assert "already a float16 variant" in capsys.readouterr().err


def test_a_variant_is_its_own_model_for_embeddings_indexes_and_serving(store, variants, tiny_fashion_mnist):
    """Float model and int8 variant each get their embeddings run and index; an index is served,
    updated and evaluated only with the model it was built from."""
    from jobs.build_index import BuildIndexConfig
    from jobs.build_index import run as build_index
    from jobs.embed_catalogue import EmbedConfig
    from jobs.embed_catalogue import run as embed
    from jobs.evaluate_search import EvaluateSearchConfig
    from jobs.evaluate_search import run as evaluate_search
    from jobs.export_catalogue import ExportConfig
    from jobs.export_catalogue import run as export
    from serve import versions

    int8 = variants["int8"]
    models = model_artifact.models_root(store)
    catalogue = storage.join(store, "catalogue")
    export(ExportConfig(split="train", out=catalogue, data=str(tiny_fashion_mnist)))
    indexes = {}
    for model_id in (FLOAT_ID, int8.model_id):
        runs = embed(EmbedConfig(catalogue=catalogue, model=publish.artifact_uri(models, model_id), out=store,
                                 local_max_items=10_000))
        # Nothing is carried over from the other model's run: every item is embedded by this one.
        assert runs.model_id == model_id and runs.counts["new"] == runs.counts["total"] == 600
        assert runs.run_uri.startswith(storage.join(store, "embeddings", model_id))
        built = build_index(BuildIndexConfig(embeddings=runs.run_uri, out=store, storage=store, recall_queries=100))
        assert built.published and built.model_id == model_id
        indexes[model_id] = built
    # The second build could not update the float model's index: a full rebuild, saying why.
    assert indexes[int8.model_id].mode == "full" and f"of model '{FLOAT_ID}'" in indexes[int8.model_id].reason

    # indexes/LATEST is the variant's now: followed, it serves the variant's model.
    v = versions.resolve(store)
    assert v.model_id == int8.model_id and v.model_uri == int8.model_uri
    with pytest.raises(versions.VersionRejected, match=f"built with model '{int8.model_id}', but this app is "
                                                       f"pinned to model '{FLOAT_ID}'"):
        versions.resolve(store, model=FLOAT_ID)
    with pytest.raises(versions.VersionRejected, match=f"built with model '{FLOAT_ID}', but this app is pinned "
                                                       f"to model '{int8.model_id}'"):
        versions.resolve(store, model=int8.model_id, index=indexes[FLOAT_ID].index_id)
    assert versions.resolve(store, model=FLOAT_ID, index=indexes[FLOAT_ID].index_id).model_id == FLOAT_ID

    float_index = publish.artifact_uri(storage.join(store, "indexes"), indexes[FLOAT_ID].index_id)
    common = dict(data=str(tiny_fashion_mnist), storage=store, figures=False, out=str(Path(store, "eval")))
    with pytest.raises(ValueError, match=f"built from model {FLOAT_ID}'s embeddings, not {int8.model_id}"):
        evaluate_search(EvaluateSearchConfig(model=int8.model_uri, index=float_index, **common))
    # Matched, the variant's search quality is measured through its own forward pass.
    result = evaluate_search(EvaluateSearchConfig(model=int8.model_uri, **common))
    assert result["model_id"] == int8.model_id and result["index_model_id"] == int8.model_id
    assert result["classification_accuracy"] >= 0.8 and result["exact"]["no_filter"]["map"] > 0.3
