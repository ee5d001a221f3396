"""The catalogue contract: what the embedding job reads, as one table of items.

Two layouts, local or ``s3://`` (see :mod:`artifacts.storage` for endpoints)::

    <prefix>/<category>/<item_id>.<ext>          image folders, one per category
    <prefix>/<category>/<sub-category>/<item_id>.<ext>   the same, nested (category_level=2)
    <prefix>/manifest.parquet | .csv | .jsonl    a manifest: item_id, image_uri, optional
                                                 category, content_sha256 and any metadata

A URI naming a manifest file, or a directory holding one, is read as a manifest (a relative
``image_uri`` is resolved against the manifest's directory); any other directory as image
folders. Either way :func:`artifacts.catalogue_listing.list_catalogue` returns one row per item
with at least ``item_id``, ``image_uri`` (absolute), ``category`` and ``content_sha256`` (null
where the source does not carry it), followed by the manifest's other columns. Nested image
folders (``category_level=2``, the product-search thesis's layout) add a ``sub_category``
column; a manifest carries one as any other column.

Every ``image_uri`` must lie under the catalogue roots: the catalogue's own root (the manifest's
directory, or the image folders' directory) plus prefixes named in config. The rule is in
:mod:`artifacts.image_roots` (``confine`` for one URI, ``refusals`` for a column); the embedding
job turns refused rows into errors, and the item-image route re-checks before it opens anything.

This module holds the names every part shares (file names, columns, image extensions, category
levels), the item-id rule, the content hash and :class:`CatalogueError`; manifests are read and
written by :mod:`artifacts.catalogue_manifest`, image bytes by :mod:`artifacts.image_bytes`.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")
MANIFEST_FILE = "manifest.parquet"
# Looked for, in this order, in a directory given as the catalogue.
MANIFEST_NAMES = ("manifest.parquet", "manifest.csv", "manifest.jsonl", "manifest.ndjson", "manifest.json")
MANIFEST_SUFFIXES = (".parquet", ".csv", ".jsonl", ".ndjson", ".json")
CORE_COLUMNS = ("item_id", "image_uri", "category", "content_sha256")
SUB_CATEGORY = "sub_category"  # nested folders' second level; a manifest may carry it too
CATEGORY_LEVELS = (1, 2)  # folder levels above an image: <category>/ or <category>/<sub-category>/
REFUSED = "refused_reason"  # list_catalogue(keep_refused=True): why a row's image may not be read

# Item ids name files (``<item_id>.<ext>``) and travel into URLs: no separators, no traversal.
# The one rule: the API (serve/ingress.py) checks ids with is_item_id, so every item listed here
# is reachable there.
_ITEM_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._\-+=@~]{0,199}$")
ITEM_ID_RULE = ("1-200 of letters, digits and . _ - + = @ ~, not starting with '.' or '-', "
                "no '/', '\\' or '..'")
# A content_sha256 value once lower-cased.
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


class CatalogueError(ValueError):
    """A catalogue cannot be used as given; the message names the source and what is wrong."""


def is_item_id(item_id) -> bool:
    """True if ``item_id`` is safe as a file name and URL segment (:data:`ITEM_ID_RULE`)."""
    return isinstance(item_id, str) and bool(_ITEM_ID.fullmatch(item_id)) and ".." not in item_id


def check_item_id(item_id: str) -> str:
    """Return ``item_id`` if it is safe as a file name and URL segment, else raise."""
    if not is_item_id(item_id):
        raise CatalogueError(f"invalid item id {item_id!r}: {ITEM_ID_RULE}")
    return item_id


def check_item_ids(table: pa.Table, source: str) -> None:
    """Raise :class:`CatalogueError` (naming ``source``) unless every ``item_id`` of ``table``
    follows :data:`ITEM_ID_RULE` and none repeats."""
    col = table.column("item_id")
    # The same rule as check_item_id, for every row at once (Arrow's RE2 `$` is end of text, as
    # fullmatch); the first offender is re-checked for the message.
    ok = pc.and_(pc.match_substring_regex(col, _ITEM_ID.pattern), pc.invert(pc.match_substring(col, "..")))
    bad = pc.invert(pc.fill_null(ok, False))
    if pc.any(bad).as_py():
        offender = col.filter(bad)[0].as_py()
        try:
            check_item_id(offender)
        except CatalogueError as exc:
            raise CatalogueError(f"catalogue {source}: {exc}") from None
        raise CatalogueError(f"catalogue {source}: invalid item id {offender!r}")
    if pc.count_distinct(col).as_py() != len(col):
        ids = col.to_pylist()
        dupes = [k for k, v in Counter(ids).items() if v > 1]
        uris = table.column("image_uri").to_pylist()
        examples = "; ".join(f"{d}: " + ", ".join(u for i, u in zip(ids, uris) if i == d) for d in dupes[:3])
        raise CatalogueError(f"catalogue {source}: {len(dupes)} duplicate item id(s), e.g. {examples}")


def content_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
