"""Catalogue sources: what the embedding job reads, as one table of items.

Two layouts, local or ``s3://`` (see :mod:`artifacts.storage` for endpoints)::

    <prefix>/<category>/<item_id>.<ext>          image folders, one per category
    <prefix>/<category>/<sub-category>/<item_id>.<ext>   the same, nested (category_level=2)
    <prefix>/manifest.parquet | .csv | .jsonl    a manifest: item_id, image_uri, optional
                                                 category, content_sha256 and any metadata

A URI naming a manifest file, or a directory holding one, is read as a manifest (a relative
``image_uri`` is resolved against the manifest's directory); any other directory as image
folders. Either way :func:`list_catalogue` returns one row per item with at least ``item_id``,
``image_uri`` (absolute), ``category`` and ``content_sha256`` (null where the source does not
carry it), followed by the manifest's other columns. Nested image folders (``category_level=2``,
the product-search thesis's layout) add a ``sub_category`` column; a manifest carries one as
any other column.

Every ``image_uri`` must lie under :func:`catalogue_roots`: the catalogue's own root (the
manifest's directory, or the image folders' directory) plus prefixes named in config. The rule
is :func:`confine` (one URI) and :func:`refusals` (a column, same decisions); the embedding job
turns refused rows into errors, and the item-image route re-checks before it opens anything.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import posixpath
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from . import storage

log = logging.getLogger("vitrine.catalogue")

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
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


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


# --- Confinement: which image URIs may be read (confine, catalogue_roots, refusals) ------------
# Kept in this module (which is over 400 lines with it) because read_manifest and list_catalogue
# apply it while they resolve URIs and it raises this module's CatalogueError; it is the first
# piece to move to its own module when the catalogue grows again.
def confine(uri: str, roots: tuple[str, ...] | list[str]) -> str:
    """``uri`` normalised, if it lies under one of ``roots``; else :class:`CatalogueError` with a reason.

    ``file://`` URIs, ``..`` segments and percent-encoded separators are refused outright; local
    paths are compared by real path (symlinks resolved) and on whole path segments, so
    ``/data/cat`` does not admit ``/data/catalogue-evil``.
    """
    from urllib.parse import unquote

    if uri.startswith("file:"):
        raise CatalogueError(f"image_uri {uri!r} is a file:// URI; only paths under the catalogue roots are allowed")
    decoded = unquote(uri)
    if decoded != uri and ("/" in decoded.replace(uri, "") or ".." in decoded or "%" in decoded):
        raise CatalogueError(f"image_uri {uri!r} hides a separator or '..' in percent-encoding")
    if ".." in decoded.replace("\\", "/").split("/"):
        raise CatalogueError(f"image_uri {uri!r} has a '..' segment")

    target = _norm_target(decoded)
    for root in roots:
        base = _norm_root(root)
        if target == base or target.startswith(base + "/"):
            return target
    raise CatalogueError(f"image_uri {uri!r} lies outside the catalogue roots {list(roots)}")


def _norm_target(uri: str) -> str:
    # An object key is compared as written: the store reads the literal key, and a prefix test on
    # it (no '..' left) is exactly "under the root"; normalising 's3://b//cat/x' would let the key
    # '/cat/x' pass for 'cat/x'.
    if storage.is_remote(uri):
        scheme, _, rest = uri.partition("://")
        return f"{scheme.lower()}://{rest}"
    return os.path.realpath(uri)


def _norm_root(root: str) -> str:
    if storage.is_remote(root):
        scheme, _, rest = root.partition("://")
        return f"{scheme.lower()}://{posixpath.normpath(rest)}".rstrip("/")
    return os.path.realpath(root).rstrip("/")


def catalogue_roots(uri: str, allowed_prefixes=()) -> tuple[str, ...]:
    """Where the images of the catalogue at ``uri`` may lie: its own root (the directory of its
    manifest, or the image folders' directory) and then each of ``allowed_prefixes``, made
    absolute. A prefix that is a ``file://`` URI or holds a '..' segment raises
    :class:`CatalogueError` (config mistakes should not widen what can be read)."""
    uri = str(uri)
    own = _parent(uri) if uri.lower().endswith(MANIFEST_SUFFIXES) else uri
    roots: list[str] = []
    for root in (own, *allowed_prefixes):
        root = str(root).strip()
        if not root:
            continue
        if root.lower().startswith("file:") or ".." in root.replace("\\", "/").split("/"):
            raise CatalogueError(f"catalogue root {root!r}: give a plain path or an s3:// prefix, without '..'")
        roots.append(_norm_root(root) if storage.is_remote(root) else os.path.abspath(root))
    return tuple(dict.fromkeys(roots))


# Rows that take the full confine() path (for its decision and its reason) instead of the bulk one.
_ODD_URI = r"(?i)^file:|%|\\|(^|/)\.\.(/|$)"


def refusals(uris, roots) -> pa.Array:
    """For each URI, why it may not be read (a ``"refused: ..."`` string), or null when it lies
    under ``roots``; the same decision as :func:`confine`, made in bulk.

    Object-storage URIs are prefix tests on the column. Local paths resolve symlinks once per
    directory (``realpath`` of the directory, plus the names in it that are symlinks, from one
    ``scandir``), so a 60k-row manifest costs a few directory reads, not 60k ``realpath`` calls.
    """
    uris = _combined(uris)
    n = len(uris)
    if not n:
        return pa.array([], pa.string())
    roots = tuple(roots)
    odd = pc.fill_null(pc.match_substring_regex(uris, _ODD_URI), True)
    remote = pc.fill_null(pc.match_substring_regex(uris, r"(?i)^s3a?://"), False)
    ok = pa.array([False] * n)
    remote_roots = [_norm_root(r) for r in roots if storage.is_remote(r)]
    for base in remote_roots:
        ok = pc.or_(ok, pc.starts_with(uris, base + "/"))
    ok = pc.and_(ok, remote)
    local = pc.invert(pc.or_(remote, odd))
    if pc.any(local).as_py():
        ok = pc.or_(ok, _local_ok(uris, local, [_norm_root(r) for r in roots if not storage.is_remote(r)]))
    ok = pc.fill_null(pc.and_(ok, pc.invert(odd)), False)
    if pc.all(ok).as_py():
        return pa.nulls(n, pa.string())
    reasons: list[str | None] = [None] * n
    values = uris.to_pylist()
    for i in pc.indices_nonzero(pc.invert(ok)).to_pylist():
        try:
            confine(values[i] or "", roots)
        except CatalogueError as exc:
            reasons[i] = f"refused: {exc}"
    return pa.array(reasons, pa.string())


def _combined(col):
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def _local_ok(uris: pa.Array, local: pa.Array, bases: list[str]) -> pa.Array:
    """True for the ``local`` rows whose real path lies under one of ``bases`` (real paths)."""
    if not bases:
        return pa.array([False] * len(uris))
    parts = pc.split_pattern(pc.if_else(local, uris, pa.scalar(None, pa.string())), "/", max_splits=1, reverse=True)
    # A relative name without '/' lives in the working directory.
    dirs = pc.if_else(pc.equal(pc.list_value_length(parts), 2), pc.list_element(parts, 0), pa.scalar(".", pa.string()))
    inside, links = [], []
    for d in pc.unique(dirs.filter(pc.is_valid(dirs))).to_pylist():
        real = os.path.realpath(d or "/")
        if not any(real == b or real.startswith(b + "/") or b == "" for b in bases):
            continue
        inside.append(d)
        try:
            with os.scandir(d or "/") as entries:
                links.extend(e.name if d == "." else f"{d}/{e.name}" for e in entries if e.is_symlink())
        except OSError:  # a missing directory: its files fail when read, with that reason
            pass
    ok = pc.fill_null(pc.is_in(dirs, value_set=pa.array(inside, pa.string())), False)
    if links:  # a symlinked file goes through confine(), which follows it
        ok = pc.and_(ok, pc.invert(pc.fill_null(pc.is_in(uris, value_set=pa.array(links, pa.string())), False)))
    return ok


# What the item-image route serves, by the format Pillow finds in the bytes (never by file name:
# a '.png' that holds HTML must not reach a browser as anything it would render).
SERVED_IMAGE_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif"}


def image_media_type(head: bytes) -> str | None:
    """The MIME type of the image whose first bytes are ``head`` (JPEG, PNG, WebP or GIF), from
    its decoded header only (``Image.open`` reads no pixels), or None for anything else."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(head)) as img:
            return SERVED_IMAGE_TYPES.get(img.format or "")
    except Exception:  # not an image, a truncated header, a decompression bomb: not served
        return None


def content_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def list_catalogue(uri: str, *, allowed_prefixes=(), keep_refused: bool = False, category_level: int = 1) -> pa.Table:
    """Every item of the catalogue at ``uri`` (manifest or image folders), checked.

    Raises :class:`CatalogueError` for a missing or empty source, missing columns, invalid or
    duplicate item ids, or a malformed ``content_sha256``. The table's schema metadata records
    the source kind (``vitrine.kind``: ``manifest`` or ``folders``) and URI.

    Each ``image_uri`` must lie under :func:`catalogue_roots` (the catalogue's own root plus
    ``allowed_prefixes``). By default one that does not raises; with ``keep_refused`` every row
    is returned and a last column ``refused_reason`` says why a row may not be read (null when
    it may): the embedding job turns those rows into rows of its errors table.

    ``category_level`` (image folders only): 1 reads ``<category>/<item_id>.<ext>``, 2 reads
    ``<category>/<sub-category>/<item_id>.<ext>`` into ``category`` and ``sub_category``; files
    at any other depth are skipped.
    """
    if category_level not in CATEGORY_LEVELS:
        raise CatalogueError(f"category_level {category_level!r}: valid are {', '.join(map(str, CATEGORY_LEVELS))}")
    uri = str(uri).rstrip("/") if storage.is_remote(str(uri)) else str(uri)
    manifest = find_manifest(uri)
    if manifest:
        table, kind, source = read_manifest(manifest, allowed_prefixes=allowed_prefixes), "manifest", manifest
    elif storage.is_dir(uri):
        table, kind, source = _list_folders(uri, category_level), "folders", uri
        # Listed under the root by construction; refusals() still catches symlinks out of it.
        table = table.append_column(REFUSED, refusals(table.column("image_uri"),
                                                      catalogue_roots(uri, allowed_prefixes)))
    else:
        raise CatalogueError(f"catalogue {uri} not found (expected a directory of category folders, "
                             f"a directory with a manifest, or a manifest file)")
    if table.num_rows == 0:
        raise CatalogueError(f"catalogue {source} holds no items")
    _check_ids(table, source)
    if not keep_refused:
        reasons = table.column(REFUSED)
        if reasons.null_count != len(reasons):
            first = reasons.filter(pc.is_valid(reasons))[0].as_py()
            raise CatalogueError(f"catalogue {source}: {len(reasons) - reasons.null_count} item(s) may not be "
                                 f"read, e.g. {first}")
        table = table.drop_columns([REFUSED])
    return table.replace_schema_metadata({"vitrine.kind": kind, "vitrine.source": source})


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
    manifest's other columns, then ``refused_reason``: see :func:`list_catalogue`)."""
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
    cols["image_uri"], refused = _resolve_and_confine(_parent(uri), cols["image_uri"],
                                                      catalogue_roots(uri, allowed_prefixes))
    cols["category"] = _empty_to_null(cols["category"])
    cols["content_sha256"] = _check_hashes(_empty_to_null(cols["content_sha256"]), uri)
    # A manifest's own refused_reason column is dropped: only our check decides what is readable.
    extra = [c for c in raw.column_names if c not in CORE_COLUMNS and c != REFUSED]
    return pa.table({**cols, **{c: raw.column(c) for c in extra}, REFUSED: refused})


def _resolve_and_confine(base: str, uris: pa.ChunkedArray, roots: tuple[str, ...]):
    """``(absolute image URIs, refusal reasons)`` for a manifest's ``image_uri`` column.

    A '..' segment is refused on the text as written, before resolution could normalise it
    away; so is an absolute local path in a manifest on object storage. Those rows keep their
    text as the URI (for the errors table); the rest are resolved, then checked by
    :func:`refusals`.
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
    for i in pc.indices_nonzero(_combined(early)).to_pylist():
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
    bad = pc.invert(pc.fill_null(pc.match_substring_regex(col, _SHA256.pattern), True))
    if pc.any(bad).as_py():
        value = col.filter(bad)[0].as_py()
        raise CatalogueError(f"manifest {uri}: content_sha256 {value!r} is not 64 hex digits")
    return col


def _parent(uri: str) -> str:
    if storage.is_remote(uri):
        return posixpath.dirname(uri)
    return os.path.dirname(os.path.abspath(uri))


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


def _list_folders(uri: str, category_level: int = 1) -> pa.Table:
    fs, root = storage.resolve(uri)
    try:
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    except OSError as exc:
        raise CatalogueError(f"cannot list catalogue {uri}: {exc}") from exc
    prefix = root.rstrip("/") + "/"
    rows: list[tuple[str, str, str, str | None]] = []
    depth = category_level + 1
    skipped = 0
    for info in infos:
        if info.type != pafs.FileType.File:
            continue
        rel = info.path[len(prefix):] if info.path.startswith(prefix) else info.path
        parts = rel.split("/")
        stem, ext = os.path.splitext(parts[-1])
        if len(parts) != depth or ext.lower() not in IMAGE_EXTENSIONS or any(p.startswith(".") for p in parts):
            skipped += len(parts) != 1  # top-level files (a README, a manifest) are expected
            continue
        rows.append((stem, storage.join(uri, *parts), parts[0], parts[1] if depth == 3 else None))
    if skipped:
        log.info("catalogue %s: ignored %d file(s) that are not <category>/%s<item_id>.<image ext>", uri, skipped,
                 "<sub-category>/" if depth == 3 else "")
    rows.sort(key=lambda r: (r[2], r[0]))
    columns = {
        "item_id": pa.array([r[0] for r in rows], pa.string()),
        "image_uri": pa.array([r[1] for r in rows], pa.string()),
        "category": pa.array([r[2] for r in rows], pa.string()),
        "content_sha256": pa.nulls(len(rows), pa.string()),
    }
    if depth == 3:
        columns[SUB_CATEGORY] = pa.array([r[3] for r in rows], pa.string())
    return pa.table(columns)


def _check_ids(table: pa.Table, source: str) -> None:
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


def read_many(uris: list[str], *, threads: int = 16) -> list[bytes | Exception]:
    """The bytes of every URI, in order; a failure is returned in its slot, not raised.

    Local files are read directly; object storage through one filesystem and a thread pool,
    since each request mostly waits on the network.
    """
    if not uris:
        return []
    local = [not storage.is_remote(u) for u in uris]
    fs = None if all(local) else storage.s3_filesystem()

    def one(uri: str, is_local: bool) -> bytes | Exception:
        try:
            if is_local:
                with open(storage.resolve(uri)[1], "rb") as f:
                    return f.read()
            with fs.open_input_stream(uri.split("://", 1)[1], compression=None) as f:
                return f.read()
        except Exception as exc:  # reported per item by the caller
            return exc

    if all(local) or threads <= 1 or len(uris) < 4:
        return [one(u, is_local) for u, is_local in zip(uris, local)]
    with ThreadPoolExecutor(max_workers=min(threads, len(uris))) as pool:
        return list(pool.map(one, uris, local))


def fill_hashes(table: pa.Table, *, threads: int = 16, chunk: int = 4096) -> tuple[pa.Table, list[dict]]:
    """Compute ``content_sha256`` where the catalogue does not carry it, by reading the bytes.

    Returns the table with hashes filled in, minus the items that could not be read, and those
    items as ``{"item_id", "image_uri", "reason"}`` rows.
    """
    hashes = table.column("content_sha256").to_pylist()
    todo = [i for i, h in enumerate(hashes) if h is None]
    if not todo:
        return table, []
    uris = table.column("image_uri").to_pylist()
    ids = table.column("item_id").to_pylist()
    failed: list[dict] = []
    for start in range(0, len(todo), chunk):
        idx = todo[start:start + chunk]
        for i, data in zip(idx, read_many([uris[i] for i in idx], threads=threads)):
            if isinstance(data, Exception):
                failed.append({"item_id": ids[i], "image_uri": uris[i], "reason": f"cannot read image: {data}"})
            else:
                hashes[i] = content_sha256(data)
    pos = table.schema.get_field_index("content_sha256")
    out = table.set_column(pos, "content_sha256", pa.array(hashes, pa.string()))
    if failed:
        out = out.filter(pc.invert(pc.is_null(out.column("content_sha256"))))
    return out, failed


def write_manifest(table: pa.Table, uri: str) -> None:
    """Write a manifest table as Parquet in one atomic object (local rename or one S3 PUT)."""
    import pyarrow.parquet as pq

    missing = [c for c in ("item_id", "image_uri") if c not in table.column_names]
    if missing:
        raise CatalogueError(f"a manifest needs column(s) {', '.join(missing)}")
    buf = io.BytesIO()
    pq.write_table(table, buf)
    storage.write_bytes(uri, buf.getvalue())
