"""Grad-CAM and saliency maps (artifacts/explain.py) on small models trained on the synthetic tiles,
and their placement back onto an upload."""

import io

import numpy as np
import pytest
from PIL import Image

from artifacts import explain
from artifacts.inference import ModelRunner
from artifacts.preprocess import PreprocessSpec, input_box, preprocess_bytes
from tests.helpers import synthetic_images


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module", params=["softmax", "cosine"])
def models(request, trained_models) -> tuple[ModelRunner, explain.Explainer]:
    """The classifier's runner and the explainer of one artifact."""
    uri = trained_models[request.param]
    return ModelRunner(uri), explain.load_explainer(uri)


@pytest.fixture(scope="module")
def tiles() -> tuple[np.ndarray, np.ndarray]:
    labels = np.array([1, 8, 3, 6])
    return synthetic_images(labels, seed=5), labels


def _inputs(runner: ModelRunner, tiles) -> np.ndarray:
    return np.stack([preprocess_bytes(_png(t), runner.card.preprocess_spec) for t in tiles[0]])


@pytest.mark.parametrize("method", explain.METHODS)
def test_heatmap_has_the_input_shape_is_in_0_1_not_constant_and_changes_with_the_input(models, tiles, method):
    runner, explainer = models
    x = _inputs(runner, tiles)
    out = explainer.explain(x, method)
    assert len(out) == len(x)
    for e in out:
        assert e.heatmap.shape == runner.shape[:2] and e.heatmap.dtype == np.float32
        assert e.heatmap.min() >= 0 and e.heatmap.max() == pytest.approx(1.0)
        assert e.heatmap.std() > 0.05, "a constant map says nothing"
        assert not e.empty
        assert e.method == method
    # Different images (blocks of other sizes in other places) give different maps.
    for a, b in zip(out, out[1:]):
        assert np.abs(a.heatmap - b.heatmap).mean() > 0.03


def test_explains_the_predicted_class_with_the_classifier_probability(models, tiles):
    runner, explainer = models
    x = _inputs(runner, tiles)
    probs = runner(x).probabilities
    out = explainer.explain(x, "gradcam")
    assert [e.class_index for e in out] == list(probs.argmax(axis=1))
    if runner.card.architecture == "cnn_dropout_1":  # the cosine model is only explained, barely trained
        assert (probs.argmax(axis=1) == tiles[1]).mean() >= 0.75, "the tiny model learned the tiles"
    for e, p in zip(out, probs):
        assert e.probability == pytest.approx(float(p.max()), abs=1e-5)
        np.testing.assert_allclose(e.probabilities, p, atol=1e-5)
    assert out[0].layer == ("conv2" if runner.card.architecture == "cnn_dropout_1" else "block2_relu2")


def test_another_target_class_gives_another_map(models, tiles):
    runner, explainer = models
    x = _inputs(runner, tiles)[:1]
    own = explainer.explain(x, "gradcam")[0]
    other = (own.class_index + 5) % len(runner.class_names)
    theirs = explainer.explain(x, "gradcam", target=[other])[0]
    assert theirs.class_index == other and theirs.probability < own.probability
    assert not np.allclose(own.heatmap, theirs.heatmap)


def test_the_heat_falls_on_the_object_of_an_upload_and_nowhere_else(trained_models, tiles):
    """A tile pasted off-centre on a large white photo: the canonical input is its crop, and the
    heatmap placed back through input_box lies on that crop, at the upload's size."""
    explainer = explain.load_explainer(trained_models["softmax"])
    spec = explainer.card.preprocess_spec
    tile = 255 - tiles[0][1]  # dark object on white, as a shop photo
    canvas = np.full((180, 240), 255, np.uint8)
    canvas[100:156, 30:86] = np.asarray(Image.fromarray(tile).resize((56, 56), Image.Resampling.NEAREST))
    upload = explain.read_upload(_png(canvas), spec, max_pixels=10**7)
    np.testing.assert_array_equal(upload.pixels, preprocess_bytes(_png(canvas), spec))
    y0, y1, x0, x1 = upload.box
    # The crop holds the bright block of class 8 (tile rows 16-24, columns 10-21, doubled) and
    # stays on the tile.
    assert y0 <= 132 and y1 >= 148 and x0 <= 50 and x1 >= 72, upload.box
    assert y0 >= 90 and y1 <= 166 and x0 >= 20 and x1 <= 96, upload.box
    heat = explainer.explain(upload.pixels, "gradcam")[0].heatmap
    placed = explain.place_heatmap(heat, upload.box, upload.image.size)
    assert placed.shape == (180, 240)
    inside = np.zeros_like(placed, bool)
    inside[int(y0):int(np.ceil(y1)), int(x0):int(np.ceil(x1))] = True
    assert placed[~inside].max() == 0 and placed[inside].max() > 0.9
    shown = explain.upload_overlay(upload, heat, max_side=120)
    assert shown.shape == (90, 120, 3) and shown.dtype == np.uint8
    # Cold pixels show the photo as it is (white here); hot ones are coloured.
    assert (shown[:40, 60:] == 255).all() and shown[50:78, 15:43].std() > 5


