"""Search deployment: an HNSW index loaded once per replica; top-k neighbours of an embedding,
optionally within one category. Each request names the index version it was started with.

An index split into shards (:mod:`artifacts.index_shards`) is served by ``slots`` deployments of
this class (``Search``, ``Search-1``, ...; :func:`serve.args.search_slot_name`), each loading only the shards
``s`` with ``s % slots == slot``; the ingress asks the slots a query needs and merges them."""

from __future__ import annotations

import logging

from ray import serve

from artifacts import publish
from artifacts.index_manifest import indexes_root
from artifacts.logs import setup_logging

from .searcher import CatalogueSearcher
from .version_cache import VersionCache

log = logging.getLogger("vitrine.serve")


@serve.deployment(name="Search")
class Search:
    def __init__(self, storage_root: str, keep: int = 2, ef: int = 0, threads: int = 1, slot: int = 0,
                 slots: int = 1, memory_budget_bytes: int = 0):
        setup_logging()
        self.indexes_uri = indexes_root(storage_root)
        self.ef, self.threads = ef, threads
        self.slot, self.slots, self.memory_budget_bytes = slot, slots, memory_budget_bytes
        self.indexes: VersionCache = VersionCache(self._load, keep=keep, what=f"index (search slot {slot})")

    def _load(self, index_id: str) -> CatalogueSearcher:
        return CatalogueSearcher(publish.artifact_uri(self.indexes_uri, index_id), ef=self.ef, threads=self.threads,
                                 slot=self.slot, slots=self.slots, memory_budget_bytes=self.memory_budget_bytes)

    async def warm(self, index_id: str) -> dict:
        return (await self.indexes.get(index_id)).info()

    async def search(self, embedding, index_id: str, k: int, category: str | None) -> list[dict]:
        return (await self.indexes.get(index_id)).search(embedding, k, category)

    async def search_many(self, embeddings, index_id: str, ks: list[int], categories: list) -> list[list[dict]]:
        """:meth:`search` of each row of ``embeddings``: the queries of several requests in one call."""
        return (await self.indexes.get(index_id)).search_many(embeddings, ks, categories)

    async def search_scored(self, embedding, index_id: str, k: int, category: str | None) -> list:
        return (await self.indexes.get(index_id)).search_scored(embedding, k, category)

    async def image_uri(self, index_id: str, item_id: str) -> str | None:
        return (await self.indexes.get(index_id)).image_uri(item_id)

    async def image_location(self, index_id: str, item_id: str) -> dict | None:
        return (await self.indexes.get(index_id)).image_location(item_id)

    async def item_vector(self, index_id: str, item_id: str) -> dict | None:
        return (await self.indexes.get(index_id)).item_vector(item_id)

    async def samples(self, index_id: str, per_category: int) -> list[dict]:
        return (await self.indexes.get(index_id)).samples(per_category)
