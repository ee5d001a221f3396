"""Sharded indexes: an index larger than one Search replica's memory, split into shards that
separate replicas serve and whose answers are merged.

A sharded index directory (local or ``s3://``)::

    shards/<s>/             shard s: a complete :class:`~artifacts.hnsw_index.HnswIndex` directory
                            (its own manifest and checks)
    index_manifest.json     written last: an ``IndexManifest`` of the whole index (so publishing,
                            ``LATEST`` and ``serve/versions`` read it unchanged) plus ``layout:
                            "sharded"`` and ``shards``: the plan and each shard's items and bytes

Items go to shards by category first, whole categories packed into shards and a category larger
than the budget spread over shards of its own by a stable hash of ``item_id``; shard ``s`` is
served by search slot ``s % slots``: the plan is :mod:`artifacts.shard_plan`.

All shards hold unit vectors of one model, so their similarities are comparable and the top
``k`` of the whole index is the top ``k`` of the shards' top ``k`` lists (:func:`merge_top_k`).
A plain index reads as one shard (:meth:`ShardedIndex.load`), so older indexes keep working.
"""

from __future__ import annotations

import heapq
import json
import logging
import time
from dataclasses import asdict
from typing import Callable, Iterable, Mapping, Sequence, TypeVar

import numpy as np

from . import publish, storage
from .hnsw_index import Hit, HnswIndex
from .index_manifest import MANIFEST, IndexBuildError, IndexLoadError, IndexManifest, UnknownCategoryError
from .shard_plan import NO_CATEGORY, ShardPlan, estimate_item_bytes, plan_shards, shards_of_slot

log = logging.getLogger("vitrine.index")

LAYOUT = "sharded"
SHARD_DIR = "shards"
# Memory a replica spends per item beyond the shard's files: the id map as Python strings and the
# category codes (about 80 bytes an item) and the searcher's item -> image path map (about 140),
# measured with tracemalloc over 60,000 items; rounded up.
ITEM_OVERHEAD_BYTES = 256

T = TypeVar("T")


class ShardBudgetError(IndexLoadError):
    """The shards a search replica would hold exceed its memory budget."""


def merge_top_k(parts: Sequence[Sequence[T]], k: int, similarity: Callable[[T], float]) -> list[T]:
    """The ``k`` best of several best-first lists by ``similarity`` (higher first); equal
    similarities keep the order of ``parts``, then of each list."""
    merged = heapq.merge(*[[(-similarity(x), p, j, x) for j, x in enumerate(part)] for p, part in enumerate(parts)])
    return [x for *_, x in (next(merged) for _ in range(min(k, sum(len(p) for p in parts))))]


def merge_hits(parts: Sequence[Sequence[Hit]], k: int) -> list[Hit]:
    return merge_top_k(parts, k, lambda h: h.similarity)


def _dir_bytes(uri: str) -> int:
    import pyarrow.fs as pafs

    fs, path = storage.resolve(uri)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    return int(sum(i.size or 0 for i in infos if i.type == pafs.FileType.File))


def read_layout(manifest_json: Mapping) -> tuple[ShardPlan, list[dict]] | None:
    """``(plan, shards)`` of a sharded index's manifest (as parsed JSON); ``None`` for a plain index."""
    if manifest_json.get("layout") != LAYOUT:
        return None
    shards = manifest_json.get("shards") or {}
    if "plan" not in shards or "list" not in shards:
        raise IndexLoadError("sharded index manifest lacks shards.plan or shards.list")
    plan = ShardPlan.from_dict(shards["plan"])
    if len(shards["list"]) != plan.shards:
        raise IndexLoadError(f"shard plan names {plan.shards} shards, the manifest lists {len(shards['list'])}")
    return plan, list(shards["list"])


def _live_positions(shard: HnswIndex) -> np.ndarray:
    deleted = getattr(shard, "deleted", None)  # rows an in-place update tombstoned
    return np.arange(len(shard.item_ids)) if deleted is None else np.flatnonzero(~np.asarray(deleted, bool))


