"""Catalogue sources (image folders, Parquet/CSV/JSON-lines manifests) and the Fashion-MNIST
export, on local directories and a real S3-protocol server."""

import io
import json
import os
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from artifacts import catalogue, catalogue_manifest, image_bytes, image_roots, storage
from artifacts.catalogue import CatalogueError
from artifacts.catalogue_listing import list_catalogue
from jobs import cli, export_catalogue
from jobs.export_catalogue import ExportConfig, category_slug
from tune.data import fashion_mnist


def png(value: int, size=(8, 8), mode="L") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, value).save(buf, format="PNG")
    return buf.getvalue()


def jpeg(value: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (10, 6), (value, value, value)).save(buf, format="JPEG")
    return buf.getvalue()


def make_folders(root) -> dict[str, bytes]:
    files = {"dress/d-1.png": png(10), "dress/d-2.jpg": jpeg(20), "bag/b-1.png": png(30, mode="RGB"),
             "bag/.b-hidden.png": png(40), "bag/notes.txt": b"not an image", "README.md": b"# shop",
             ".cache/x-1.png": png(50), "bag/nested/too-deep.png": png(60)}
    for rel, data in files.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    return files


def test_image_folders_are_listed_sorted_with_folder_categories(tmp_path):
    files = make_folders(tmp_path)
    t = list_catalogue(str(tmp_path))
    assert t.column_names[:4] == ["item_id", "image_uri", "category", "content_sha256"]
    assert t.column("item_id").to_pylist() == ["b-1", "d-1", "d-2"]
    assert t.column("category").to_pylist() == ["bag", "dress", "dress"]
    assert t.column("image_uri").to_pylist() == [str(tmp_path / r) for r in ("bag/b-1.png", "dress/d-1.png",
                                                                              "dress/d-2.jpg")]
    assert t.column("content_sha256").null_count == 3
    assert t.schema.metadata[b"vitrine.kind"] == b"folders"
    # hashes on demand, equal to sha256 of the bytes
    filled, failed = image_bytes.fill_hashes(t)
    assert not failed
    assert filled.column("content_sha256").to_pylist() == [
        catalogue.content_sha256(files[r]) for r in ("bag/b-1.png", "dress/d-1.png", "dress/d-2.jpg")]


def write_manifest_file(path, rows: list[dict], fmt: str) -> None:
    if fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif fmt == "csv":
        cols = list(rows[0])
        lines = [",".join(cols)] + [",".join("" if r.get(c) is None else str(r[c]) for c in cols) for r in rows]
        path.write_text("\n".join(lines) + "\n")
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_manifest_sources_resolve_relative_uris_and_keep_metadata(tmp_path, fmt):
    make_folders(tmp_path / "images")
    sha = catalogue.content_sha256(png(10))
    rows = [
        {"item_id": "000123", "image_uri": "images/dress/d-1.png", "category": "Dress", "content_sha256": sha.upper(),
         "price": 19.5},
        {"item_id": "sku-7", "image_uri": str(tmp_path / "images" / "bag" / "b-1.png"), "category": "",
         "content_sha256": None, "price": 5.0},
        {"item_id": "sku-8", "image_uri": "s3://elsewhere/x.png", "category": "Bag", "content_sha256": "",
         "price": 1.0},
    ]
    manifest = tmp_path / f"manifest.{fmt}"
    write_manifest_file(manifest, rows, fmt)
    for uri in (str(tmp_path), str(manifest)):  # the directory or the file itself
        with pytest.raises(CatalogueError, match="s3://elsewhere/x.png' lies outside the catalogue roots"):
            list_catalogue(uri)  # another bucket is read only when config names it
        t = list_catalogue(uri, allowed_prefixes=("s3://elsewhere",))
        assert t.schema.metadata[b"vitrine.kind"] == b"manifest"
        assert t.column("item_id").to_pylist() == ["000123", "sku-7", "sku-8"]  # strings, zeros kept
        images = tmp_path / "images"
        assert t.column("image_uri").to_pylist() == [str(images / "dress" / "d-1.png"), str(images / "bag" / "b-1.png"),
                                                     "s3://elsewhere/x.png"]
        assert t.column("category").to_pylist() == ["Dress", None, "Bag"]
        assert t.column("content_sha256").to_pylist() == [sha, None, None]
        assert t.column("price").to_pylist() == [19.5, 5.0, 1.0]


