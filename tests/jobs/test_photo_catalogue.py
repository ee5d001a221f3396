"""The photo-style export (``--style photo``, ``--layout nested``) and nested catalogues read back."""

import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from artifacts import catalogue
from artifacts.catalogue import CatalogueError
from artifacts.catalogue_listing import list_catalogue
from artifacts.photo_style import BACKGROUND_KINDS, photo_jpeg
from jobs import cli, export_catalogue
from jobs.export_catalogue import ExportConfig, category_slug
from tune.data import fashion_mnist


def test_photo_export_through_the_cli_is_rgb_jpeg_reproducible_and_idempotent(tmp_path, tiny_fashion_mnist, capsys):
    out = tmp_path / "photos"
    argv = ["export-catalogue", "--style", "photo", "--size", "64", "--seed", "5", "--split", "test", "--limit", "50",
            "--out", str(out), "--data", str(tiny_fashion_mnist), "--json"]
    assert cli.main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["items"], printed["written"]) == (50, 50)
    manifest = pq.read_table(out / "manifest.parquet")
    assert manifest.column_names == ["item_id", "image_uri", "category", "label", "content_sha256"]  # as for tiles
    meta = manifest.schema.metadata
    assert (meta[b"vitrine.export.style"], meta[b"vitrine.export.size"], meta[b"vitrine.export.seed"]) == (
        b"photo", b"64", b"5")
    data = fashion_mnist.load(str(tiny_fashion_mnist))
    labels = data.test_labels[:50]
    assert manifest.column("category").to_pylist() == [fashion_mnist.CLASS_NAMES[c] for c in labels]
    assert manifest.column("image_uri").to_pylist()[0] == f"{category_slug(fashion_mnist.CLASS_NAMES[labels[0]])}/test-000000.jpg"

    t = list_catalogue(str(out))
    corners = []
    for i, (uri, sha) in enumerate(zip(t.column("image_uri").to_pylist(), t.column("content_sha256").to_pylist())):
        raw = open(uri, "rb").read()
        assert catalogue.content_sha256(raw) == sha
        img = Image.open(io.BytesIO(raw))
        assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (64, 64))
        corners.append(np.asarray(img, np.float32)[:4, :4].mean())
    assert max(corners) - min(corners) > 100  # light and dark backgrounds both occur
    # Item i of a split is its own seed: rendering it alone gives the exported bytes.
    assert open(t.column("image_uri").to_pylist()[7], "rb").read() == photo_jpeg(
        data.test_images[7], np.random.default_rng([5, 1, 7]), size=64)

    again = export_catalogue.run(ExportConfig(style="photo", size=64, seed=5, split="test", limit=50, out=str(out),
                                              data=str(tiny_fashion_mnist)))
    assert (again.written, again.unchanged) == (0, 50)
    other = export_catalogue.run(ExportConfig(style="photo", size=64, seed=6, split="test", limit=50, out=str(out),
                                              data=str(tiny_fashion_mnist)))
    assert other.written == 50  # another seed, other photos
    train = export_catalogue.run(ExportConfig(style="photo", size=64, seed=6, split="train", limit=5,
                                              out=str(tmp_path / "train"), data=str(tiny_fashion_mnist)))
    assert train.items == 5


def test_nested_photo_export_reads_back_as_category_and_sub_category(tmp_path, tiny_fashion_mnist):
    out = tmp_path / "nested"
    export_catalogue.run(ExportConfig(style="photo", layout="nested", size=48, split="train", limit=60, out=str(out),
                                      data=str(tiny_fashion_mnist)))
    manifest = pq.read_table(out / "manifest.parquet")
    assert manifest.column_names[-1] == "sub_category"
    rows = manifest.to_pylist()
    assert {r["sub_category"] for r in rows} <= set(BACKGROUND_KINDS) and len({r["sub_category"] for r in rows}) >= 3
    for r in rows:
        assert r["image_uri"] == f"{category_slug(r['category'])}/{r['sub_category']}/{r['item_id']}.jpg"

    from_manifest = list_catalogue(str(out))
    assert from_manifest.column("sub_category").to_pylist() == manifest.column("sub_category").to_pylist()
    (out / "manifest.parquet").rename(tmp_path / "m.parquet")  # the folders alone
    folders = list_catalogue(str(out), category_level=2)
    assert folders.column_names[:5] == ["item_id", "image_uri", "category", "content_sha256", "sub_category"]
    got = {r["item_id"]: (r["category"], r["sub_category"]) for r in folders.to_pylist()}
    assert got == {r["item_id"]: (category_slug(r["category"]), r["sub_category"]) for r in rows}
    with pytest.raises(CatalogueError, match="holds no items"):
        list_catalogue(str(out))  # level 1 finds no <category>/<image> files in a nested tree
    with pytest.raises(CatalogueError, match="category_level"):
        list_catalogue(str(out), category_level=3)


def test_export_refuses_unknown_styles_and_a_nested_tile_layout(tmp_path, tiny_fashion_mnist):
    with pytest.raises(ValueError, match="unknown style"):
        export_catalogue.run(ExportConfig(style="painting", out=str(tmp_path), data=str(tiny_fashion_mnist)))
    with pytest.raises(ValueError, match="needs --style photo"):
        export_catalogue.run(ExportConfig(layout="nested", out=str(tmp_path), data=str(tiny_fashion_mnist)))
