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

    def holding(self, v: versions.ServingVersion, category: str | None = None) -> list:
        """The slots holding shards of ``category`` (``None``: every shard)."""
        slots = len(self.handles)
        return [self.handles[n] for n in sorted({slot_of(s, slots) for s in v.shards_for(category)})]

    async def search(self, v: versions.ServingVersion, embedding, k: int, category: str | None) -> list[dict]:
        slots = self.holding(v, category)
        if len(slots) == 1:
            return await call(slots[0].search, embedding, v.index_id, k, category)
        parts = await asyncio.gather(*(call(h.search_scored, embedding, v.index_id, k, category) for h in slots))
        return [hit for _, hit in merge_top_k(parts, k, lambda scored: scored[0])]

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
