"""Where a catalogue's images may lie, and which image URIs may be read.

Every ``image_uri`` must lie under :func:`catalogue_roots`: the catalogue's own root (the
manifest's directory, or the image folders' directory) plus prefixes named in config. The rule
is :func:`confine` (one URI) and :func:`refusals` (a column, same decisions); the embedding job
turns refused rows into errors, and the item-image route re-checks before it opens anything.
"""

from __future__ import annotations

import os
import posixpath

import pyarrow as pa
import pyarrow.compute as pc

from . import storage
from .catalogue import MANIFEST_SUFFIXES, CatalogueError


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


def parent_dir(uri: str) -> str:
    """The directory holding ``uri`` (a manifest file): absolute for a local path."""
    if storage.is_remote(uri):
        return posixpath.dirname(uri)
    return os.path.dirname(os.path.abspath(uri))


def catalogue_roots(uri: str, allowed_prefixes=()) -> tuple[str, ...]:
    """Where the images of the catalogue at ``uri`` may lie: its own root (the directory of its
    manifest, or the image folders' directory) and then each of ``allowed_prefixes``, made
    absolute. A prefix that is a ``file://`` URI or holds a '..' segment raises
    :class:`CatalogueError` (config mistakes should not widen what can be read)."""
    uri = str(uri)
    own = parent_dir(uri) if uri.lower().endswith(MANIFEST_SUFFIXES) else uri
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
