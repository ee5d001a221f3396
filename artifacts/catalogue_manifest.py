"""Catalogue manifests: finding one, reading it (Parquet, CSV, JSON lines or a JSON array) into
the catalogue table with its checks, and writing one.

A manifest holds ``item_id`` and ``image_uri`` and optionally ``category``, ``content_sha256`` and
any metadata (see :mod:`artifacts.catalogue`). A relative ``image_uri`` is resolved against the
manifest's directory, then confined to the catalogue roots (:mod:`artifacts.image_roots`).
"""

from __future__ import annotations

import io
import os
import posixpath

import pyarrow as pa
import pyarrow.compute as pc

from . import storage
from .catalogue import CORE_COLUMNS, MANIFEST_NAMES, MANIFEST_SUFFIXES, REFUSED, SHA256_HEX, CatalogueError
from .image_roots import catalogue_roots, parent_dir, refusals


def find_manifest(uri: str) -> str | None:
    """The manifest file ``uri`` names or holds, or None for an image-folder catalogue."""
    if uri.lower().endswith(MANIFEST_SUFFIXES):
        if not storage.exists(uri):
            raise CatalogueError(f"catalogue manifest {uri} not found")
        return uri
    if not storage.is_dir(uri):
        return None
    names = set(storage.list_dir(uri))
    for name in MANIFEST_NAMES:
        if name in names:
            return storage.join(uri, name)
    return None


def read_manifest(uri: str, *, allowed_prefixes=()) -> pa.Table:
    """A manifest file as a catalogue table (core columns first, relative URIs resolved, then the
    manifest's other columns, then ``refused_reason``: see
    :func:`artifacts.catalogue_listing.list_catalogue`)."""
    raw = _read_manifest_file(uri)
    missing = [c for c in ("item_id", "image_uri") if c not in raw.column_names]
    if missing:
        raise CatalogueError(f"manifest {uri} lacks column(s) {', '.join(missing)}; "
                             f"it has {', '.join(raw.column_names) or 'none'}")
    n = raw.num_rows
    cols = {c: _as_string(raw.column(c), uri, c) if c in raw.column_names else pa.nulls(n, pa.string())
            for c in CORE_COLUMNS}
    for c in ("item_id", "image_uri"):
        nulls = cols[c].null_count + (pc.sum(pc.fill_null(pc.equal(cols[c], ""), False)).as_py() or 0)
        if nulls:
            raise CatalogueError(f"manifest {uri}: {nulls} row(s) have an empty {c}")
    cols["image_uri"], refused = _resolve_and_confine(parent_dir(uri), cols["image_uri"],
                                                      catalogue_roots(uri, allowed_prefixes))
    cols["category"] = _empty_to_null(cols["category"])
    cols["content_sha256"] = _check_hashes(_empty_to_null(cols["content_sha256"]), uri)
    # A manifest's own refused_reason column is dropped: only our check decides what is readable.
    extra = [c for c in raw.column_names if c not in CORE_COLUMNS and c != REFUSED]
    return pa.table({**cols, **{c: raw.column(c) for c in extra}, REFUSED: refused})


def manifest_schema(uri: str) -> pa.Schema:
    """A manifest's columns as written, without reading its rows where the format allows (Parquet)."""
    import pyarrow.parquet as pq

    if uri.lower().endswith(".parquet"):
        fs, path = storage.resolve(uri)
        try:
            return pq.read_schema(path, filesystem=fs)
        except (pa.ArrowInvalid, OSError) as exc:
            raise CatalogueError(f"manifest {uri} is not valid parquet: {exc}") from exc
    return _read_manifest_file(uri).schema


def read_manifest_columns(uri: str, columns: list[str]) -> pa.Table:
    """``item_id`` (as strings) and the other named columns of a manifest, as written: what the
    search replicas return with hits. No URI is resolved or checked here: only ``item_id`` and
    these values are used, never a location (serve/item_metadata.py)."""
    import pyarrow.parquet as pq

    if uri.lower().endswith(".parquet"):
        fs, path = storage.resolve(uri)
        present = set(pq.read_schema(path, filesystem=fs).names)
        raw = pq.read_table(path, filesystem=fs, columns=[c for c in ["item_id", *columns] if c in present])
    else:
        raw = _read_manifest_file(uri)
    if "item_id" not in raw.column_names:
        raise CatalogueError(f"manifest {uri} lacks column item_id")
    return pa.table({"item_id": _as_string(raw.column("item_id"), uri, "item_id"),
                     **{c: raw.column(c) for c in columns if c in raw.column_names and c != "item_id"}})


def _resolve_and_confine(base: str, uris: pa.ChunkedArray, roots: tuple[str, ...]):
    """``(absolute image URIs, refusal reasons)`` for a manifest's ``image_uri`` column.

    A '..' segment is refused on the text as written, before resolution could normalise it
    away; so is an absolute local path in a manifest on object storage. Those rows keep their
    text as the URI (for the errors table); the rest are resolved, then checked by
    :func:`~artifacts.image_roots.refusals`.
    """
    early = pc.fill_null(pc.match_substring_regex(uris, r"(^|[/\\])\.\.([/\\]|$)"), False)
    remote_base = storage.is_remote(base)
    if remote_base:
        early = pc.or_(early, pc.fill_null(pc.starts_with(uris, "/"), False))
    if not pc.any(early).as_py():
        resolved = _resolve_image_uris(base, uris)
        return resolved, refusals(resolved, roots)
    resolved = _resolve_image_uris(base, pc.if_else(early, pa.scalar("x", pa.string()), uris))
    resolved = pc.if_else(early, uris, resolved)
    reasons = refusals(resolved, roots).to_pylist()
    values = uris.to_pylist()
    rows = early.combine_chunks() if isinstance(early, pa.ChunkedArray) else early
    for i in pc.indices_nonzero(rows).to_pylist():
        u = values[i]
        reasons[i] = (f"refused: image_uri {u!r} is an absolute local path in a manifest on object storage"
                      if remote_base and u.startswith("/") and ".." not in u.replace("\\", "/").split("/")
                      else f"refused: image_uri {u!r} has a '..' segment")
    return resolved, pa.array(reasons, pa.string())


