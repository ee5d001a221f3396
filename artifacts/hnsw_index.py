"""The visual-search index: HNSW (hnswlib, inner product) over L2-normalised embeddings.

One plain class, :class:`HnswIndex`, used by the index build job and by the Serve search
replicas: build it from ``(item_ids, categories, vectors)``, search it (optionally within one or
several categories), compare it with exact search, save it and load it back. An index lives in
a directory (local or ``s3://``)::

    index.bin               hnswlib index over every item; labels are row positions
    categories/<j>.bin      one hnswlib sub-index per large category (see the comment on FILTER_STRATEGIES)
    items.parquet           row position -> item_id, category, content_sha256, deleted (the id map)
    vectors.npy             the float32 vectors, for exact search and small categories
    index_manifest.json     written last; its presence marks a complete index

An index updated in place (:mod:`artifacts.index_update`) keeps tombstones: rows marked
``deleted`` stay at their position (labels never move) and are ``mark_deleted`` in every graph
that holds them; no search path returns them, and ``len(index)`` counts live items only.
Format 1 indexes (no ``content_sha256``/``deleted`` columns) still load, with no tombstones.

The manifest records the embeddings run it was built from, the model, counts, dimension,
parameters, the recall@10 measured against exact search, and the build time; ``load`` checks
the files against it and fails with a clear message when they disagree.

Similarity is the inner product of unit vectors (= cosine); ``distance = 1 - similarity``,
which is hnswlib's ``ip`` distance.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

import numpy as np

from . import publish, storage

log = logging.getLogger("vitrine.index")

MANIFEST = "index_manifest.json"
INDEX_FILE = "index.bin"
ITEMS_FILE = "items.parquet"
VECTORS_FILE = "vectors.npy"
CATEGORY_DIR = "categories"
FORMAT_VERSION = 2  # 2: tombstones (items.deleted, counts.positions/deleted), content hashes
SPACE = "ip"
NORM_TOLERANCE = 1e-3

# Category filtering: per-category sub-indexes, chosen by measurement. Fashion-MNIST train split
# embedded by a trained vitrine_cnn (60,000 items x 256 dims, 10 categories of 6,000), M=16,
# ef_construction=200, ef=64, one hnswlib thread, 2 CPUs; 1,000 catalogue queries; reproduce with
# `vitrine build-index --embeddings <run> --compare-filters`:
#
#   filtered to          strategy    recall@10 vs exact   ms/query    queries/s, one query per call,
#                                    filtered search      (batched)   1 thread -> 2 threads
#   own category         subindex    0.9997               0.04        10,000 -> 17,400
#   (classify-then-      callback    0.9997               0.12         2,000 ->  1,900
#    filter)             overfetch   0.9999               0.16         3,000 ->  4,400
#   another category     subindex    0.85                 0.03        11,700
#   (far from the query) callback    0.90                 11              85
#                        overfetch   0.95                 31              33
#
# Sub-indexes: a filtered query costs what an unfiltered one does, on a smaller graph, and scales
# with threads. hnswlib's filter callback re-enters Python for every candidate it visits, holding
# the GIL, so it is 3-5x slower and concurrent requests in a replica do not run in parallel; far
# from the category it visits thousands of nodes (11 ms). Over-fetching needs k/fraction
# candidates for a category holding `fraction` of the items and, far from the category, doubles
# its way up towards the whole index (31 ms). The price of sub-indexes: a second copy of every
# item's vector and links (index.bin 70 MB + categories/ 70 MB here) and about twice the build
# time (global 6 s, with sub-indexes 12 s on 2 threads).
# Far from the requested category (a photo of a shirt, "show me boots"), its items are all about
# equally far and every strategy loses some neighbours to near-ties; sub-indexes reach 0.91-0.93 /
# 0.95-0.97 / 0.97-0.99 at ef = 128 / 256 / 512 (0.06 / 0.11 / 0.19 ms), so raise `ef` if that
# case matters. Categories with at most `exact_below` items (default 1,000) get no sub-index and
# are searched exactly with numpy: one query against 500 items takes 0.05 ms exactly vs 0.04 ms
# through a graph (2,000 items: 0.3 vs 0.05 ms), it is exact, and hnswlib raises when a small
# graph yields fewer than k neighbours.
FILTER_STRATEGIES = ("subindex", "callback", "overfetch")


class IndexBuildError(ValueError):
    """An index cannot be built from the given items; the message says why."""


class IndexLoadError(ValueError):
    """A stored index is missing, incomplete or inconsistent; the message names it."""


class UnknownCategoryError(KeyError):
    """A search asked for a category the index does not hold."""

    def __str__(self) -> str:  # KeyError quotes its message; a sentence reads better
        return str(self.args[0]) if self.args else ""


class Hit(NamedTuple):
    item_id: str
    category: str | None
    distance: float  # 1 - similarity (hnswlib's "ip" distance)
    similarity: float  # inner product of unit vectors = cosine similarity


@dataclass
class IndexManifest:
    """What an index directory holds and where it came from; written last."""

    index_id: str
    model_id: str
    source_embeddings: str
    embeddings_run_id: str
    embedding_dim: int
    counts: dict  # {"items": live N, "positions": rows, "deleted": tombstones, "categories": {name: n}, "uncategorised": n}
    params: dict  # M, ef_construction, ef, exact_below, seed, space, filter_strategy
    recall_at_10: float | None
    recall: dict = field(default_factory=dict)  # how recall was measured, and filtered recall
    build_seconds: float = 0.0
    created_at: str = ""
    files: dict = field(default_factory=dict)  # index, items, vectors, categories: {name: file}
    config: dict = field(default_factory=dict)  # the resolved build config
    # Where the items' images may be read (artifacts.catalogue.catalogue_roots of the embedded
    # catalogue); the item-image route opens nothing outside them. Empty (older indexes): nothing.
    catalogue_roots: list = field(default_factory=list)
    # How it was made: {"mode": "full"|"incremental", "reason", "previous_index", "added", "deleted", ...}.
    update: dict = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "IndexManifest":
        data = json.loads(text)
        if data.get("format_version", 0) > FORMAT_VERSION:
            raise IndexLoadError(f"index format {data['format_version']} is newer than this code understands "
                                 f"({FORMAT_VERSION})")
        missing = [k for k in ("index_id", "embedding_dim", "counts", "params", "files") if k not in data]
        if missing:
            raise IndexLoadError(f"index manifest lacks {', '.join(missing)}")
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), as float32."""
    v = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.where(norms > 0, norms, 1).astype(np.float32)