class ShardedIndex:
    """Some or all shards of an index, searched as one: each query goes to the held shards that
    hold its category and their hits are merged. Same search contract as ``HnswIndex.search``."""

    def __init__(self, shards: Mapping[int, HnswIndex], plan: ShardPlan, *, manifest: IndexManifest | None = None,
                 shard_info: Sequence[dict] = ()):
        self.shards = dict(sorted(shards.items()))
        self.plan = plan
        self.manifest = manifest
        self.shard_info = list(shard_info)
        first = next(iter(self.shards.values()), None)
        self.dim = int(manifest.embedding_dim if manifest is not None else first.dim)
        self.params = dict(first.params) if first is not None else {}
        self.build_seconds = 0.0
        self.uri = ""
        names = set().union(*(set(plan.categories_of(s)) for s in range(plan.shards)))
        self.category_names = sorted(names - {NO_CATEGORY})

    # ---------------------------------------------------------------- build
    @classmethod
    def build(cls, item_ids: Sequence[str], categories: Sequence[str | None], vectors, *,
              max_items_per_shard: int = 0, max_bytes_per_shard: int = 0, **hnsw) -> "ShardedIndex":
        """Plan shards of at most ``max_items_per_shard`` items or about ``max_bytes_per_shard``
        bytes of files (:func:`estimate_item_bytes`; the tighter wins; 0 = no limit) and build
        one ``HnswIndex`` per shard with the ``hnsw`` parameters of ``HnswIndex.build``."""
        t0 = time.time()
        ids = [str(i) for i in item_ids]
        cats = [None if c is None else str(c) for c in categories]
        vecs = np.asarray(vectors, dtype=np.float32)
        if len(ids) != len(cats) or vecs.ndim != 2 or len(vecs) != len(ids):
            raise IndexBuildError(f"{len(ids)} item ids, {len(cats)} categories and vectors of shape {vecs.shape}")
        limits = [int(max_items_per_shard)] if max_items_per_shard else []
        if max_bytes_per_shard:
            per_item = estimate_item_bytes(vecs.shape[1], int(hnsw.get("M", 16)))
            limits.append(max(1, int(max_bytes_per_shard) // per_item))
        plan = plan_shards(ids, cats, min(limits) if limits else 0)
        assigned = plan.assign(ids, cats)
        shards = {}
        for s in range(plan.shards):
            rows = np.flatnonzero(assigned == s)
            shards[s] = HnswIndex.build([ids[r] for r in rows], [cats[r] for r in rows], vecs[rows], **hnsw)
        self = cls(shards, plan)
        self.build_seconds = time.time() - t0
        log.info("built a sharded index: %d items in %d shards (%s) in %.1f s", len(ids), plan.shards,
                 ", ".join(str(len(shards[s])) for s in range(plan.shards)), self.build_seconds)
        return self

    def save(self, uri: str, *, index_id: str = "", model_id: str = "", source_embeddings: str = "",
             embeddings_run_id: str = "", recall: dict | None = None, config: dict | None = None,
             catalogue_roots=(), **fields) -> IndexManifest:
        """Write every shard to ``shards/<s>/`` (each with its own manifest), then the index's
        manifest: nothing reads the index before all its shards are complete. ``fields``: more
        manifest keys (as the build job records, e.g. ``update``), written as given."""
        if len(self.shards) != self.plan.shards:
            raise IndexBuildError(f"saving needs every shard; this holds {sorted(self.shards)} of {self.plan.shards}")
        info = []
        for s, shard in self.shards.items():
            rel = f"{SHARD_DIR}/{s:03d}"
            shard_uri = storage.join(uri, rel)
            shard.save(shard_uri, index_id=index_id, model_id=model_id, source_embeddings=source_embeddings,
                       embeddings_run_id=embeddings_run_id, config={**(config or {}), "shard": s},
                       catalogue_roots=catalogue_roots)
            info.append({"shard": s, "dir": rel, "items": len(shard), "bytes": _dir_bytes(shard_uri),
                         "categories": shard.category_counts()})
        recall = dict(recall or {})
        params = {k: v for k, v in self.params.items() if k != "build_seconds"}
        manifest = IndexManifest(
            index_id=index_id, model_id=model_id, source_embeddings=source_embeddings,
            embeddings_run_id=embeddings_run_id, embedding_dim=self.dim,
            counts={"items": len(self), "categories": self.category_counts(),
                    "uncategorised": int(sum(int((sh.category_codes < 0).sum()) for sh in self.shards.values()))},
            params=params, recall_at_10=recall.get("recall_at_10"), recall=recall,
            build_seconds=round(self.build_seconds, 3), created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            files={"shards": {str(x["shard"]): x["dir"] for x in info}}, config=dict(config or {}),
            catalogue_roots=list(catalogue_roots))
        document = {**asdict(manifest), **fields, "layout": LAYOUT, "shards": {"plan": self.plan.to_dict(), "list": info}}
        storage.write_text(storage.join(uri, MANIFEST), json.dumps(document, indent=2, sort_keys=True) + "\n")
        self.manifest, self.shard_info = manifest, info
        return manifest

    # ---------------------------------------------------------------- load
    @classmethod
    def load(cls, uri: str, *, slot: int = 0, slots: int = 1, num_threads: int = 0,
             memory_budget_bytes: int = 0) -> "ShardedIndex":
        """The shards of ``uri`` (an index directory or an ``indexes/`` directory with ``LATEST``)
        that search slot ``slot`` of ``slots`` serves; a plain index is shard 0.

        Refuses (:class:`ShardBudgetError`) before reading them when their files plus
        ``ITEM_OVERHEAD_BYTES`` per item exceed ``memory_budget_bytes`` (0 = no budget).
        """
        try:
            uri = publish.resolve(uri, manifest_name=MANIFEST)
        except publish.NotPublishedError as exc:
            raise IndexLoadError(f"no index at {uri}: {exc}") from None
        text = storage.read_text(storage.join(uri, MANIFEST))
        try:
            document = json.loads(text)
        except ValueError as exc:
            raise IndexLoadError(f"{uri}: unreadable index manifest ({exc})") from None
        manifest = IndexManifest.from_json(text)
        layout = read_layout(document)
        mine = shards_of_slot(layout[0].shards if layout else 1, slot, slots)
        if layout is None:
            plan = ShardPlan.single(list(manifest.counts.get("categories", {})) + [None])
            info = [{"shard": 0, "dir": "", "items": int(manifest.counts.get("items", 0)),
                     "bytes": _dir_bytes(uri) if mine else 0}]
        else:
            plan, info = layout
        need = sum(int(info[s]["bytes"]) + ITEM_OVERHEAD_BYTES * int(info[s]["items"]) for s in mine)
        if memory_budget_bytes and need > memory_budget_bytes:
            raise ShardBudgetError(
                f"index {manifest.index_id}: search slot {slot} of {slots} would hold shard(s) "
                f"{', '.join(map(str, mine))}, about {need / 2**20:.1f} MiB, over its memory budget of "
                f"{memory_budget_bytes / 2**20:.1f} MiB (search_memory_budget_bytes); serve it with more "
                f"search_shards or rebuild it with a smaller shard_max_bytes")
        shards = {}
        for s in mine:
            shard_uri = storage.join(uri, info[s]["dir"]) if info[s]["dir"] else uri
            # A search slot never updates an index: the items' content hashes stay unread.
            shard = HnswIndex.load(shard_uri, num_threads=num_threads, with_hashes=False)
            if shard.dim != int(manifest.embedding_dim) or len(shard) != int(info[s]["items"]):
                raise IndexLoadError(f"{shard_uri}: shard {s} holds {len(shard)} items of dimension {shard.dim}; "
                                     f"the index manifest says {info[s]['items']} of {manifest.embedding_dim}")
            shards[s] = shard
        self = cls(shards, plan, manifest=manifest, shard_info=info)
        self.params = dict(manifest.params)
        self.build_seconds = float(manifest.build_seconds)
        self.uri = uri
        return self

    # ---------------------------------------------------------------- basics
    def __len__(self) -> int:
        return sum(len(s) for s in self.shards.values())

    @property
    def ef(self) -> int:
        return int(self.params.get("ef", 64))

    def set_ef(self, ef: int) -> None:
        self.params["ef"] = int(ef)
        for shard in self.shards.values():
            shard.set_ef(ef)

    def category_counts(self) -> dict[str, int]:
        """Items per category in the held shards."""
        out: dict[str, int] = {}
        for shard in self.shards.values():
            for name, n in shard.category_counts().items():
                out[name] = out.get(name, 0) + n
        return dict(sorted(out.items()))

    def members(self, category: str) -> list[str]:
        """Item ids of ``category`` in the held shards, shard by shard."""
        out: list[str] = []
        for shard in self.shards.values():
            if category in shard.category_names:
                j = shard.category_names.index(category)
                out.extend(str(i) for i in shard.item_ids[shard.category_members[j]])
        return out

    @property
    def item_ids(self) -> np.ndarray:
        """Item ids of the held shards, shard by shard (the row order of :attr:`vectors`)."""
        parts = [shard.item_ids for shard in self.shards.values()]
        return parts[0] if len(parts) == 1 else np.concatenate(parts + [np.zeros(0, object)])

    @property
    def vectors(self) -> np.ndarray:
        """The held shards' vectors, shard by shard (a copy when there are several)."""
        parts = [shard.vectors for shard in self.shards.values()]
        return parts[0] if len(parts) == 1 else np.concatenate(parts + [np.zeros((0, self.dim), np.float32)])

    # ---------------------------------------------------------------- search
    def _targets(self, category) -> list[tuple[HnswIndex, object]]:
        """``(shard, the category argument for it)`` of every held shard a query must ask."""
        if category is None:
            return [(shard, None) for shard in self.shards.values()]
        names = [category] if isinstance(category, str) else [str(c) for c in category]
        unknown = [n for n in names if n not in self.category_names]
        if unknown:
            raise UnknownCategoryError(f"unknown category {unknown[0]!r}; this index holds: "
                                       f"{', '.join(self.category_names) or '(none)'}")
        out = []
        for s in self.plan.shards_for(names):
            shard = self.shards.get(s)
            if shard is not None:
                held = [n for n in names if n in shard.category_names]
                out.append((shard, held[0] if isinstance(category, str) else held))
        return out

    def search(self, vectors, k: int = 10, category: str | Iterable[str] | None = None, **kw) -> list[list[Hit]]:
        """The ``k`` nearest items in the held shards, best first (see ``HnswIndex.search``)."""
        return self._merged(lambda shard, cat: shard.search(vectors, k, cat, **kw), vectors, k, category)

    def exact_search(self, vectors, k: int = 10, category: str | Iterable[str] | None = None) -> list[list[Hit]]:
        return self._merged(lambda shard, cat: shard.exact_search(vectors, k, cat), vectors, k, category)

    def _merged(self, one, vectors, k: int, category) -> list[list[Hit]]:
        targets = self._targets(category)
        queries = 1 if np.ndim(vectors) == 1 else len(vectors)
        answers = [one(shard, cat) for shard, cat in targets]
        return [merge_hits([a[q] for a in answers], k) for q in range(queries)]

    def measure_recall(self, queries=None, *, k: int = 10, sample: int = 1000, seed: int = 0,
                       category=None) -> float:
        """Recall@k of the merged HNSW search against merged exact search, on ``sample``
        catalogue vectors (``category="own"``: each within its own category)."""
        from .vector_search import recall_at_k

        if queries is not None:
            raise ValueError("ShardedIndex.measure_recall draws catalogue queries itself")
        rows = [(shard.vectors[p], shard.categories_of(np.array([p]))[0]) for shard in self.shards.values()
                for p in _live_positions(shard)]
        if category == "own":
            rows = [r for r in rows if r[1] is not None]
        if not rows:
            return float("nan")
        picks = np.random.default_rng(seed).choice(len(rows), size=min(sample, len(rows)), replace=False)
        groups: dict = {}
        for i in picks:
            groups.setdefault(rows[i][1] if category == "own" else None, []).append(rows[i][0])
        approx, exact = [], []
        for name, vectors in groups.items():
            approx += self.search(np.stack(vectors), k, name)
            exact += self.exact_search(np.stack(vectors), k, name)

        def table(hits: list[list[Hit]]) -> np.ndarray:
            return np.array([[h.similarity for h in r] + [-np.inf] * (k - len(r)) for r in hits], np.float32)

        approx_sims = table(approx)
        return recall_at_k(np.where(np.isfinite(approx_sims), 0, -1), table(exact), approx_sims)