def _read_manifest_file(uri: str) -> pa.Table:
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson
    import pyarrow.parquet as pq

    lower = uri.lower()
    try:
        if lower.endswith(".parquet"):
            fs, path = storage.resolve(uri)
            return pq.read_table(path, filesystem=fs)
        data = storage.read_bytes(uri)
        strings = {c: pa.string() for c in CORE_COLUMNS}
        if lower.endswith(".csv"):
            # Ids such as "000123" must stay strings, whatever the CSV reader would infer.
            return pacsv.read_csv(io.BytesIO(data), convert_options=pacsv.ConvertOptions(column_types=strings))
        if data.lstrip()[:1] == b"[":  # a JSON array rather than JSON lines
            import json

            return pa.Table.from_pylist(json.loads(data))
        return pajson.read_json(io.BytesIO(data))  # numeric ids become strings in read_manifest
    except storage.StorageError as exc:
        raise CatalogueError(f"cannot read manifest {uri}: {exc}") from exc
    except (pa.ArrowInvalid, ValueError, OSError) as exc:
        raise CatalogueError(f"manifest {uri} is not valid {lower.rsplit('.', 1)[-1]}: {exc}") from exc


def _as_string(col: pa.ChunkedArray, uri: str, name: str) -> pa.ChunkedArray:
    if pa.types.is_string(col.type):
        return col
    if pa.types.is_large_string(col.type) or pa.types.is_integer(col.type) or pa.types.is_null(col.type):
        return col.cast(pa.string())
    raise CatalogueError(f"manifest {uri}: column {name} should hold strings, not {col.type}")


def _empty_to_null(col: pa.ChunkedArray) -> pa.ChunkedArray:
    return pc.if_else(pc.equal(col, ""), pa.scalar(None, pa.string()), col) if len(col) else col


def _check_hashes(col: pa.ChunkedArray, uri: str) -> pa.ChunkedArray:
    if not len(col):
        return col
    col = pc.ascii_lower(col)
    bad = pc.invert(pc.fill_null(pc.match_substring_regex(col, SHA256_HEX.pattern), True))
    if pc.any(bad).as_py():
        value = col.filter(bad)[0].as_py()
        raise CatalogueError(f"manifest {uri}: content_sha256 {value!r} is not 64 hex digits")
    return col


def _resolve_image_uris(base: str, uris: pa.ChunkedArray) -> pa.ChunkedArray:
    """Every ``image_uri`` of a manifest made absolute against the manifest's directory.

    A plain relative path (``shirt/0001.png``: no scheme, no leading, doubled or trailing
    ``/``, no ``.`` or ``..`` segment) resolves to the directory plus the path: done for all
    such rows at once, since manifests run to millions of rows. Anything else goes through
    :func:`_resolve_image_uri` row by row.
    """
    if not len(uris):
        return uris
    odd = pc.or_(pc.or_(pc.starts_with(uris, "/"), pc.ends_with(uris, "/")),
                 pc.match_substring_regex(uris, r"^[A-Za-z][A-Za-z0-9+.\-]*:|//|(^|/)\.\.?(/|$)"))
    if pc.any(odd).as_py():
        return pa.chunked_array([pa.array([_resolve_image_uri(base, u) for u in uris.to_pylist()], pa.string())])
    prefix = _resolve_image_uri(base, "x")[:-1]  # the directory exactly as the row-by-row path writes it
    return pc.binary_join_element_wise(prefix, uris, "")


def _resolve_image_uri(base: str, image_uri: str) -> str:
    if storage.is_remote(image_uri) or image_uri.startswith("file://"):
        return image_uri
    if storage.is_remote(base):
        if image_uri.startswith("/"):
            raise CatalogueError(f"image_uri {image_uri!r} is an absolute local path in a manifest on object storage")
        scheme, rest = base.split("://", 1)
        path = posixpath.normpath(posixpath.join(rest, image_uri))
        if path.split("/", 1)[0] != rest.split("/", 1)[0]:
            raise CatalogueError(f"image_uri {image_uri!r} leaves the bucket of the manifest at {base}")
        return f"{scheme}://{path}"
    return os.path.normpath(os.path.join(base, image_uri))


def write_manifest(table: pa.Table, uri: str) -> None:
    """Write a manifest table as Parquet in one atomic object (local rename or one S3 PUT)."""
    import pyarrow.parquet as pq

    missing = [c for c in ("item_id", "image_uri") if c not in table.column_names]
    if missing:
        raise CatalogueError(f"a manifest needs column(s) {', '.join(missing)}")
    buf = io.BytesIO()
    pq.write_table(table, buf)
    storage.write_bytes(uri, buf.getvalue())
