"""Carry a published index over to a new embeddings run instead of rebuilding it.

:func:`plan_update` compares the previous :class:`~artifacts.hnsw_index.HnswIndex` with the new
run's item ids, categories and content hashes (no vectors), and :func:`apply_update` turns the
previous index into the new one, given the vectors of the rows it adds:

- unchanged items (same id, ``content_sha256`` and category) keep their position;
- removed and changed items become tombstones: ``mark_deleted`` in the global graph and in their
  category's sub-index, ``deleted`` in the id map, never returned by any search;
- new and changed items are appended at new positions (``resize_index``, ``add_items``);
- a category's sub-index follows its live size: one that falls to ``exact_below`` items or fewer
  is dropped (that category is then searched exactly), one that grows past it is built from its
  live members.

:func:`update_index` does both for callers that hold every vector (benchmarks). Tombstones cost
memory and search time (hnswlib still walks through them), so the build job compacts (rebuilds)
once they pass a share of the rows; :func:`open_previous` says why an index cannot be updated at
all. The content hash stands for the embedding because a run's model is fixed: the same model
embeds the same bytes the same way (the embedding job carries such rows over unchanged).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass

import numpy as np

from . import embeddings, publish, storage
from .hnsw_index import HnswIndex, new_graph, validate_items
from .index_manifest import MANIFEST, SPACE, IndexBuildError, IndexManifest

log = logging.getLogger("vitrine.index")

# Parameters that shape the graphs: an index built with others is rebuilt, not updated. (``ef``
# is a search setting, changed on the spot.)
BUILD_PARAMS = ("space", "M", "ef_construction", "exact_below", "seed")


@dataclass(frozen=True)
class UpdatePlan:
    """What changes between the previous index and the new run; no vectors involved."""

    add_rows: np.ndarray  # rows of the new run to append (changed + new), in run order
    add_ids: np.ndarray
    add_categories: list
    add_hashes: np.ndarray
    delete_positions: np.ndarray  # previous live positions to tombstone (changed + removed)
    unchanged: int
    changed: int
    removed: int
    new: int
    deleted_share: float  # tombstones / rows once applied, counting the previous index's own


@dataclass
class UpdateStats:
    unchanged: int
    changed: int
    removed: int
    new: int
    added: int
    deleted: int
    positions: int
    deleted_total: int
    deleted_share: float
    seconds: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def plan_update(previous: HnswIndex, ids, categories, hashes) -> UpdatePlan:
    """Diff the previous index against a run given as ``ids``, ``categories``, ``hashes`` (row order)."""
    if previous.content_hashes is None:
        raise IndexBuildError("the previous index records no content hashes; rebuild it")
    ids = np.asarray(list(ids), dtype=object)
    cats = np.asarray([None if c is None else str(c) for c in categories], dtype=object)
    hashes = np.asarray(list(hashes), dtype=object)
    if not len(ids) == len(cats) == len(hashes):
        raise IndexBuildError(f"{len(ids)} ids, {len(cats)} categories and {len(hashes)} hashes")
    if len(set(ids.tolist())) != len(ids):
        raise IndexBuildError("duplicate item ids in the embeddings run")
    live = previous.live_positions
    position_of = dict(zip(previous.item_ids[live].tolist(), live.tolist()))
    prev_pos = np.fromiter((position_of.get(i, -1) for i in ids.tolist()), np.int64, len(ids))
    known = np.flatnonzero(prev_pos >= 0)
    same = np.zeros(len(ids), bool)
    old = prev_pos[known]
    same[known] = ((previous.content_hashes[old] == hashes[known])
                   & (np.asarray(previous.categories_of(old), dtype=object) == cats[known]))
    changed = (prev_pos >= 0) & ~same
    seen = np.zeros(previous.n_positions, bool)
    seen[old] = True
    removed = live[~seen[live]]
    delete = np.sort(np.concatenate([prev_pos[changed], removed])).astype(np.int64)
    add_rows = np.flatnonzero(~same)
    rows_after = previous.n_positions + len(add_rows)
    return UpdatePlan(add_rows=add_rows, add_ids=ids[add_rows], add_categories=cats[add_rows].tolist(),
                      add_hashes=hashes[add_rows], delete_positions=delete, unchanged=int(same.sum()),
                      changed=int(changed.sum()), removed=len(removed), new=int((prev_pos < 0).sum()),
                      deleted_share=(int(previous.deleted.sum()) + len(delete)) / max(rows_after, 1))


def apply_update(previous: HnswIndex, plan: UpdatePlan, vectors, *, num_threads: int = 0
                 ) -> tuple[HnswIndex, UpdateStats]:
    """The updated index; ``vectors`` are those of ``plan.add_rows`` (L2-normalised, in that order).

    ``previous`` is consumed: its graphs are changed in place and become the new index's, so it
    must not be searched afterwards (load it again if you need it).
    """
    t0 = time.time()
    vecs = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32)).reshape(-1, previous.dim)
    validate_items(plan.add_ids, plan.add_categories, vecs)
    p = previous.params
    n_old, n_add = previous.n_positions, len(plan.add_rows)
    new_pos = np.arange(n_old, n_old + n_add, dtype=np.int64)
    threads = num_threads or -1
    graph = previous.graph
    for pos in plan.delete_positions.tolist():
        graph.mark_deleted(pos)
    if n_add:
        if graph.get_max_elements() < n_old + n_add:
            graph.resize_index(n_old + n_add)
        graph.add_items(vecs, new_pos, num_threads=threads)
    deleted = np.concatenate([previous.deleted, np.zeros(n_add, bool)])
    deleted[plan.delete_positions] = True
    old_cats = previous.categories_of(np.arange(n_old))
    deleted_cats = np.asarray(old_cats, dtype=object)[plan.delete_positions]
    index = HnswIndex(item_ids=np.concatenate([previous.item_ids, plan.add_ids]),
                      categories=old_cats + list(plan.add_categories),
                      vectors=np.concatenate([previous.vectors, vecs]), index=graph, sub_indexes={},
                      params=dict(p), num_threads=num_threads, deleted=deleted,
                      content_hashes=np.concatenate([previous.content_hashes, plan.add_hashes]))
    subs = {previous.category_names[j]: sub for j, sub in previous.sub_graphs.items()}
    add_cats = np.asarray(plan.add_categories, dtype=object)
    for j, name in enumerate(index.category_names):
        members, sub = index.category_members[j], subs.get(name)
        if len(members) <= int(p["exact_below"]):
            continue  # small enough to search exactly: no sub-index (a previous one is dropped)
        if sub is None:
            sub = new_graph(index.vectors[members], members, M=p["M"], ef_construction=p["ef_construction"],
                            ef=p["ef"], seed=p["seed"], num_threads=num_threads)
        else:
            for pos in plan.delete_positions[deleted_cats == name].tolist():
                sub.mark_deleted(pos)
            adds = new_pos[add_cats == name]
            if len(adds):
                sub.resize_index(sub.element_count + len(adds))
                sub.add_items(index.vectors[adds], adds, num_threads=threads)
        index.sub_graphs[j] = sub
    index.build_seconds = time.time() - t0
    index.set_num_threads(num_threads)
    stats = UpdateStats(unchanged=plan.unchanged, changed=plan.changed, removed=plan.removed, new=plan.new,
                        added=n_add, deleted=len(plan.delete_positions), positions=index.n_positions,
                        deleted_total=int(deleted.sum()), deleted_share=round(float(deleted.mean()), 5),
                        seconds=round(index.build_seconds, 3))
    log.info("updated HNSW index: %d unchanged, %d changed, %d removed, %d new; %d live of %d rows in %.1f s",
             plan.unchanged, plan.changed, plan.removed, plan.new, len(index), index.n_positions, index.build_seconds)
    return index, stats


def update_index(previous: HnswIndex, ids, categories, hashes, vectors, *, num_threads: int = 0
                 ) -> tuple[HnswIndex, UpdateStats]:
    """:func:`plan_update` then :func:`apply_update`, for a run whose every vector is at hand
    (``vectors[i]`` is row ``i``'s); only the added rows' vectors are used. Consumes ``previous``."""
    plan = plan_update(previous, ids, categories, hashes)
    return apply_update(previous, plan, np.asarray(vectors)[plan.add_rows], num_threads=num_threads)


def open_previous(indexes_uri: str, *, model_id: str, dim: int, params: dict, num_threads: int = 0
                  ) -> tuple[HnswIndex | None, str]:
    """``(index, "")`` when the ``LATEST`` index under ``indexes_uri`` can be updated for a run of
    ``model_id`` with build ``params``; otherwise ``(None, why a full rebuild is needed)``."""
    from .index_manifest import IndexLoadError

    try:
        uri = publish.resolve(indexes_uri, manifest_name=MANIFEST)
        manifest = IndexManifest.from_json(storage.read_text(storage.join(uri, MANIFEST)))
    except publish.NotPublishedError:
        return None, f"no previous index under {indexes_uri}"
    except (IndexLoadError, storage.StorageError, OSError, ValueError) as exc:
        return None, f"the previous index under {indexes_uri} cannot be read ({exc})"
    name = manifest.index_id or uri
    if manifest.model_id != model_id:
        return None, f"the previous index {name} is of model {manifest.model_id!r}, this run of {model_id!r}"
    if int(manifest.embedding_dim) != int(dim):
        return None, f"the previous index {name} holds dimension {manifest.embedding_dim}, this run {dim}"
    wanted = {"space": SPACE, **params}
    other = [f"{k} {manifest.params.get(k)} -> {wanted[k]}" for k in BUILD_PARAMS
             if k in wanted and manifest.params.get(k) != wanted[k]]
    if other:
        return None, f"the previous index {name} has other build params ({', '.join(other)})"
    try:
        previous = HnswIndex.load(uri, expected_dim=dim, num_threads=num_threads)
    except (IndexLoadError, storage.StorageError, OSError, RuntimeError, ValueError) as exc:
        return None, f"the previous index {name} failed to load ({exc})"
    if previous.content_hashes is None:
        return None, f"the previous index {name} records no content hashes (format {manifest.format_version})"
    return previous, ""


def check_row_count(run_uri: str, manifest: embeddings.RunManifest, num_rows: int) -> None:
    """Refuse a run whose data holds other than ``counts.total - counts.failed`` rows."""
    # The manifest is written last and says how many rows the run holds; fewer (a lost or
    # overwritten part file) or more (a stray file in data/) means the index would not be the run.
    counts = manifest.counts or {}
    if "total" not in counts:
        raise IndexBuildError(f"{run_uri}: its manifest has no counts.total; cannot check the row count")
    expected = int(counts["total"]) - int(counts.get("failed", 0))
    if num_rows != expected:
        raise IndexBuildError(f"{run_uri} holds {num_rows} rows but its manifest counts {expected} "
                              f"(total {counts['total']} - failed {counts.get('failed', 0)}); not indexing it")


def read_keys(run_uri: str) -> tuple[list, list, list, embeddings.RunManifest]:
    """``(item_ids, categories, content_hashes, manifest)`` of a complete run, without its vectors."""
    run_uri = embeddings.resolve_run(run_uri)
    manifest = embeddings.read_manifest(run_uri)
    table = embeddings.read_table(run_uri, columns=["item_id", "category", "content_sha256"])
    check_row_count(run_uri, manifest, table.num_rows)
    return (table.column("item_id").to_pylist(), table.column("category").to_pylist(),
            table.column("content_sha256").to_pylist(), manifest)


def read_rows(run_uri: str, rows: np.ndarray, ids) -> np.ndarray:
    """The embeddings of ``rows`` (row numbers in :func:`read_keys` order) of a run, checked
    against their expected ``ids``; only those rows are materialised."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    run_uri = embeddings.resolve_run(run_uri)
    dim = int(embeddings.read_manifest(run_uri).embedding_dim)
    rows = np.asarray(rows, np.int64)
    if not len(rows):
        return np.zeros((0, dim), np.float32)
    fs, path = storage.resolve(storage.join(run_uri, embeddings.DATA_DIR))
    data = ds.dataset(path, filesystem=fs, format="parquet", schema=embeddings.embeddings_schema(dim))
    table = data.take(pa.array(rows), columns=["item_id", "embedding"])
    if table.column("item_id").to_pylist() != list(ids):
        raise IndexBuildError(f"{run_uri}: its rows moved between two reads; not indexing it")
    column = table.column("embedding").combine_chunks()
    if column.null_count:
        raise IndexBuildError(f"{run_uri}: {column.null_count} rows have no embedding")
    return column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, dim)