def test_a_large_jpeg_is_shown_at_its_own_size_though_decoded_smaller_for_the_model(trained_models):
    explainer = explain.load_explainer(trained_models["softmax"])
    photo = Image.new("RGB", (640, 480), (240, 240, 235))
    photo.paste(Image.new("RGB", (200, 300), (40, 60, 90)), (300, 100))
    buf = io.BytesIO()
    photo.save(buf, format="JPEG", quality=90)
    upload = explain.read_upload(buf.getvalue(), explainer.card.preprocess_spec, max_pixels=10**7)
    assert upload.size == (640, 480) and upload.image.width < 640  # the model's decode is a JPEG draft
    heat = explainer.explain(upload.pixels, "gradcam")[0].heatmap
    shown = explain.upload_overlay(upload, heat, max_side=512)
    assert shown.shape == (384, 512, 3)
    # The box (in the draft's pixels) holds the garment, x 300-500 and y 100-400 at 640 px, padded
    # to a square; the heat lies inside it, at 512 px.
    f = 640 / upload.image.width
    y0, y1, x0, x1 = (v * f for v in upload.box)
    assert x0 <= 302 and x1 >= 498 and y0 <= 102 and y1 >= 398 and x1 - x0 == pytest.approx(y1 - y0, abs=2 * f)
    hot = np.abs(shown.astype(int) - np.asarray(photo.resize((512, 384))).astype(int)).sum(axis=-1) > 60
    ys, xs = np.nonzero(hot)
    assert len(ys) > 1000
    assert xs.min() >= x0 * 0.8 - 2 and xs.max() <= x1 * 0.8 + 2 and ys.min() >= y0 * 0.8 - 2 and ys.max() <= y1 * 0.8 + 2


def test_input_box_of_the_old_pipeline_is_its_letterbox():
    spec = PreprocessSpec()  # old pipeline: pad to 28x28 keeping the aspect ratio
    img = Image.new("L", (56, 28))
    y0, y1, x0, x1 = input_box(img, spec)
    assert (x0, x1) == (0, 56) and y0 == pytest.approx(-14) and y1 == pytest.approx(42)
    assert input_box(Image.new("L", (28, 28)), spec) == (0, 28, 0, 28)


def test_overlay_and_colours():
    heat = np.zeros((4, 4), np.float32)
    heat[0, 0] = 1.0
    shown = explain.overlay(np.full((8, 8), 100, np.uint8), heat, alpha=0.6)
    assert shown.shape == (8, 8, 3) and (shown[-1, -1] == 100).all() and shown[0, 0, 0] > 150
    blank = explain.Explanation(heatmap=np.zeros((4, 4), np.float32), class_index=0, probability=0.9,
                                probabilities=np.ones(2) / 2, method="gradcam", layer="conv2")
    assert blank.empty
    c = explain.colour(np.array([[0.0, 1.0]]))
    assert c[0, 0, 2] > c[0, 0, 0] and c[0, 1, 0] > c[0, 1, 2]  # blue cold, red hot
    png = explain.png_bytes(shown)
    assert Image.open(io.BytesIO(png)).size == (8, 8)


def test_a_model_without_a_convolution_gets_saliency_and_a_reason_for_no_gradcam():
    import keras

    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Flatten()(inputs)
    e = explain.Explainer(keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x), name="mlp"))
    x = np.random.default_rng(0).random((1, 28, 28, 1), dtype=np.float32)
    assert e.explain(x, "saliency")[0].heatmap.shape == (28, 28)
    with pytest.raises(ValueError, match="no convolution.*saliency"):
        e.explain(x, "gradcam")
    with pytest.raises(ValueError, match="unknown explanation method"):
        e.explain(x, "lime")


@pytest.mark.slow
def test_every_registered_model_gets_a_gradcam_layer_and_a_map_of_its_input_shape():
    import gc

    import keras

    from tune.models import build_model, list_models
    from tune.models.registry import _builder_options

    for info in list_models():
        named, _ = _builder_options(info.builder)
        heads = [{}, {"head": "cosine"}] if "head" in named else [{}]
        for head in heads:
            model = build_model(info.name, **({"weights": None} if "weights" in named else {}), **head)
            e = explain.Explainer(model)
            assert e.layer, info.name
            x = np.random.default_rng(0).random((2, *e.shape), dtype=np.float32)
            for method in explain.METHODS:
                for out in e.explain(x, method):
                    assert out.heatmap.shape == e.shape[:2] and 0 <= out.heatmap.min() <= out.heatmap.max() <= 1
            del model, e
            keras.backend.clear_session()
            gc.collect()
    # Transfer backbones: Grad-CAM reaches inside the nested model, past the 1x1 preprocessing convs.
    assert "/" in explain.Explainer(build_model("vgg16", weights=None)).layer
