"""Which catalogue manifest columns and values come back with search hits (serve/item_metadata.py)."""

import pyarrow as pa
import pyarrow.parquet as pq

from serve.item_metadata import MAX_COLUMNS, MAX_VALUE_CHARS, ItemMetadata, eligible_column


def test_only_scalar_columns_not_named_for_locations_or_secrets():
    assert eligible_column("name", pa.string()) and eligible_column("price", pa.float64())
    assert eligible_column("in_stock", pa.bool_()) and eligible_column("product_url", pa.string())
    for name in ("image_uri", "content_sha256", "sub_category", "local_path", "photoFile", "apiKey",
                 "auth_token", "s3_location", "Image Path", "2col"):
        assert not eligible_column(name, pa.string()), name
    assert not eligible_column("tags", pa.list_(pa.string()))
    assert not eligible_column("raw", pa.binary())


def test_values_that_look_like_locations_or_are_too_long_are_left_out(tmp_path):
    (tmp_path / "a.png").write_bytes(b"png")
    (tmp_path / "b.png").write_bytes(b"png")
    many = {f"c{i:02d}": ["v", "w"] for i in range(MAX_COLUMNS + 3)}
    pq.write_table(pa.table({
        "item_id": ["a", "b"], "image_uri": ["a.png", "b.png"], "category": ["x", "y"],
        "name": ["Shirt", "/etc/passwd"], "notes": ["s3://bucket/secret.txt", "C:\\Users\\x"],
        "price": [float("nan"), 2.5], "blurb": ["y" * (MAX_VALUE_CHARS + 1), "fine"],
        "big": pa.array(["ok", None], pa.large_string()), "photo_path": ["p", "q"], **many,
    }), tmp_path / "manifest.parquet")
    meta = ItemMetadata.from_catalogue(str(tmp_path))
    assert len(meta.columns) == MAX_COLUMNS and "photo_path" not in meta.columns
    a, b, missing = meta.get_many(["a", "b", "zzz"])
    assert a["name"] == "Shirt" and "notes" not in a and "price" not in a and "blurb" not in a and a["big"] == "ok"
    assert "name" not in b and "notes" not in b and b["price"] == 2.5 and b["blurb"] == "fine" and "big" not in b
    assert missing is None
    assert ItemMetadata.from_catalogue(str(tmp_path), ["b"]).get("a") is None


def test_image_folders_carry_no_metadata(tmp_path):
    (tmp_path / "shirt").mkdir()
    (tmp_path / "shirt" / "a.png").write_bytes(b"png")
    assert len(ItemMetadata.from_catalogue(str(tmp_path))) == 0


def test_csv_and_json_manifests_with_numeric_ids_and_a_manifest_without_extra_columns(tmp_path):
    csv_dir, json_dir, plain_dir = (tmp_path / d for d in ("csv", "json", "plain"))
    for d in (csv_dir, json_dir, plain_dir):
        d.mkdir()
    (csv_dir / "manifest.csv").write_text("item_id,image_uri,name,price\n0007,a.png,Boot,12.5\n0008,b.png,Bag,3\n")
    (json_dir / "manifest.jsonl").write_text('{"item_id": 7, "image_uri": "a.png", "name": "Boot"}\n'
                                             '{"item_id": 8, "image_uri": "b.png", "name": "Bag"}\n')
    pq.write_table(pa.table({"item_id": ["a"], "image_uri": ["a.png"], "category": ["x"]}), plain_dir / "manifest.parquet")
    from_csv = ItemMetadata.from_catalogue(str(csv_dir))
    assert from_csv.get("0007") == {"name": "Boot", "price": 12.5} and from_csv.get("7") is None  # ids stay strings
    assert ItemMetadata.from_catalogue(str(json_dir)).get_many(["8", "9"]) == [{"name": "Bag"}, None]
    plain = ItemMetadata.from_catalogue(str(plain_dir))
    assert len(plain) == 0 and plain.columns == [] and plain.get("a") is None
