"""The visual-search index: HNSW (hnswlib, inner product) over L2-normalised embeddings.

One plain class, :class:`HnswIndex`, used by the index build job and by the Serve search
replicas: build it from ``(item_ids, categories, vectors)``, search it (optionally within one or
several categories), compare it with exact search, save it and load it back. An index lives in
a directory (local or ``s3://``)::

    index.bin               hnswlib index over every item; labels are row positions
    categories/<j>.bin      one hnswlib sub-index per large category (why: benchmarks/filter_strategies.py)
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

import logging
import os
import time
from typing import Iterable, NamedTuple, Sequence

import numpy as np

from . import index_files
from .index_manifest import SPACE, IndexBuildError, IndexManifest, UnknownCategoryError
from .vector_search import as_queries, merge, pad, recall_at_k, top_k

log = logging.getLogger("vitrine.index")

NORM_TOLERANCE = 1e-3



class Hit(NamedTuple):
    item_id: str
    category: str | None
    distance: float  # 1 - similarity (hnswlib's "ip" distance)
    similarity: float  # inner product of unit vectors = cosine similarity



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
        self.graph = index  # the global hnswlib graph (index_files and index_update read and write it)
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
        self.sub_graphs = sub_indexes  # category code -> its own hnswlib graph (large categories only)
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
                self.sub_graphs[j] = make(members)
        self.build_seconds = time.time() - t0
        self.params = {"space": SPACE, "M": int(M), "ef_construction": int(ef_construction), "ef": int(ef),
                       "exact_below": int(exact_below), "seed": int(seed), "filter_strategy": "subindex",
                       "build_seconds": self.build_seconds}
        self.set_num_threads(num_threads)
        log.info("built HNSW index: %d items, dim %d, %d categories (%d sub-indexes) in %.1f s", n, dim,
                 len(self.category_names), len(self.sub_graphs), self.build_seconds)
        return self

    # ---------------------------------------------------------------- basics
    def __len__(self) -> int:
        """Live items (tombstones not counted)."""
        # Every search asks; counting the tombstones here cost 0.3-0.6 ms a query at 1M rows.
        return len(self.item_ids) if self._live is None else len(self._live)

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
        for idx in (self.graph, *self.sub_graphs.values()):
            idx.set_ef(int(ef))

    def set_num_threads(self, num_threads: int) -> None:
        """Threads per search call (0 = every core). Serve replicas usually want 1."""
        self.num_threads = int(num_threads)
        for idx in (self.graph, *self.sub_graphs.values()):
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
    def search(self, vectors, k: int = 10, category: str | Iterable[str] | None = None) -> list[list[Hit]]:
        """The ``k`` nearest items of each query, best first, as :class:`Hit` lists.

        ``category``: ``None`` (everything), a category name, or a list of names (their union).
        Queries are L2-normalised here. Fewer than ``k`` hits come back only when the selection
        holds fewer than ``k`` items.
        """
        pos, sim = self.search_positions(vectors, k, category)
        return self._hits(pos, sim)

    def exact_search(self, vectors, k: int = 10, category: str | Iterable[str] | None = None) -> list[list[Hit]]:
        """Brute-force search (numpy); same contract as :meth:`search`."""
        pos, sim = self.exact_search_positions(vectors, k, category)
        return self._hits(pos, sim)

    def search_positions(self, vectors, k: int = 10, category=None) -> tuple[np.ndarray, np.ndarray]:
        """``(positions, similarities)``, each ``(n_queries, k)``, best first; -1 / -inf pad."""
        q = as_queries(vectors, self.dim)
        k = int(k)
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        codes = self._codes(category)
        if len(q) == 0:
            return np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
        if codes is None:
            return self._knn(self.graph, q, min(k, len(self)), k)
        if not codes:  # an empty list of categories allows nothing
            return pad(np.zeros((len(q), 0), np.int64), np.zeros((len(q), 0), np.float32), k)
        # Filtered search walks each category's own graph (benchmarks/filter_strategies.py measures
        # why: a filter callback or over-fetching on the global graph is slower and loses recall far
        # from the category); small categories are searched exactly.
        parts = []
        for j in codes:
            members = self.category_members[j]
            if j in self.sub_graphs:
                parts.append(self._knn(self.sub_graphs[j], q, min(k, len(members)), k))
            else:
                parts.append(self._exact(q, k, members, base=self._block(j)))
        return parts[0] if len(parts) == 1 else merge(parts, k)

    def exact_search_positions(self, vectors, k: int = 10, category=None) -> tuple[np.ndarray, np.ndarray]:
        """Brute-force ``(positions, similarities)``; ties broken by position."""
        q = as_queries(vectors, self.dim)
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
        return pad(pos, sim, k)

    def _knn(self, idx, q: np.ndarray, k_eff: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        try:
            labels, dists = idx.knn_query(q, k=k_eff, num_threads=self.num_threads or -1)
        except RuntimeError as exc:
            # hnswlib raises when its graph walk finds fewer than k items; exact search cannot.
            log.warning("hnswlib search failed (%s); answering these %d queries exactly", exc, len(q))
            members = np.sort(idx.get_ids_list()).astype(np.int64) if idx is not self.graph else None
            if members is not None:
                members = members[~self.deleted[members]]
            return self._exact(q, k, members)
        return pad(labels.astype(np.int64), (1.0 - dists).astype(np.float32), k)

    # ---------------------------------------------------------------- recall
    def measure_recall(self, queries=None, *, k: int = 10, sample: int = 1000, seed: int = 0,
                       category=None) -> float:
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
            queries = as_queries(queries, self.dim)
            if own:
                raise ValueError("category='own' needs catalogue queries (queries=None)")
            codes = None
        if not own:
            approx, _ = self.search_positions(queries, k, category)
            exact_pos, exact_sim = self.exact_search_positions(queries, k, category)
        else:
            approx = np.full((len(queries), k), -1, np.int64)
            exact_sim = np.full((len(queries), k), -np.inf, np.float32)
            for j in np.unique(codes):
                rows = np.flatnonzero(codes == j)
                name = self.category_names[j]
                approx[rows] = self.search_positions(queries[rows], k, name)[0]
                exact_sim[rows] = self.exact_search_positions(queries[rows], k, name)[1]
        q = as_queries(queries, self.dim)
        approx_sim = np.einsum("qd,qkd->qk", q, self.vectors[np.maximum(approx, 0)])
        return recall_at_k(approx, exact_sim, approx_sim)

    # ---------------------------------------------------------------- save / load
    def save(self, uri: str, **provenance) -> IndexManifest:
        """Write the index to a directory (local or ``s3://``), the manifest last; see
        :func:`artifacts.index_files.save` for the provenance keywords."""
        return index_files.save(self, uri, **provenance)

    @classmethod
    def load(cls, uri: str, *, expected_dim: int | None = None, num_threads: int = 0,
             with_hashes: bool = True) -> "HnswIndex":
        """Load an index directory, or the ``LATEST`` one under ``indexes/``, checked against its
        manifest (:func:`artifacts.index_files.load`)."""
        return index_files.load(cls, uri, expected_dim=expected_dim, num_threads=num_threads, with_hashes=with_hashes)