def test_a_manifest_wins_over_the_folders_next_to_it(tmp_path):
    make_folders(tmp_path)
    write_manifest_file(tmp_path / "manifest.jsonl", [{"item_id": "only", "image_uri": "dress/d-1.png"}], "jsonl")
    t = list_catalogue(str(tmp_path))
    assert t.column("item_id").to_pylist() == ["only"] and t.column("category").to_pylist() == [None]


def test_duplicate_item_ids_are_refused_with_the_files_named(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(png(1))
    (tmp_path / "b" / "x.jpg").write_bytes(jpeg(2))
    with pytest.raises(CatalogueError, match=r"1 duplicate item id.*x: .*a/x.png.*b/x.jpg"):
        list_catalogue(str(tmp_path))
    m = tmp_path / "m.csv"
    write_manifest_file(m, [{"item_id": "k", "image_uri": "a/x.png"}, {"item_id": "k", "image_uri": "b/x.jpg"}], "csv")
    with pytest.raises(CatalogueError, match="duplicate item id"):
        list_catalogue(str(m))


@pytest.mark.parametrize("bad", ["../etc", "a/b", "a\\b", ".hidden", "-rf", "x..y", "with space", "é", "ok-2\n"])
def test_unsafe_item_ids_are_refused(tmp_path, bad):
    m = tmp_path / "manifest.jsonl"
    write_manifest_file(m, [{"item_id": "ok-1", "image_uri": "x.png"}, {"item_id": bad, "image_uri": "y.png"}], "jsonl")
    with pytest.raises(CatalogueError, match="invalid item id"):
        list_catalogue(str(tmp_path))


@pytest.mark.parametrize("base", ["/srv/shop", "/", "s3://bucket/shop", "s3://bucket"])
def test_manifest_uris_resolve_the_same_in_bulk_as_row_by_row(base):
    # The bulk path takes plain relative paths; anything else falls back to the row-by-row rules.
    plain = ["a/b.png", "a.png", "a/.hidden.png", "x/..png", "é/ü.png", "..x/y.png"]
    odd = ["./a.png", "a/../b.png", "a//b.png", "a/b/", "s3://bucket/x.png", "file:///x.png", "c:x.png", "d/./f.png"]
    expected = [catalogue_manifest._resolve_image_uri(base, u) for u in plain]
    assert catalogue_manifest._resolve_image_uris(base, pa.chunked_array([plain])).to_pylist() == expected
    for u in odd:
        try:
            want = catalogue_manifest._resolve_image_uri(base, u)
        except CatalogueError:
            with pytest.raises(CatalogueError):
                catalogue_manifest._resolve_image_uris(base, pa.chunked_array([plain + [u]]))
            continue
        got = catalogue_manifest._resolve_image_uris(base, pa.chunked_array([plain + [u]])).to_pylist()
        assert got == expected + [want]


def test_manifest_problems_are_reported_clearly(tmp_path):
    with pytest.raises(CatalogueError, match="not found"):
        list_catalogue(str(tmp_path / "nowhere"))
    with pytest.raises(CatalogueError, match="not found"):
        list_catalogue(str(tmp_path / "nowhere.parquet"))
    m = tmp_path / "m.jsonl"
    write_manifest_file(m, [{"id": "a", "image_uri": "x.png"}], "jsonl")
    with pytest.raises(CatalogueError, match=r"lacks column\(s\) item_id; it has id, image_uri"):
        list_catalogue(str(m))
    write_manifest_file(m, [{"item_id": "a", "image_uri": ""}], "jsonl")
    with pytest.raises(CatalogueError, match="1 row.* empty image_uri"):
        list_catalogue(str(m))
    good = "ab" * 32
    for bad in ("abc", good + "\n", "g" * 64):
        write_manifest_file(m, [{"item_id": "a", "image_uri": "x.png", "content_sha256": good},
                                {"item_id": "b", "image_uri": "y.png", "content_sha256": bad}], "jsonl")
        with pytest.raises(CatalogueError, match=re.escape(f"content_sha256 {bad!r} is not 64 hex digits")):
            list_catalogue(str(m))
    m.write_text("{not json\n")
    with pytest.raises(CatalogueError, match="not valid jsonl"):
        list_catalogue(str(m))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CatalogueError, match="holds no items"):
        list_catalogue(str(empty))


