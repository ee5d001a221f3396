"""The robustness report (tune/robustness.py, `vitrine evaluate --robustness`): the clean photo,
perturbations that grow with their level, and the report a real model gets through the CLI."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from artifacts.photo_style import encode_jpeg, render
from artifacts.preprocess import PreprocessSpec, preprocess_bytes
from tests.helpers import synthetic_images
from tune.robustness import (PERTURBATIONS, REPORT_FILES, clean_params, measure, perturb, perturbed_params,
                             write_report)

pytestmark = pytest.mark.slow


def tiles(n: int = 10, seed: int = 3) -> np.ndarray:
    return synthetic_images(np.arange(n) % 10, seed)


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), np.float32)


def test_level_zero_of_every_axis_is_the_clean_photo_and_the_clean_photo_is_dark_on_white():
    tile = tiles()[4]
    clean = encode_jpeg(render(tile, clean_params(seed=7)), 95)
    for name, axis in PERTURBATIONS.items():
        assert len(axis.levels) in (5, 6) and len(set(axis.levels)) == len(axis.levels), name
        assert perturbed_params(name, axis.levels[0], seed=7) == clean_params(seed=7), name
        assert perturb(tile, name, axis.levels[0], seed=7) == clean, name
        assert perturb(tile, name, axis.levels[1], seed=7) != clean, name
    img = pixels(clean)
    assert img.shape == (128, 128, 3)
    assert img[:4].mean() > 250 and img.min() < 60  # white border, a dark object
    with pytest.raises(ValueError, match="unknown perturbation"):
        perturb(tile, "sepia", 0.5)


def test_a_stronger_level_moves_the_pixels_further_from_the_clean_photo():
    some = tiles(6)
    for name, axis in PERTURBATIONS.items():
        clean = [pixels(perturb(t, name, axis.levels[0], seed=i)) for i, t in enumerate(some)]
        if name == "scale":
            # Shrinking stops moving pixels once the object is small; its size is what must fall.
            sides = [np.mean([np.ptp(np.nonzero(pixels(perturb(t, name, lv)).min(axis=2) < 200)[1]) for t in some])
                     for lv in axis.levels]
            assert all(a > b for a, b in zip(sides, sides[1:])), sides
            continue
        distance = [np.mean([np.abs(pixels(perturb(t, name, lv, seed=i)) - c).mean()
                             for i, (t, c) in enumerate(zip(some, clean))]) for lv in axis.levels]
        assert distance[0] == 0.0
        assert all(a < b for a, b in zip(distance, distance[1:])), (name, distance)


def test_background_axis_flips_polarity_from_white_to_black():
    tile = tiles()[7]
    levels = PERTURBATIONS["background"].levels
    first, last = pixels(perturb(tile, "background", levels[0])), pixels(perturb(tile, "background", levels[-1]))
    assert first[:4].mean() > 250 and last[:4].mean() < 5
    obj = tile > 128  # the tile's dense part sits where the object is, scaled into the canvas
    big = np.asarray(Image.fromarray(obj.astype(np.uint8) * 255).resize((109, 109))) > 128
    centre = (slice(10, 119), slice(10, 119))
    assert first[centre].mean(axis=2)[big].mean() < 100 < last[centre].mean(axis=2)[big].mean()


@pytest.fixture(scope="module")
def trained(tiny_fashion_mnist, tmp_path_factory):
    """cnn_dropout_1 trained for a few epochs on the tiny synthetic tiles, with the canonical
    input, saved twice: once with Fashion-MNIST class names, once with them spelled as folders."""
    import keras

    from artifacts import model_artifact
    from artifacts.model_card import ModelCard
    from artifacts.preprocess import arrays_to_model_input
    from tune.data import fashion_mnist
    from tune.models import EMBEDDING_LAYER, build_model

    keras.utils.set_random_seed(0)
    ds = fashion_mnist.load(str(tiny_fashion_mnist))
    spec = PreprocessSpec.canonical()
    model = build_model("cnn_dropout_1")
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    model.fit(arrays_to_model_input(ds.train_images, spec), ds.train_labels.astype(int), epochs=15, batch_size=32,
              verbose=0)
    root = str(tmp_path_factory.mktemp("robust-models"))
    uris = []
    for model_id, names in (("cnn-tiles", list(fashion_mnist.CLASS_NAMES)),
                            ("cnn-folders", [n.lower().replace("/", "-").replace(" ", "-")
                                             for n in fashion_mnist.CLASS_NAMES])):
        card = ModelCard(model_id=model_id, architecture="cnn_dropout_1", class_names=names,
                         input_shape=list(spec.input_shape), preprocessing=spec.to_dict(),
                         embedding_layer=EMBEDDING_LAYER, embedding_dim=128)
        uris.append(model_artifact.save(model, card, model_artifact.models_root(root), make_latest=False))
    return model, spec, ds, uris


def test_measure_matches_the_serving_path_and_a_strong_perturbation_hurts(trained):
    from tune.robustness import ModelUnderTest

    model, spec, ds, _ = trained
    # Without the synthetic tiles' background noise, which a photo would turn into a dark square.
    some = np.where(ds.test_images[:60] < 60, 0, ds.test_images[:60]).astype(np.uint8)
    labels = ds.test_labels[:60].astype(int)
    under_test = ModelUnderTest("m", spec, lambda x: model.predict_on_batch(x), labels)
    result = measure([under_test], some, seed=5, perturbations=("scale", "background"))
    acc = result["models"][0]["accuracy"]
    # The clean accuracy is what the model says about each clean JPEG sent through preprocess_bytes.
    x = np.stack([preprocess_bytes(perturb(t, "scale", 0.0, seed=5 + i), spec) for i, t in enumerate(some)])
    direct = float((model.predict_on_batch(x).argmax(axis=1) == labels).mean())
    assert acc["scale"][0] == acc["background"][0] == result["models"][0]["clean_accuracy"] == pytest.approx(direct)
    assert direct >= 0.3  # well above chance (0.1): the clean photo reads like its tile
    assert acc["scale"][-1] <= direct - 0.15  # an 11-pixel object on a 128-pixel canvas
    assert len(acc["scale"]) == len(PERTURBATIONS["scale"].levels)


def test_cli_writes_json_md_png_with_a_row_per_perturbation_and_compared_models(trained, tiny_fashion_mnist,
                                                                                  tmp_path, capsys):
    from jobs import cli

    _, _, _, (tiles_uri, folders_uri) = trained
    out = tmp_path / "robustness"
    rc = cli.main(["evaluate", "--model", tiles_uri, "--data", str(tiny_fashion_mnist), "--robustness",
                   "--robustness-images", "20", "--compare", folders_uri, "--out", str(out)])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(REPORT_FILES)
    saved = json.loads((out / "robustness.json").read_text())
    assert saved["images"] == 20 and [m["model_id"] for m in saved["models"]] == ["cnn-tiles", "cnn-folders"]
    tiles_model, folders_model = saved["models"]
    assert set(tiles_model["accuracy"]) == set(PERTURBATIONS)
    for name, axis in PERTURBATIONS.items():
        assert saved["perturbations"][name]["levels"] == list(axis.levels)
        assert tiles_model["accuracy"][name][0] == tiles_model["clean_accuracy"]
    # The same weights with the classes spelled as folder names: the same photos, the same answers.
    assert folders_model["accuracy"] == tiles_model["accuracy"]
    md = (out / "robustness.md").read_text()
    assert md.count("| brightness |") == 2 and md.count("| jpeg_quality |") == 2 and "robustness.png" in md
    assert (out / "robustness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert Image.open(out / "robustness.png").size[0] >= 1000  # a 3 x 3 grid of plots
    printed = capsys.readouterr().out
    assert "| background |" in printed and str(out) in printed


def test_the_grid_report_section_links_the_plot(tmp_path):
    from tune.grid import _robustness_report

    result = {"images": 2, "seed": 0, "photo_size": 128, "clean_jpeg_quality": 95, "seconds": 1.0,
              "perturbations": {"blur": {"unit": "px", "levels": [0.0, 1.0]}},
              "models": [{"model_id": "t1", "architecture": "a", "input_shape": [28, 28, 1], "clean_accuracy": 1.0,
                          "accuracy": {"blur": [1.0, 0.5]}}]}
    md = _robustness_report({"robustness": result}, tmp_path / "robustness")
    assert "## Robustness of the best trial" in md and "| blur | px | 0: 100.0% | 1: 50.0% |" in md
    assert "](robustness/robustness.png)" in md and (tmp_path / "robustness" / "robustness.png").exists()
    assert _robustness_report({"trial_id": "x"}, tmp_path / "none") == "" and not (tmp_path / "none").exists()
    assert set(write_report(result, tmp_path / "again")) == {"json", "md", "png"}
