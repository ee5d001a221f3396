"""``vitrine explain``: overlays and JSON for image files, from a small trained model."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from jobs.cli import main as vitrine
from tests.helpers import synthetic_images


def _write_png(path, pixels) -> str:
    Image.fromarray(pixels).save(path, format="PNG")
    return str(path)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("explain-images")
    tiles = synthetic_images(np.array([2, 7]), seed=9)
    photo = np.full((150, 200, 3), (250, 246, 240), np.uint8)  # an off-white shop photo, dark garment
    photo[40:96, 120:176] = (255 - tiles[1])[..., None].repeat(2, axis=0).repeat(2, axis=1)
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return {"tile": _write_png(d / "tile.png", tiles[0]), "photo": _write_png(d / "photo.png", photo),
            "broken": str(d / "broken.png")}


def test_writes_an_overlay_and_json_per_image(trained_models, images, tmp_path, capsys):
    out = tmp_path / "out"
    code = vitrine(["explain", "--model", trained_models["softmax"], images["tile"], images["photo"],
                    "--out", str(out)])
    assert code == 0, capsys.readouterr()
    for stem, size in (("tile", (28, 28)), ("photo", (200, 150))):
        with Image.open(out / f"{stem}.png") as im:
            assert im.format == "PNG" and im.size == size and im.mode == "RGB"
        with Image.open(out / f"{stem}.input.png") as im:
            assert im.size == (224, 224)  # the 28x28 input, enlarged 8x
        item = json.loads((out / f"{stem}.json").read_text())
        assert item["method"] == "gradcam" and item["layer"] == "conv2"
        assert item["predicted"] in ("Pullover", "Sneaker", "T-shirt/top", "Trouser", "Dress", "Coat", "Sandal",
                                     "Shirt", "Bag", "Ankle boot")
        assert 0 < item["probability"] <= 1 and item["heatmap_shape"] == [28, 28] and item["empty"] in (True, False)
    index = json.loads((out / "explanations.json").read_text())
    assert [i["image"] for i in index["items"]] == [images["tile"], images["photo"]]
    assert index["config"]["method"] == "gradcam" and index["model_id"] == "cnn-trained"
    # Where the heat is, the overlay differs from the photo; far from the garment it is the photo.
    shown, photo = (np.asarray(Image.open(p)).astype(int) for p in (out / "photo.png", images["photo"]))
    assert (shown[:30, :100] == photo[:30, :100]).all()
    assert np.abs(shown[40:96, 120:176] - photo[40:96, 120:176]).mean() > 5


def test_saliency_and_an_unreadable_image(trained_models, images, tmp_path, capsys):
    out = tmp_path / "sal"
    code = vitrine(["explain", "--model", trained_models["cosine"], images["tile"], images["broken"],
                    "--out", str(out), "--method", "saliency", "--set", "max_side=100"])
    assert code == 1  # one image could not be explained
    printed = capsys.readouterr().out
    assert "broken.png: error: not a usable image" in printed
    index = json.loads((out / "explanations.json").read_text())
    ok, bad = index["items"]
    assert ok["method"] == "saliency" and ok["layer"] == "input" and "error" in bad
    assert not (out / "broken.png").exists()
    heat_png = Image.open(io.BytesIO((out / "tile.png").read_bytes()))
    assert heat_png.size == (28, 28)


def test_a_wrong_method_is_refused(trained_models, images, tmp_path, capsys):
    with pytest.raises(SystemExit):
        vitrine(["explain", "--model", trained_models["softmax"], images["tile"], "--out", str(tmp_path),
                 "--method", "lime"])
    assert vitrine(["explain", "--model", trained_models["softmax"], images["tile"], "--out", str(tmp_path),
                    "--set", "method=lime"]) == 2
    assert "method must be one of gradcam, saliency" in capsys.readouterr().err