def _as_queries(vectors, dim: int) -> np.ndarray:
    q = np.asarray(vectors, dtype=np.float32)
    if q.ndim == 1:
        q = q[None, :]
    if q.ndim != 2 or q.shape[1] != dim:
        raise ValueError(f"query vectors must have shape (n, {dim}); got {np.shape(vectors)}")
    if not np.isfinite(q).all():
        raise ValueError("query vectors contain NaN or infinity")
    return l2_normalise(q)


def top_k(sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best-first ``(columns, similarities)`` of each row; ties broken by column (stable)."""
    n = sims.shape[1]
    k = min(k, n)
    if k == 0:
        return np.zeros((len(sims), 0), np.int64), np.zeros((len(sims), 0), np.float32)
    if k < n:
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        # Stable order among equal similarities: by column, so exact search is deterministic.
        part.sort(axis=1)
    else:
        part = np.broadcast_to(np.arange(n), sims.shape).copy()
    vals = np.take_along_axis(sims, part, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1).astype(np.int64), np.take_along_axis(vals, order, axis=1)


def _merge(parts: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge best-first candidate lists (positions, similarities; -1 = none) into the top ``k``."""
    pos = np.concatenate([p for p, _ in parts], axis=1)
    sim = np.concatenate([s for _, s in parts], axis=1)
    sim = np.where(pos < 0, -np.inf, sim)
    cols, vals = top_k(sim, k)
    out_pos = np.take_along_axis(pos, cols, axis=1)
    out_pos[~np.isfinite(vals)] = -1
    return _pad(out_pos, vals, k)


def _pad(pos: np.ndarray, sim: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    if pos.shape[1] >= k:
        return pos[:, :k], sim[:, :k].astype(np.float32)
    n, have = pos.shape
    pad_pos = np.full((n, k - have), -1, np.int64)
    pad_sim = np.full((n, k - have), -np.inf, np.float32)
    return np.hstack([pos, pad_pos]), np.hstack([sim.astype(np.float32), pad_sim])


def recall_at_k(approx: np.ndarray, exact_sims: np.ndarray, approx_sims: np.ndarray, *, tol: float = 1e-5) -> float:
    """Mean fraction of the exact top-k that the approximate search returned.

    ``approx`` holds returned positions (-1 = none), ``approx_sims`` their similarities recomputed
    exactly, ``exact_sims`` the exact top-k similarities (best first). A returned item counts
    when its similarity reaches the exact k-th best (minus ``tol``), so ties and duplicates in
    the catalogue do not count as misses.
    """
    if approx.size == 0:
        return float("nan")
    finite = np.isfinite(exact_sims)
    wanted = finite.sum(axis=1)
    # The k-th best exact similarity; a filter that leaves fewer than k items lowers the bar
    # to the worst of those that exist.
    threshold = np.where(finite, exact_sims, np.inf).min(axis=1, keepdims=True)
    hits = ((approx >= 0) & (approx_sims >= threshold - tol)).sum(axis=1)
    valid = wanted > 0
    return float(np.mean(np.minimum(hits[valid], wanted[valid]) / wanted[valid])) if valid.any() else float("nan")


def validate_items(ids: np.ndarray, cats: list, vecs: np.ndarray) -> None:
    """Raise :class:`IndexBuildError` unless ``vecs`` are finite unit rows, one per unique id and category."""
    n = len(ids)
    if vecs.ndim != 2 or vecs.shape[0] != n or vecs.shape[1] < 1:
        raise IndexBuildError(f"vectors must have shape ({n}, dim) for {n} item ids; got {vecs.shape}")
    if len(cats) != n:
        raise IndexBuildError(f"{len(cats)} categories for {n} items")
    if not np.isfinite(vecs).all():
        raise IndexBuildError("vectors contain NaN or infinity")
    norms = np.linalg.norm(vecs, axis=1)
    bad = np.flatnonzero(np.abs(norms - 1) > NORM_TOLERANCE)
    if bad.size:
        raise IndexBuildError(f"{bad.size} vectors are not L2-normalised (e.g. item {ids[bad[0]]!r} has norm "
                              f"{norms[bad[0]]:.4f}); the embeddings contract requires unit vectors")
    uniq, counts = np.unique(ids.astype(str), return_counts=True)
    if (counts > 1).any():
        raise IndexBuildError(f"duplicate item ids, e.g. {uniq[counts > 1][:3].tolist()}")


def new_graph(vecs: np.ndarray, labels: np.ndarray, *, M: int, ef_construction: int, ef: int, seed: int,
              num_threads: int = 0, capacity: int = 0):
    """An hnswlib graph over ``vecs`` labelled ``labels`` (row positions), with room for ``capacity``."""
    import hnswlib

    idx = hnswlib.Index(space=SPACE, dim=vecs.shape[1])
    idx.init_index(max_elements=max(len(labels), capacity, 1), M=int(M), ef_construction=int(ef_construction),
                   random_seed=int(seed))
    if len(labels):
        idx.add_items(vecs, labels.astype(np.int64), num_threads=num_threads or -1)
    idx.set_ef(int(ef))
    return idx


class HnswIndex:
    """An HNSW index over catalogue items with per-category sub-indexes.

    Build with :meth:`build`, read with :meth:`load`; search with :meth:`search` (``Hit`` lists)
    or :meth:`search_positions` (arrays, for evaluation); :meth:`exact_search` is the
    brute-force reference. Thread-safe for concurrent searches once built.
    """

    def __init__(self, *, item_ids: np.ndarray, categories: list[str | None], vectors: np.ndarray, index,
                 sub_indexes: dict[int, object], params: dict, num_threads: int = 0,
                 manifest: IndexManifest | None = None, deleted: np.ndarray | None = None,
                 content_hashes: np.ndarray | None = None):
        self.item_ids = np.asarray(item_ids, dtype=object)
        self.vectors = vectors
        self.dim = int(vectors.shape[1])
        self._index = index
        self.params = dict(params)
        self.manifest = manifest
        # Tombstones: positions that stay (labels never move) but that no search path may return.
        self.deleted = np.zeros(len(self.item_ids), bool) if deleted is None else np.asarray(deleted, bool)
        self._live = None if not self.deleted.any() else np.flatnonzero(~self.deleted)
        self.content_hashes = None if content_hashes is None else np.asarray(content_hashes, dtype=object)
        # A category is known while it has live items, as it would be after a full rebuild.
        names = sorted({c for c, d in zip(categories, self.deleted) if c is not None and not d})
        self.category_names: list[str] = names
        self._code_of = {name: j for j, name in enumerate(names)}
        # -1 = no category (or a deleted row's vanished one): found by unfiltered searches only.
        self.category_codes = np.array([self._code_of.get(c, -1) if c is not None else -1 for c in categories],
                                       dtype=np.int32)
        live_codes = np.where(self.deleted, -1, self.category_codes)
        order = np.argsort(live_codes, kind="stable")
        bounds = np.searchsorted(live_codes[order], np.arange(len(names) + 1))
        self.category_members = {j: order[bounds[j]:bounds[j + 1]] for j in range(len(names))}
        self._sub = sub_indexes  # category code -> hnswlib index (large categories only)
        self._blocks: dict[int, np.ndarray] = {}  # small categories' vectors, contiguous for exact search
        self.num_threads = num_threads
        self.build_seconds = float(self.params.get("build_seconds", 0.0))
        self.uri = ""  # where it was loaded from

    # ---------------------------------------------------------------- build
    @classmethod
    def build(cls, item_ids: Sequence[str], categories: Sequence[str | None], vectors, *, M: int = 16,
              ef_construction: int = 200, ef: int = 64, exact_below: int = 1000, seed: int = 100,
              num_threads: int = 0, content_hashes: Sequence[str] | None = None) -> "HnswIndex":
        """Build from item ids, their categories (``None`` = none) and L2-normalised vectors.

        ``content_hashes`` (the embeddings' ``content_sha256``) are kept so a later
        :func:`artifacts.index_update.update_index` can tell unchanged items from changed ones.

        ``num_threads`` = 0 uses every core (hnswlib's default); ``exact_below``: categories with
        at most that many items get no sub-index and are searched exactly.
        """
        t0 = time.time()
        ids = np.asarray(list(item_ids), dtype=object)
        cats = [None if c is None else str(c) for c in categories]
        vecs = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
        n = len(ids)
        if n == 0:
            raise IndexBuildError("cannot build an index from zero items (the embeddings are empty)")
        validate_items(ids, cats, vecs)
        if content_hashes is not None and len(content_hashes) != n:
            raise IndexBuildError(f"{len(content_hashes)} content hashes for {n} items")
        for name, value in (("M", M), ("ef_construction", ef_construction), ("ef", ef)):
            if int(value) < 1:
                raise IndexBuildError(f"{name} must be positive, got {value}")
        dim = vecs.shape[1]

        def make(members: np.ndarray):
            return new_graph(vecs[members], members, M=M, ef_construction=ef_construction, ef=ef, seed=seed,
                             num_threads=num_threads)

        index = make(np.arange(n))
        self = cls(item_ids=ids, categories=cats, vectors=vecs, index=index, sub_indexes={},
                   params={}, num_threads=num_threads, content_hashes=content_hashes)
        for j, members in self.category_members.items():
            if len(members) > exact_below:
                self._sub[j] = make(members)
        self.build_seconds = time.time() - t0
        self.params = {"space": SPACE, "M": int(M), "ef_construction": int(ef_construction), "ef": int(ef),
                       "exact_below": int(exact_below), "seed": int(seed), "filter_strategy": "subindex",
                       "build_seconds": self.build_seconds}
        self.set_num_threads(num_threads)
        log.info("built HNSW index: %d items, dim %d, %d categories (%d sub-indexes) in %.1f s", n, dim,
                 len(self.category_names), len(self._sub), self.build_seconds)
        return self

    # ---------------------------------------------------------------- basics
    def __len__(self) -> int:
        """Live items (tombstones not counted)."""
        return len(self.item_ids) - int(self.deleted.sum()) if self._live is not None else len(self.item_ids)

    @property
    def n_positions(self) -> int:
        """Rows (labels) including tombstones: the size of ``vectors`` and of the id map."""
        return len(self.item_ids)

    @property
    def live_positions(self) -> np.ndarray:
        return np.arange(self.n_positions) if self._live is None else self._live

    @property
    def ef(self) -> int:
        return int(self.params["ef"])

    def set_ef(self, ef: int) -> None:
        """The search-time breadth (recall vs speed); hnswlib uses ``max(ef, k)``."""
        self.params["ef"] = int(ef)
        for idx in (self._index, *self._sub.values()):
            idx.set_ef(int(ef))

    def set_num_threads(self, num_threads: int) -> None:
        """Threads per search call (0 = every core). Serve replicas usually want 1."""
        self.num_threads = int(num_threads)
        for idx in (self._index, *self._sub.values()):
            idx.set_num_threads(self.num_threads or os.cpu_count() or 1)

    def category_counts(self) -> dict[str, int]:
        return {name: int(len(self.category_members[j])) for j, name in enumerate(self.category_names)}

    def categories_of(self, positions: np.ndarray) -> list[str | None]:
        return [self.category_names[c] if c >= 0 else None for c in self.category_codes[positions]]

    def _codes(self, category) -> list[int] | None:
        if category is None:
            return None
        names = [category] if isinstance(category, str) else list(category)
        unknown = [name for name in names if str(name) not in self._code_of]
        if unknown:
            raise UnknownCategoryError(f"unknown category {unknown[0]!r}; this index holds: "
                                       f"{', '.join(self.category_names) or '(none)'}")
        return sorted({self._code_of[str(name)] for name in names})

    def _hits(self, pos: np.ndarray, sim: np.ndarray) -> list[list[Hit]]:
        out = []
        for row_pos, row_sim in zip(pos, sim):
            keep = row_pos >= 0
            p, s = row_pos[keep], row_sim[keep]
            cats = self.categories_of(p)
            out.append([Hit(str(self.item_ids[i]), c, float(1.0 - v), float(v)) for i, c, v in zip(p, cats, s)])
        return out

    # ---------------------------------------------------------------- search
    def search(self, vectors, k: int = 10, category: str | Iterable[str] | None = None, *,
               strategy: str = "subindex") -> list[list[Hit]]:
        """The ``k`` nearest items of each query, best first, as :class:`Hit` lists.

        ``category``: ``None`` (everything), a category name, or a list of names (their union).
        Queries are L2-normalised here. Fewer than ``k`` hits come back only when the selection
        holds fewer than ``k`` items. ``strategy`` is for measurement; see the module comment.
        """
        pos, sim = self.search_positions(vectors, k, category, strategy=strategy)
        return self._hits(pos, sim)

    def exact_search(self, vectors, k: int = 10, category: str | Iterable[str] | None = None) -> list[list[Hit]]:
        """Brute-force search (numpy); same contract as :meth:`search`."""
        pos, sim = self.exact_search_positions(vectors, k, category)
        return self._hits(pos, sim)

    def search_positions(self, vectors, k: int = 10, category=None, *,
                         strategy: str = "subindex") -> tuple[np.ndarray, np.ndarray]:
        """``(positions, similarities)``, each ``(n_queries, k)``, best first; -1 / -inf pad."""
        q = _as_queries(vectors, self.dim)
        k = int(k)
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        codes = self._codes(category)
        if len(q) == 0:
            return np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
        if codes is None:
            return self._knn(self._index, q, min(k, len(self)), k)
        if not codes:  # an empty list of categories allows nothing
            return _pad(np.zeros((len(q), 0), np.int64), np.zeros((len(q), 0), np.float32), k)
        if strategy == "subindex":
            parts = []
            for j in codes:
                members = self.category_members[j]
                if j in self._sub:
                    parts.append(self._knn(self._sub[j], q, min(k, len(members)), k))
                else:
                    parts.append(self._exact(q, k, members, base=self._block(j)))
            return parts[0] if len(parts) == 1 else _merge(parts, k)
        allowed = np.zeros(self.n_positions, dtype=bool)
        for j in codes:
            allowed[self.category_members[j]] = True
        if strategy == "callback":
            return self._search_callback(q, k, allowed)
        if strategy == "overfetch":
            return self._search_overfetch(q, k, allowed)
        raise ValueError(f"unknown strategy {strategy!r}; valid: {', '.join(FILTER_STRATEGIES)}")

    def exact_search_positions(self, vectors, k: int = 10, category=None) -> tuple[np.ndarray, np.ndarray]:
        """Brute-force ``(positions, similarities)``; ties broken by position."""
        q = _as_queries(vectors, self.dim)
        codes = self._codes(category)
        members = None if codes is None else np.sort(np.concatenate(
            [self.category_members[j] for j in codes] + [np.zeros(0, np.int64)]))
        return self._exact(q, int(k), members)

    def _block(self, j: int) -> np.ndarray:
        # Copied once, not per request; only categories without a sub-index (small ones) get here.
        block = self._blocks.get(j)
        if block is None:
            block = self._blocks[j] = np.ascontiguousarray(self.vectors[self.category_members[j]])
        return block

    def _exact(self, q: np.ndarray, k: int, members: np.ndarray | None, *, base: np.ndarray | None = None,
               chunk_bytes: int = 64 << 20) -> tuple[np.ndarray, np.ndarray]:
        if base is None:
            base = self.vectors if members is None else self.vectors[members]
        # Every row, tombstones masked out: gathering the live rows would copy all the vectors.
        dead = self.deleted if members is None and self._live is not None else None
        rows = max(1, chunk_bytes // max(1, 4 * len(base)))
        pos_out, sim_out = [], []
        for start in range(0, len(q), rows):
            sims = q[start:start + rows] @ base.T
            if dead is not None:
                sims[:, dead] = -np.inf
            cols, vals = top_k(sims, min(k, len(self)) if dead is not None else k)
            pos_out.append(cols if members is None else members[cols])
            sim_out.append(vals)
        pos = np.concatenate(pos_out) if pos_out else np.zeros((0, 0), np.int64)
        sim = np.concatenate(sim_out) if sim_out else np.zeros((0, 0), np.float32)
        return _pad(pos, sim, k)

    def _knn(self, idx, q: np.ndarray, k_eff: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        try:
            labels, dists = idx.knn_query(q, k=k_eff, num_threads=self.num_threads or -1)
        except RuntimeError as exc:
            # hnswlib raises when its graph walk finds fewer than k items; exact search cannot.
            log.warning("hnswlib search failed (%s); answering these %d queries exactly", exc, len(q))
            members = np.sort(idx.get_ids_list()).astype(np.int64) if idx is not self._index else None
            if members is not None:
                members = members[~self.deleted[members]]
            return self._exact(q, k, members)
        return _pad(labels.astype(np.int64), (1.0 - dists).astype(np.float32), k)

    def _search_callback(self, q: np.ndarray, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        k_eff = min(k, int(allowed.sum()))
        if k_eff == 0:
            return _pad(np.zeros((len(q), 0), np.int64), np.zeros((len(q), 0), np.float32), k)
        allowed_list = allowed.tolist()  # list indexing is the cheapest Python-side check
        try:
            labels, dists = self._index.knn_query(q, k=k_eff, num_threads=self.num_threads or -1,
                                                  filter=allowed_list.__getitem__)
        except RuntimeError:
            return self._exact(q, k, np.flatnonzero(allowed))
        return _pad(labels.astype(np.int64), (1.0 - dists).astype(np.float32), k)

    def _search_overfetch(self, q: np.ndarray, k: int, allowed: np.ndarray,
                          factor: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
        n_allowed = int(allowed.sum())
        want = min(k, n_allowed)
        fraction = max(n_allowed / len(self), 1e-9)
        fetch = min(len(self), max(k, int(math.ceil(k * factor / fraction))))
        pos = np.full((len(q), k), -1, np.int64)
        sim = np.full((len(q), k), -np.inf, np.float32)
        todo = np.arange(len(q))
        while len(todo):
            labels, sims = self._knn(self._index, q[todo], fetch, fetch)
            keep = (labels >= 0) & allowed[np.maximum(labels, 0)]  # hnswlib never returns tombstones
            cols, vals = top_k(np.where(keep, sims, -np.inf), k)
            found = np.take_along_axis(labels, cols, axis=1)
            found[~np.isfinite(vals)] = -1
            pos[todo], sim[todo] = _pad(found, vals, k)
            # Queries far from the allowed items found too few of them: fetch twice as many.
            todo = todo[(pos[todo] >= 0).sum(axis=1) < want]
            if fetch >= len(self):
                break
            fetch = min(len(self), fetch * 2)
        return pos, sim

    # ---------------------------------------------------------------- recall
    def measure_recall(self, queries=None, *, k: int = 10, sample: int = 1000, seed: int = 0,
                       category=None, strategy: str = "subindex") -> float:
        """Recall@k of HNSW against exact search (see :func:`recall_at_k`).

        Queries default to ``sample`` catalogue vectors drawn with ``seed``; with
        ``category="own"`` each query is restricted to its own category (filtered recall).
        """
        rng = np.random.default_rng(seed)
        own = category == "own"
        if queries is None:
            live = self.live_positions
            pool = live[self.category_codes[live] >= 0] if own else live
            if len(pool) == 0:
                return float("nan")
            picks = rng.choice(pool, size=min(sample, len(pool)), replace=False)
            queries, codes = self.vectors[picks], self.category_codes[picks]
        else:
            queries = _as_queries(queries, self.dim)
            if own:
                raise ValueError("category='own' needs catalogue queries (queries=None)")
            codes = None
        if not own:
            approx, _ = self.search_positions(queries, k, category, strategy=strategy)
            exact_pos, exact_sim = self.exact_search_positions(queries, k, category)
        else:
            approx = np.full((len(queries), k), -1, np.int64)
            exact_sim = np.full((len(queries), k), -np.inf, np.float32)
            for j in np.unique(codes):
                rows = np.flatnonzero(codes == j)
                name = self.category_names[j]
                approx[rows] = self.search_positions(queries[rows], k, name, strategy=strategy)[0]
                exact_sim[rows] = self.exact_search_positions(queries[rows], k, name)[1]
        q = _as_queries(queries, self.dim)
        approx_sim = np.einsum("qd,qkd->qk", q, self.vectors[np.maximum(approx, 0)])
        return recall_at_k(approx, exact_sim, approx_sim)

    # ---------------------------------------------------------------- save / load
    def save(self, uri: str, *, index_id: str = "", model_id: str = "", source_embeddings: str = "",
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
                 "categories": {self.category_names[j]: f"{CATEGORY_DIR}/{j}.bin" for j in sorted(self._sub)}}
        counts = {"items": len(self), "positions": self.n_positions, "deleted": int(self.deleted.sum()),
                  "categories": self.category_counts(),
                  "uncategorised": int(((self.category_codes < 0) & ~self.deleted).sum())}
        manifest = IndexManifest(
            index_id=index_id, model_id=model_id, source_embeddings=source_embeddings,
            embeddings_run_id=embeddings_run_id, embedding_dim=self.dim, counts=counts,
            params={k: v for k, v in self.params.items() if k != "build_seconds"},
            recall_at_10=recall.get("recall_at_10"), recall=recall, build_seconds=round(self.build_seconds, 3),
            created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), files=files, config=dict(config or {}),
            catalogue_roots=list(catalogue_roots), update=dict(update or {"mode": "full"}))
        with tempfile.TemporaryDirectory(prefix="vitrine-index-") as tmp:
            local = Path(tmp) if storage.is_remote(uri) else Path(storage.resolve(uri)[1])
            local.mkdir(parents=True, exist_ok=True)
            (local / CATEGORY_DIR).mkdir(exist_ok=True)
            self._index.save_index(str(local / INDEX_FILE))
            for j, idx in self._sub.items():
                idx.save_index(str(local / CATEGORY_DIR / f"{j}.bin"))
            np.save(local / VECTORS_FILE, self.vectors)
            cats = self.categories_of(np.arange(self.n_positions))
            hashes = None if self.content_hashes is None else self.content_hashes.astype(str).tolist()
            pq.write_table(pa.table({"item_id": pa.array(self.item_ids.astype(str).tolist(), pa.string()),
                                     "category": pa.array(cats, pa.string()),
                                     "content_sha256": pa.array(hashes, pa.string()) if hashes is not None
                                     else pa.nulls(self.n_positions, pa.string()),
                                     "deleted": pa.array(self.deleted, pa.bool_())}), local / ITEMS_FILE)
            if storage.is_remote(uri):
                storage.upload_dir(local, uri)
        storage.write_text(storage.join(uri, MANIFEST), manifest.to_json())
        self.manifest = manifest
        return manifest

    @classmethod
    def load(cls, uri: str, *, expected_dim: int | None = None, num_threads: int = 0) -> "HnswIndex":
        """Load an index directory, or the ``LATEST`` one under an ``indexes/`` directory.

        Checks every file against the manifest (item count, dimension, categories) and, when
        given, the dimension a model produces. ``vectors.npy`` is memory-mapped, not read: the
        graphs already hold a copy of every vector, so a replica pages in only what exact search
        touches. A remote index's temporary copy is removed after loading; the mapping keeps the
        unlinked file readable (POSIX) until the index is dropped.
        """
        import hnswlib
        import pyarrow.parquet as pq

        try:
            uri = publish.resolve(uri, manifest_name=MANIFEST)
        except publish.NotPublishedError as exc:
            raise IndexLoadError(f"no index at {uri}: {exc}") from None
        manifest = IndexManifest.from_json(storage.read_text(storage.join(uri, MANIFEST)))
        dim, n = int(manifest.embedding_dim), int(manifest.counts.get("items", -1))
        rows = int(manifest.counts.get("positions", n))  # format 1: no tombstones, rows = items
        if expected_dim is not None and dim != int(expected_dim):
            raise IndexLoadError(f"index {uri} holds {dim}-dimensional vectors but the model produces {expected_dim}")
        with storage.local_copy(uri) as local:
            missing = [f for f in (manifest.files.get("index"), manifest.files.get("items"),
                                   manifest.files.get("vectors"), *manifest.files.get("categories", {}).values())
                       if not f or not (local / f).exists()]
            if missing:
                raise IndexLoadError(f"index {uri} is incomplete: missing {', '.join(map(str, missing))}")
            items = pq.read_table(local / manifest.files["items"])
            try:
                vectors = np.load(local / manifest.files["vectors"], mmap_mode="r", allow_pickle=False)
            except ValueError as exc:
                raise IndexLoadError(f"{uri}: cannot read the vectors file ({exc})") from None
            if vectors.dtype != np.float32 or vectors.ndim != 2:
                raise IndexLoadError(f"{uri}: vectors must be a 2-D float32 array, got {vectors.dtype} {vectors.shape}")
            if vectors.shape != (rows, dim):
                raise IndexLoadError(f"{uri}: manifest says {rows} items of dimension {dim}, vectors file holds "
                                     f"{vectors.shape[0]} x {vectors.shape[1]}")
            if items.num_rows != rows:
                raise IndexLoadError(f"{uri}: manifest says {rows} items, id map holds {items.num_rows}")
            names = items.column_names
            deleted = (items.column("deleted").to_numpy(zero_copy_only=False).astype(bool)
                       if "deleted" in names else np.zeros(rows, bool))
            hashes = items.column("content_sha256").to_pylist() if "content_sha256" in names else None
            if hashes is not None and any(h is None for h in hashes):
                hashes = None  # saved without hashes: an update cannot trust them

            def read(path: Path, what: str, members: np.ndarray | None = None):
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

            index = read(local / manifest.files["index"], "the index")
            ids = np.asarray(items.column("item_id").to_pylist(), dtype=object)
            cats = items.column("category").to_pylist()
            self = cls(item_ids=ids, categories=cats, vectors=vectors, index=index, sub_indexes={},
                       params=dict(manifest.params), num_threads=num_threads, manifest=manifest, deleted=deleted,
                       content_hashes=hashes)
            if len(self) != n or int(deleted.sum()) != int(manifest.counts.get("deleted", 0)):
                raise IndexLoadError(f"{uri}: manifest says {n} items ({manifest.counts.get('deleted', 0)} deleted), "
                                     f"id map holds {len(self)} live and {int(deleted.sum())} deleted")
            if self.category_counts() != {k: int(v) for k, v in manifest.counts.get("categories", {}).items()}:
                raise IndexLoadError(f"{uri}: per-category counts in the id map differ from the manifest")
            for name, rel in manifest.files.get("categories", {}).items():
                if name not in self._code_of:
                    raise IndexLoadError(f"{uri}: sub-index of {name!r}, a category with no live items")
                j = self._code_of[name]
                self._sub[j] = read(local / rel, f"sub-index of {name!r}", self.category_members[j])
        self.build_seconds = float(manifest.build_seconds)
        self.uri = uri
        self.set_num_threads(num_threads)
        return self
