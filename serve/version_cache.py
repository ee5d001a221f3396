"""A few loaded versions of one artifact per replica, loaded off the event loop, once each.

A replica keeps the version it serves and the one before it, so requests that started before a
swap finish on the old one while new requests use the new one. Concurrent requests for a version
that is still loading wait for that single load instead of starting their own.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from typing import Callable, Generic, Hashable, TypeVar

V = TypeVar("V")
log = logging.getLogger("vitrine.serve")


class VersionCache(Generic[V]):
    def __init__(self, load: Callable[[Hashable], V], *, keep: int = 2, what: str = "artifact"):
        self._load = load
        self._keep = max(1, keep)
        self._what = what
        self._ready: OrderedDict[Hashable, V] = OrderedDict()
        self._loading: dict[Hashable, asyncio.Future] = {}

    def loaded(self) -> list[Hashable]:
        return list(self._ready)

    async def get(self, key: Hashable) -> V:
        value = self._ready.get(key)
        if value is not None:
            self._ready.move_to_end(key)
            return value
        pending = self._loading.get(key)
        if pending is None:
            pending = asyncio.get_running_loop().create_future()
            self._loading[key] = pending
            asyncio.get_running_loop().create_task(self._fill(key, pending))
        # shield: a cancelled request must not cancel the load other requests wait on
        return await asyncio.shield(pending)

    async def _fill(self, key: Hashable, future: asyncio.Future) -> None:
        try:
            value = await asyncio.to_thread(self._load, key)
        except BaseException as exc:  # the waiters get the error; nothing is cached
            log.error("loading %s %s failed: %s", self._what, key, exc)
            self._loading.pop(key, None)
            if not future.done():
                future.set_exception(exc)
            future.exception()  # mark retrieved: no "never retrieved" noise when nobody waits
            return
        self._ready[key] = value
        self._ready.move_to_end(key)
        while len(self._ready) > self._keep:
            old, _ = self._ready.popitem(last=False)
            log.info("dropped %s %s (keeping %d)", self._what, old, self._keep)
        self._loading.pop(key, None)
        if not future.done():
            future.set_result(value)
