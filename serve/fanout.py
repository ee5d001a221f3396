"""The ingress's calls to the deployments behind it: each retried on a live replica when the one
it reached died under it, and a search spread over the Search slots that hold a sharded index's
shards (``search_shards``; :mod:`artifacts.index_shards`), their answers merged."""

from __future__ import annotations

import asyncio
import logging

from artifacts.index_shards import merge_top_k
from artifacts.shard_plan import slot_of

from . import versions
from .errors import ApiError

log = logging.getLogger("vitrine.serve")

# Classify and search are idempotent: a call whose replica died under it (node lost, process
# killed) is sent again, and the router picks a live replica.
REPLICA_RETRIES = 2


async def call(method, *args):
    """``await handle.method.remote(*args)``, again on a live replica if the first one died."""
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

    for attempt in range(REPLICA_RETRIES + 1):
        try:
            return await method.remote(*args)
        except (ActorDiedError, ActorUnavailableError, RayActorError) as exc:
            if attempt == REPLICA_RETRIES:
                raise ApiError(503, f"no live replica answered ({type(exc).__name__}); try again") from None
            log.warning("replica lost during a call (%s); retrying on another", type(exc).__name__)
            await asyncio.sleep(0.05 * (attempt + 1))


class SearchSlots:
    """Handles of the Search deployments (slot ``s`` holds shards ``s, s + slots, ...``)."""

    def __init__(self, handles):
        self.handles = list(handles) if isinstance(handles, (list, tuple)) else [handles]

    def _slots(self, v: versions.ServingVersion, category: str | None) -> list[int]:
        return sorted({slot_of(s, len(self.handles)) for s in v.shards_for(category)})

    def holding(self, v: versions.ServingVersion, category: str | None = None) -> list:
        """The slots holding shards of ``category`` (``None``: every shard)."""
        return [self.handles[n] for n in self._slots(v, category)]

    async def search(self, v: versions.ServingVersion, embedding, k: int, category: str | None) -> list[dict]:
        slots = self.holding(v, category)
        if len(slots) == 1:
            return await call(slots[0].search, embedding, v.index_id, k, category)
        parts = await asyncio.gather(*(call(h.search_scored, embedding, v.index_id, k, category) for h in slots))
        return [hit for _, hit in merge_top_k(parts, k, lambda scored: scored[0])]

    async def search_many(self, v: versions.ServingVersion, embeddings, ks: list[int],
                          categories: list[str | None]) -> list[list[dict]]:
        """:meth:`search` of each row of ``embeddings`` (with its own k and category), as one call
        per slot when each query needs one slot (a plain index: one call in all)."""
        where = [self._slots(v, c) for c in categories]
        if any(len(w) != 1 for w in where):  # a query spread over slots: merged one by one
            return list(await asyncio.gather(*(self.search(v, e, k, c) for e, k, c in zip(embeddings, ks, categories))))
        by_slot: dict[int, list[int]] = {}
        for i, w in enumerate(where):
            by_slot.setdefault(w[0], []).append(i)
        parts = await asyncio.gather(*(call(self.handles[s].search_many, embeddings[rows], v.index_id,
                                            [ks[i] for i in rows], [categories[i] for i in rows])
                                       for s, rows in by_slot.items()))
        found: list[list[dict]] = [[] for _ in ks]
        for rows, part in zip(by_slot.values(), parts):
            for i, hits in zip(rows, part):
                found[i] = hits
        return found

    async def first(self, v: versions.ServingVersion, method: str, *args):
        """The first non-empty answer of ``method(index_id, *args)`` over every slot: an item id
        does not say its shard (its category decides), so every slot holding shards is asked."""
        found = await asyncio.gather(*(call(getattr(h, method), v.index_id, *args) for h in self.holding(v)))
        return next((f for f in found if f), None)

    async def samples(self, v: versions.ServingVersion, per_category: int) -> list[dict]:
        parts = await asyncio.gather(*(call(h.samples, v.index_id, per_category) for h in self.holding(v)))
        rows, taken = [], {}
        for row in sorted((r for part in parts for r in part), key=lambda r: r["category"] or ""):
            # A hash-split category has items in several slots, each of which sent its own samples.
            if taken.get(row["category"], 0) < per_category:
                taken[row["category"]] = taken.get(row["category"], 0) + 1
                rows.append(row)
        return rows