def test_read_many_reports_failures_in_place(tmp_path):
    (tmp_path / "a.png").write_bytes(b"A")
    out = image_bytes.read_many([str(tmp_path / "a.png"), str(tmp_path / "missing.png")])
    assert out[0] == b"A" and isinstance(out[1], FileNotFoundError)


def test_folder_and_manifest_sources_on_s3(s3_bucket, tmp_path):
    files = make_folders(tmp_path / "shop")
    prefix = storage.join(s3_bucket, "catalogues", "shop")
    storage.upload_dir(tmp_path / "shop", prefix)
    t = list_catalogue(prefix)
    assert t.column("item_id").to_pylist() == ["b-1", "d-1", "d-2"]
    assert t.column("image_uri").to_pylist()[0] == f"{prefix}/bag/b-1.png"
    filled, _ = image_bytes.fill_hashes(t, threads=4)
    assert filled.column("content_sha256").to_pylist()[1] == catalogue.content_sha256(files["dress/d-1.png"])

    rows = [{"item_id": "d-1", "image_uri": "shop/./dress/d-1.png", "category": "Dress"},
            {"item_id": "b-1", "image_uri": "shop/bag/b-1.png"}]
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    storage.write_bytes(storage.join(s3_bucket, "catalogues", "manifest.parquet"), buf.getvalue())
    t = list_catalogue(storage.join(s3_bucket, "catalogues") + "/")
    assert t.column("image_uri").to_pylist() == [f"{prefix}/dress/d-1.png", f"{prefix}/bag/b-1.png"]
    assert image_bytes.read_many(t.column("image_uri").to_pylist(), threads=2) == [files["dress/d-1.png"],
                                                                                 files["bag/b-1.png"]]
    # '..' is refused as written (issue 11), even where it would resolve back into the catalogue;
    # an absolute local path in a manifest on object storage too; each row with its reason.
    rows[0]["image_uri"] = "shop/../shop/dress/d-1.png"
    rows[1]["image_uri"] = "../../other-bucket/x.png"
    rows.append({"item_id": "x-1", "image_uri": "/etc/passwd"})
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    storage.write_bytes(storage.join(s3_bucket, "catalogues", "manifest.parquet"), buf.getvalue())
    with pytest.raises(CatalogueError, match=r"3 item\(s\) may not be read.*'\.\.' segment"):
        list_catalogue(storage.join(s3_bucket, "catalogues"))
    t = list_catalogue(storage.join(s3_bucket, "catalogues"), keep_refused=True)
    reasons = t.column(catalogue.REFUSED).to_pylist()
    assert "'..' segment" in reasons[0] and "'..' segment" in reasons[1]
    assert "absolute local path in a manifest on object storage" in reasons[2]


def test_category_slugs():
    assert [category_slug(c) for c in fashion_mnist.CLASS_NAMES] == [
        "t-shirt-top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot"]


def test_export_writes_a_catalogue_that_reads_back_and_is_idempotent(tmp_path, tiny_fashion_mnist):
    out = tmp_path / "cat"
    result = export_catalogue.run(ExportConfig(split="test", out=str(out), data=str(tiny_fashion_mnist), limit=30))
    assert (result.items, result.written, result.unchanged, result.removed) == (30, 30, 0, 0)
    data = fashion_mnist.load(str(tiny_fashion_mnist))

    manifest = pq.read_table(out / "manifest.parquet")
    assert manifest.column_names == ["item_id", "image_uri", "category", "label", "content_sha256"]
    labels = data.test_labels[:30]
    assert manifest.column("item_id").to_pylist() == [f"test-{i:06d}" for i in range(30)]
    assert manifest.column("label").to_pylist() == labels.tolist()
    assert manifest.column("category").to_pylist() == [fashion_mnist.CLASS_NAMES[c] for c in labels]
    first_folder = category_slug(fashion_mnist.CLASS_NAMES[labels[0]])
    assert manifest.column("image_uri").to_pylist()[0] == f"{first_folder}/test-000000.png"

    t = list_catalogue(str(out))
    for i, (uri, sha) in enumerate(zip(t.column("image_uri").to_pylist(), t.column("content_sha256").to_pylist())):
        raw = open(uri, "rb").read()
        assert catalogue.content_sha256(raw) == sha
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(raw))), data.test_images[i])

    # The folders alone are the same catalogue (categories as slugs).
    os.rename(out / "manifest.parquet", tmp_path / "m.parquet")
    folders = list_catalogue(str(out))
    os.rename(tmp_path / "m.parquet", out / "manifest.parquet")
    assert sorted(folders.column("item_id").to_pylist()) == t.column("item_id").to_pylist()

    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    again = export_catalogue.run(ExportConfig(split="test", out=str(out), data=str(tiny_fashion_mnist), limit=30))
    assert (again.written, again.unchanged) == (0, 30)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.png")} == mtimes
    assert pq.read_table(out / "manifest.parquet").equals(manifest)

    fewer = export_catalogue.run(ExportConfig(split="test", out=str(out), data=str(tiny_fashion_mnist), limit=20))
    assert (fewer.items, fewer.written, fewer.removed) == (20, 0, 10)
    assert len(list(out.rglob("*.png"))) == 20 and list_catalogue(str(out)).num_rows == 20


