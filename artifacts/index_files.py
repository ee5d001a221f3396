"""Writing an :class:`~artifacts.hnsw_index.HnswIndex` to its directory (local or ``s3://``), the
manifest last, and reading it back with every file checked against the manifest."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import publish, storage
from .index_manifest import (CATEGORY_DIR, INDEX_FILE, ITEMS_FILE, MANIFEST, SPACE, VECTORS_FILE, IndexLoadError,
                             IndexManifest)

if TYPE_CHECKING:
    from .hnsw_index import HnswIndex


def save(index: "HnswIndex", uri: str, *, index_id: str = "", model_id: str = "", source_embeddings: str = "",
         embeddings_run_id: str = "", recall: dict | None = None, config: dict | None = None,
         catalogue_roots=(), update: dict | None = None) -> IndexManifest:
    """Write the index to a directory (local or ``s3://``), the manifest last.

    Remote targets are written to a local temporary directory, uploaded, and only then get
    their manifest; a reader never sees a manifest without every file it names.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    recall = dict(recall or {})
    files = {"index": INDEX_FILE, "items": ITEMS_FILE, "vectors": VECTORS_FILE,
             "categories": {index.category_names[j]: f"{CATEGORY_DIR}/{j}.bin" for j in sorted(index.sub_graphs)}}
    counts = {"items": len(index), "positions": index.n_positions, "deleted": int(index.deleted.sum()),
              "categories": index.category_counts(),
              "uncategorised": int(((index.category_codes < 0) & ~index.deleted).sum())}
    manifest = IndexManifest(
        index_id=index_id, model_id=model_id, source_embeddings=source_embeddings,
        embeddings_run_id=embeddings_run_id, embedding_dim=index.dim, counts=counts,
        params={k: v for k, v in index.params.items() if k != "build_seconds"},
        recall_at_10=recall.get("recall_at_10"), recall=recall, build_seconds=round(index.build_seconds, 3),
        created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), files=files, config=dict(config or {}),
        catalogue_roots=list(catalogue_roots), update=dict(update or {"mode": "full"}))
    with tempfile.TemporaryDirectory(prefix="vitrine-index-") as tmp:
        local = Path(tmp) if storage.is_remote(uri) else Path(storage.resolve(uri)[1])
        local.mkdir(parents=True, exist_ok=True)
        (local / CATEGORY_DIR).mkdir(exist_ok=True)
        index.graph.save_index(str(local / INDEX_FILE))
        for j, idx in index.sub_graphs.items():
            idx.save_index(str(local / CATEGORY_DIR / f"{j}.bin"))
        np.save(local / VECTORS_FILE, index.vectors)
        cats = index.categories_of(np.arange(index.n_positions))
        hashes = None if index.content_hashes is None else index.content_hashes.astype(str).tolist()
        pq.write_table(pa.table({"item_id": pa.array(index.item_ids.astype(str).tolist(), pa.string()),
                                 "category": pa.array(cats, pa.string()),
                                 "content_sha256": pa.array(hashes, pa.string()) if hashes is not None
                                 else pa.nulls(index.n_positions, pa.string()),
                                 "deleted": pa.array(index.deleted, pa.bool_())}), local / ITEMS_FILE)
        if storage.is_remote(uri):
            storage.upload_dir(local, uri)
    storage.write_text(storage.join(uri, MANIFEST), manifest.to_json())
    index.manifest = manifest
    return manifest


def load(cls: type["HnswIndex"], uri: str, *, expected_dim: int | None = None, num_threads: int = 0,
         with_hashes: bool = True) -> "HnswIndex":
    """Load an index directory, or the ``LATEST`` one under an ``indexes/`` directory.

    Checks every file against the manifest (item count, dimension, categories) and, when
    given, the dimension a model produces. ``vectors.npy`` is memory-mapped, not read: the
    graphs already hold a copy of every vector, so a replica pages in only what exact search
    touches. A remote index's temporary copy is removed after loading; the mapping keeps the
    unlinked file readable (POSIX) until the index is dropped. ``with_hashes=False`` leaves the
    items' content hashes unread (``content_hashes`` None): only an update needs them, and at a
    million items they are ~120 MB of Python strings in a search replica.
    """
    import pyarrow.parquet as pq

    uri, manifest = _resolve_manifest(uri)
    dim, n = int(manifest.embedding_dim), int(manifest.counts.get("items", -1))
    rows = int(manifest.counts.get("positions", n))  # format 1: no tombstones, rows = items
    if expected_dim is not None and dim != int(expected_dim):
        raise IndexLoadError(f"index {uri} holds {dim}-dimensional vectors but the model produces {expected_dim}")
    with storage.local_copy(uri) as local:
        _check_complete(uri, manifest, local)
        items_path = local / manifest.files["items"]
        columns = None if with_hashes else [c for c in pq.read_schema(items_path).names if c != "content_sha256"]
        items = pq.read_table(items_path, columns=columns)
        vectors = _read_vectors(uri, local / manifest.files["vectors"], rows, dim)
        deleted, hashes = _item_flags(uri, items, rows)
        graph = _read_graph(uri, manifest, local / manifest.files["index"], "the index", rows, deleted)
        ids = np.asarray(items.column("item_id").to_pylist(), dtype=object)
        cats = items.column("category").to_pylist()
        index = cls(item_ids=ids, categories=cats, vectors=vectors, index=graph, sub_indexes={},
                   params=dict(manifest.params), num_threads=num_threads, manifest=manifest, deleted=deleted,
                   content_hashes=hashes)
        _check_counts(uri, manifest, index, n, deleted)
        for name, rel in manifest.files.get("categories", {}).items():
            if name not in index.category_names:
                raise IndexLoadError(f"{uri}: sub-index of {name!r}, a category with no live items")
            j = index.category_names.index(name)
            index.sub_graphs[j] = _read_graph(uri, manifest, local / rel, f"sub-index of {name!r}", rows, deleted,
                                              index.category_members[j])
    index.build_seconds = float(manifest.build_seconds)
    index.uri = uri
    index.set_num_threads(num_threads)
    return index


