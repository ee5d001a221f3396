"""Search deployment: an HNSW index loaded once per replica; top-k neighbours of an embedding,
optionally within one category. Each request names the index version it was started with."""

from __future__ import annotations

import logging

from ray import serve

from artifacts import publish, storage
from artifacts.logs import setup_logging

from .searcher import CatalogueSearcher
from .version_cache import VersionCache

log = logging.getLogger("vitrine.serve")


@serve.deployment(name="Search")
class Search:
    def __init__(self, storage_root: str, keep: int = 2, ef: int = 0, threads: int = 1):
        setup_logging()
        self.indexes_uri = storage.join(storage_root, "indexes")
        self.ef, self.threads = ef, threads
        self.indexes: VersionCache = VersionCache(self._load, keep=keep, what="index")

    def _load(self, index_id: str) -> CatalogueSearcher:
        return CatalogueSearcher(publish.artifact_uri(self.indexes_uri, index_id), ef=self.ef, threads=self.threads)

    async def warm(self, index_id: str) -> dict:
        return (await self.indexes.get(index_id)).info()

    async def search(self, embedding, index_id: str, k: int, category: str | None) -> list[dict]:
        return (await self.indexes.get(index_id)).search(embedding, k, category)

    async def image_uri(self, index_id: str, item_id: str) -> str | None:
        return (await self.indexes.get(index_id)).image_uri(item_id)

    async def image_location(self, index_id: str, item_id: str) -> dict | None:
        return (await self.indexes.get(index_id)).image_location(item_id)

    async def samples(self, index_id: str, per_category: int) -> list[dict]:
        return (await self.indexes.get(index_id)).samples(per_category)
