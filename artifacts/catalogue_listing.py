"""Listing a catalogue: a manifest or image folders (see :mod:`artifacts.catalogue`) as one checked
table of items, every image URI confined to the catalogue roots."""

from __future__ import annotations

import logging
import os

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from . import storage
from .catalogue import CATEGORY_LEVELS, IMAGE_EXTENSIONS, REFUSED, SUB_CATEGORY, CatalogueError, check_item_ids
from .catalogue_manifest import find_manifest, read_manifest
from .image_roots import catalogue_roots, refusals

log = logging.getLogger("vitrine.catalogue")


def list_catalogue(uri: str, *, allowed_prefixes=(), keep_refused: bool = False, category_level: int = 1) -> pa.Table:
    """Every item of the catalogue at ``uri`` (manifest or image folders), checked.

    Raises :class:`~artifacts.catalogue.CatalogueError` for a missing or empty source, missing
    columns, invalid or duplicate item ids, or a malformed ``content_sha256``. The table's schema
    metadata records the source kind (``vitrine.kind``: ``manifest`` or ``folders``) and URI.

    Each ``image_uri`` must lie under :func:`~artifacts.image_roots.catalogue_roots` (the
    catalogue's own root plus ``allowed_prefixes``). By default one that does not raises; with
    ``keep_refused`` every row is returned and a last column ``refused_reason`` says why a row may
    not be read (null when it may): the embedding job turns those rows into rows of its errors
    table.

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
    check_item_ids(table, source)
    if not keep_refused:
        reasons = table.column(REFUSED)
        if reasons.null_count != len(reasons):
            first = reasons.filter(pc.is_valid(reasons))[0].as_py()
            raise CatalogueError(f"catalogue {source}: {len(reasons) - reasons.null_count} item(s) may not be "
                                 f"read, e.g. {first}")
        table = table.drop_columns([REFUSED])
    return table.replace_schema_metadata({"vitrine.kind": kind, "vitrine.source": source})


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
