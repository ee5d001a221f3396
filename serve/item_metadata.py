"""What a search hit says about its item besides its id: the catalogue manifest's extra columns
(name, price, product URL, brand, ...), read once per index version by each search replica.

Where from: the catalogue the index's embeddings run names (its manifest's ``catalogue``), read
as :func:`artifacts.catalogue_manifest.read_manifest` reads it, when that catalogue is a manifest
(image folders carry no metadata). The values are those of the catalogue as it is when the index is
loaded, which may be newer than the embeddings (a price changed since): metadata follows the
catalogue, as the embedding job's own category and sub-category columns do.

What is returned, and why it is safe to return: only columns of scalar types (strings, integers,
floats, booleans), never the core columns (``image_uri``, ``content_sha256``, ...) nor
``sub_category`` (hits carry it already), nor columns whose name says they hold a location or a
secret (``path``, ``file``, ``uri``, ``key``, ``token``, ...); a string value that looks like a
storage location (``/...``, ``~...``, ``file:``, ``s3://``, ``C:\\``) or is longer than
``MAX_VALUE_CHARS`` is left out, and an item carries at most ``MAX_COLUMNS`` columns.
"""

from __future__ import annotations

import logging
import re

import pyarrow as pa

from artifacts import catalogue, catalogue_manifest
from artifacts.id_lookup import IdLookup

log = logging.getLogger("vitrine.serve")

MAX_COLUMNS = 24
MAX_VALUE_CHARS = 500
MAX_NAME_CHARS = 64
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_DENIED_WORDS = {"uri", "uris", "path", "paths", "file", "files", "filename", "dir", "directory", "local", "s3",
                 "bucket", "secret", "secrets", "token", "tokens", "password", "passwd", "key", "keys", "apikey",
                 "credential", "credentials", "sha256", "hash"}
_LOCATION = re.compile(r"^\s*(/|~|\\\\|[A-Za-z]:[\\/]|file:|s3a?://|gs://|hdfs://|az://|abfss?://)", re.IGNORECASE)
_SKIPPED = set(catalogue.CORE_COLUMNS) | {catalogue.SUB_CATEGORY, catalogue.REFUSED}


def eligible_column(name: str, type_: pa.DataType) -> bool:
    """Whether a manifest column may be returned with search hits (by its name and type)."""
    if name in _SKIPPED or len(name) > MAX_NAME_CHARS or not _NAME.match(name):
        return False
    if _DENIED_WORDS & set(re.split(r"[^a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower())):
        return False
    return (pa.types.is_string(type_) or pa.types.is_large_string(type_) or pa.types.is_integer(type_)
            or pa.types.is_floating(type_) or pa.types.is_boolean(type_))


def clean_column(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """The column as returned: null where a value is left out (a string that looks like a storage
    location or is too long, a float that JSON cannot carry)."""
    import pyarrow.compute as pc

    if pa.types.is_large_string(col.type):
        col = col.cast(pa.string())
    if pa.types.is_string(col.type):
        bad = pc.or_(pc.match_substring_regex(col, _LOCATION.pattern, ignore_case=True),
                     pc.or_(pc.greater(pc.utf8_length(col), MAX_VALUE_CHARS), pc.equal(col, "")))
    elif pa.types.is_floating(col.type):
        bad = pc.invert(pc.is_finite(col))
    else:
        return col
    return pc.if_else(pc.fill_null(bad, False), pa.scalar(None, col.type), col)


class ItemMetadata:
    """item id → ``{column: value}`` for the items of one index (or of the shards one search slot
    holds). The values stay in one Arrow table (a Python object per cell would cost several
    times the memory); a query takes its hits' rows in one call."""

    def __init__(self, table: pa.Table | None = None):
        table = table if table is not None else pa.table({"item_id": pa.array([], pa.string())})
        self.columns = [c for c in table.column_names if c != "item_id"]
        self._table = pa.table({c: clean_column(table.column(c)) for c in self.columns}) if self.columns else None
        self._rows = IdLookup(table.column("item_id") if self.columns else [])

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, item_id: str) -> dict | None:
        return self.get_many([item_id])[0]

    def get_many(self, item_ids) -> list[dict | None]:
        """Each item's non-null values (None for an item without any), in the order asked."""
        rows = self._rows.rows(list(item_ids))
        present = rows[rows >= 0]
        if not len(present):
            return [None] * len(rows)
        taken = iter(self._table.take(pa.array(present, pa.int64())).to_pylist())
        out = []
        for r in rows:
            values = {k: v for k, v in next(taken).items() if v is not None} if r >= 0 else {}
            out.append(values or None)
        return out

    @classmethod
    def from_catalogue(cls, catalogue_uri: str, item_ids=None) -> "ItemMetadata":
        """The eligible columns of the manifest at ``catalogue_uri`` (nothing for image folders),
        for ``item_ids`` only when given (a search slot holding some shards)."""
        if not catalogue_uri:
            return cls()
        manifest = catalogue_manifest.find_manifest(catalogue_uri)
        if not manifest:
            return cls()
        # The schema first: most catalogues have no extra columns, and then no row is read (at a
        # million items, reading the manifest would cost a replica more than its id maps).
        schema = catalogue_manifest.manifest_schema(manifest)
        keep = [f.name for f in schema if eligible_column(f.name, f.type)][:MAX_COLUMNS]
        left = [c for c in schema.names if c not in _SKIPPED and c not in keep]
        if left:
            log.info("catalogue %s: columns %s are not returned with hits (type, name or limit of %d)",
                     manifest, ", ".join(left), MAX_COLUMNS)
        if not keep:
            return cls()
        table = catalogue_manifest.read_manifest_columns(manifest, keep)
        if item_ids is not None:
            import pyarrow.compute as pc

            table = table.filter(pc.is_in(table.column("item_id"), value_set=pa.array(list(item_ids), pa.string())))
        return cls(table)