def _resolve_manifest(uri: str) -> tuple[str, IndexManifest]:
    """The index directory ``uri`` names (its ``LATEST`` one for an ``indexes/`` directory) and its manifest."""
    try:
        uri = publish.resolve(uri, manifest_name=MANIFEST)
    except publish.NotPublishedError as exc:
        raise IndexLoadError(f"no index at {uri}: {exc}") from None
    return uri, IndexManifest.from_json(storage.read_text(storage.join(uri, MANIFEST)))


def _check_complete(uri: str, manifest: IndexManifest, local: Path) -> None:
    missing = [f for f in (manifest.files.get("index"), manifest.files.get("items"),
                           manifest.files.get("vectors"), *manifest.files.get("categories", {}).values())
               if not f or not (local / f).exists()]
    if missing:
        raise IndexLoadError(f"index {uri} is incomplete: missing {', '.join(map(str, missing))}")


def _item_flags(uri: str, items, rows: int) -> tuple[np.ndarray, list | None]:
    """``(deleted flags, content hashes or None)`` of the id map table, checked against ``rows``."""
    if items.num_rows != rows:
        raise IndexLoadError(f"{uri}: manifest says {rows} items, id map holds {items.num_rows}")
    names = items.column_names
    deleted = (items.column("deleted").to_numpy(zero_copy_only=False).astype(bool)
               if "deleted" in names else np.zeros(rows, bool))
    hashes = items.column("content_sha256").to_pylist() if "content_sha256" in names else None
    if hashes is not None and any(h is None for h in hashes):
        hashes = None  # saved without hashes: an update cannot trust them
    return deleted, hashes


def _read_vectors(uri: str, path: Path, rows: int, dim: int) -> np.ndarray:
    try:
        vectors = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise IndexLoadError(f"{uri}: cannot read the vectors file ({exc})") from None
    if vectors.dtype != np.float32 or vectors.ndim != 2:
        raise IndexLoadError(f"{uri}: vectors must be a 2-D float32 array, got {vectors.dtype} {vectors.shape}")
    if vectors.shape != (rows, dim):
        raise IndexLoadError(f"{uri}: manifest says {rows} items of dimension {dim}, vectors file holds "
                             f"{vectors.shape[0]} x {vectors.shape[1]}")
    return vectors


def _read_graph(uri: str, manifest: IndexManifest, path: Path, what: str, rows: int, deleted: np.ndarray,
                members: np.ndarray | None = None):
    """One hnswlib graph file (the global graph, or a category's sub-index with its ``members``), checked."""
    import hnswlib

    dim = int(manifest.embedding_dim)
    idx = hnswlib.Index(space=manifest.params.get("space", SPACE), dim=dim)
    try:
        idx.load_index(str(path))
    except RuntimeError as exc:
        raise IndexLoadError(f"{uri}: cannot read {what} ({exc}); is its dimension {dim}?") from None
    expect = rows if members is None else len(members)
    if idx.element_count != expect and (members is None or not deleted.any()):
        raise IndexLoadError(f"{uri}: {what} holds {idx.element_count} items, manifest says {expect}")
    if members is not None and deleted.any():
        # A sub-index also holds its category's tombstones; its live labels must be the members.
        labels = np.sort(np.asarray(idx.get_ids_list(), np.int64))
        live = labels[~deleted[labels]] if not len(labels) or labels[-1] < rows else labels
        if not np.array_equal(live, members):
            raise IndexLoadError(f"{uri}: {what} holds {len(live)} live items, manifest says {expect}")
    idx.set_ef(int(manifest.params.get("ef", 64)))
    return idx


def _check_counts(uri: str, manifest: IndexManifest, index: "HnswIndex", n: int, deleted: np.ndarray) -> None:
    if len(index) != n or int(deleted.sum()) != int(manifest.counts.get("deleted", 0)):
        raise IndexLoadError(f"{uri}: manifest says {n} items ({manifest.counts.get('deleted', 0)} deleted), "
                             f"id map holds {len(index)} live and {int(deleted.sum())} deleted")
    if index.category_counts() != {k: int(v) for k, v in manifest.counts.get("categories", {}).items()}:
        raise IndexLoadError(f"{uri}: per-category counts in the id map differ from the manifest")