def test_export_to_s3_through_the_cli(s3_bucket, tiny_fashion_mnist, capsys):
    out = storage.join(s3_bucket, "catalogues", "fm")
    assert cli.main(["export-catalogue", "--dataset", "fashion-mnist", "--split", "train", "--out", out,
                     "--limit", "12", "--data", str(tiny_fashion_mnist), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["items"] == 12 and printed["manifest_uri"] == f"{out}/manifest.parquet"
    t = list_catalogue(out)
    assert t.num_rows == 12 and t.column("image_uri").to_pylist()[0].startswith(out + "/")
    raw = image_bytes.read_many(t.column("image_uri").to_pylist()[:3], threads=3)
    assert [catalogue.content_sha256(r) for r in raw] == t.column("content_sha256").to_pylist()[:3]
    with pytest.raises(ValueError, match="unknown split"):
        export_catalogue.run(ExportConfig(split="validation", out=out, data=str(tiny_fashion_mnist)))


# --- confinement of image URIs (issue 11 item 1) ---

def test_confine_refuses_outside_uris_with_reasons(tmp_path):
    from artifacts.image_roots import confine

    root = tmp_path / "cat"
    root.mkdir()
    (tmp_path / "catalogue-evil").mkdir()
    (tmp_path / "outside.png").write_bytes(b"x")
    (root / "link.png").symlink_to(tmp_path / "outside.png")
    cases = {
        f"file://{root}/a.png": "file://",
        "s3://other-bucket/a.png": "outside",
        f"{root}/../outside.png": "'..'",
        f"{tmp_path}/catalogue-evil/a.png": "outside",
        f"{root}/link.png": "outside",
        f"{root}/%2e%2e/outside.png": "percent",
        "/etc/passwd": "outside",
    }
    for uri, reason in cases.items():
        with pytest.raises(CatalogueError, match=reason):
            confine(uri, (str(root),))
    assert confine(f"{root}/a/b.png", (str(root),)) == f"{os.path.realpath(root)}/a/b.png"
    assert confine("s3://imgs/x/b.png", (str(root), "s3://imgs/x")) == "s3://imgs/x/b.png"
    with pytest.raises(CatalogueError):
        confine("s3://imgs/xy/b.png", (str(root), "s3://imgs/x"))


def test_hostile_manifest_rows_are_refused_with_reasons_and_the_rest_kept(tmp_path):
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.png").write_bytes(png(1))
    cat = tmp_path / "cat"
    make_folders(cat / "images")
    (cat / "images" / "dress" / "link.png").symlink_to(tmp_path / "outside" / "secret.png")
    (cat / "images" / "evil").symlink_to(tmp_path / "outside")
    rows = [
        {"item_id": "good", "image_uri": "images/dress/d-1.png"},
        {"item_id": "good-abs", "image_uri": str(cat / "images" / "bag" / "b-1.png")},
        {"item_id": "passwd", "image_uri": "file:///etc/passwd"},
        {"item_id": "abs", "image_uri": "/etc/passwd"},
        {"item_id": "bucket", "image_uri": "s3://other-bucket/a.png"},
        {"item_id": "dotdot", "image_uri": "../outside/secret.png"},
        {"item_id": "inner-dotdot", "image_uri": "images/../images/dress/d-1.png"},
        {"item_id": "pct", "image_uri": "images/%2e%2e/%2e%2e/outside/secret.png"},
        {"item_id": "link", "image_uri": "images/dress/link.png"},
        {"item_id": "dirlink", "image_uri": "images/evil/secret.png"},
        {"item_id": "sibling", "image_uri": str(tmp_path / "cat-evil" / "x.png")},
    ]
    write_manifest_file(cat / "manifest.jsonl", rows, "jsonl")
    with pytest.raises(CatalogueError, match=r"9 item\(s\) may not be read"):
        list_catalogue(str(cat))
    t = list_catalogue(str(cat), keep_refused=True)
    reasons = dict(zip(t.column("item_id").to_pylist(), t.column(catalogue.REFUSED).to_pylist()))
    assert reasons["good"] is None and reasons["good-abs"] is None
    expected = {"passwd": "file://", "abs": "outside the catalogue roots", "bucket": "outside the catalogue roots",
                "dotdot": "'..' segment", "inner-dotdot": "'..' segment", "pct": "percent-encoding",
                "link": "outside the catalogue roots", "dirlink": "outside the catalogue roots",
                "sibling": "outside the catalogue roots"}
    for item_id, words in expected.items():
        assert reasons[item_id].startswith("refused: ") and words in reasons[item_id], (item_id, reasons[item_id])
    # The refused rows keep the text the manifest gave, so the errors table shows what was asked for.
    uris = dict(zip(t.column("item_id").to_pylist(), t.column("image_uri").to_pylist()))
    assert uris["dotdot"] == "../outside/secret.png" and uris["passwd"] == "file:///etc/passwd"
    # A prefix named in config admits that prefix, and nothing next to it.
    t = list_catalogue(str(cat), allowed_prefixes=(str(tmp_path / "outside"),), keep_refused=True)
    reasons = dict(zip(t.column("item_id").to_pylist(), t.column(catalogue.REFUSED).to_pylist()))
    assert reasons["link"] is None and reasons["dirlink"] is None and reasons["sibling"] is not None
    assert reasons["dotdot"] is not None  # '..' stays refused whatever it would resolve to
    with pytest.raises(CatalogueError, match="without '..'"):
        image_roots.catalogue_roots(str(cat), ("file:///etc",))


def test_a_folder_catalogue_refuses_a_symlink_out_of_its_root(tmp_path):
    make_folders(tmp_path / "cat")
    (tmp_path / "secret.png").write_bytes(png(3))
    (tmp_path / "cat" / "bag" / "b-9.png").symlink_to(tmp_path / "secret.png")
    t = list_catalogue(str(tmp_path / "cat"), keep_refused=True)
    reasons = dict(zip(t.column("item_id").to_pylist(), t.column(catalogue.REFUSED).to_pylist()))
    assert reasons == {"b-1": None, "b-9": reasons["b-9"], "d-1": None, "d-2": None}
    assert "outside the catalogue roots" in reasons["b-9"]


def test_bulk_refusals_decide_as_confine_does(tmp_path):
    root = tmp_path / "cat"
    (root / "a").mkdir(parents=True)
    (tmp_path / "x.png").write_bytes(b"x")
    (root / "a" / "l.png").symlink_to(tmp_path / "x.png")
    roots = (str(root), "s3://imgs/x")
    uris = [f"{root}/a/b.png", f"{root}/a/l.png", f"{root}/./a/b.png", f"{root}//a/b.png", f"{root}/a/../b.png",
            f"FILE://{root}/a.png", "s3://imgs/x/b.png", "s3://imgs/xy/b.png", "s3://imgs//x/b.png", "S3://imgs/x/b.png",
            "s3://imgs/x/%2e%2e/y.png", "rel.png", "/", str(root), f"{tmp_path}/cat-2/a.png", "s3a://imgs/x/b.png"]
    got = image_roots.refusals(pa.chunked_array([uris]), roots).to_pylist()
    for uri, reason in zip(uris, got):
        try:
            image_roots.confine(uri, roots)
            accepted = True
        except CatalogueError:
            accepted = False
        assert accepted == (reason is None), (uri, reason)
    assert got[0] is None and got[6] is None and got[1] and got[8]  # '//' is not normalised into the root
