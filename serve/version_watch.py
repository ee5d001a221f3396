"""Which model and index an ingress replica serves, and when it takes a newer one into service.

The served version is re-read from storage every ``poll_interval_s``; a new one is warmed on a
replica of each deployment before it is used, and one that cannot be served is refused with a
log line while the old one keeps serving. A warm-up that fails for a reason that may pass
(storage, timeout, lost replica) is tried again later (:mod:`.retry`).
"""

from __future__ import annotations

import asyncio
import logging
import time

from starlette.concurrency import run_in_threadpool

from . import versions
from .args import AppArgs
from .errors import ApiError
from .retry import RetryBackoff, short_reason, without_locations

log = logging.getLogger("vitrine.serve")


class VersionWatch:
    def __init__(self, classifier, searches: list, args: AppArgs, root: str, metrics):
        self.classifier, self.searches, self.args, self.root, self.metrics = classifier, searches, args, root, metrics
        self.version: versions.ServingVersion | None = None
        self.refused: dict[tuple, str] = {}  # versions that failed their checks, with the reason
        self.retries = RetryBackoff()  # versions whose warm-up failed for a reason that may pass
        self._problem = "no version checked yet"
        self._checked_at = 0.0
        self._refresh_lock = asyncio.Lock()
        self._refresh_task: asyncio.Task | None = None

    async def serving(self) -> versions.ServingVersion:
        """The version for this request; checks storage for a newer one in the background."""
        if self.version is None:
            await self._refresh()
        elif time.monotonic() - self._checked_at >= self.args.poll_interval_s and (
                self._refresh_task is None or self._refresh_task.done()):
            self._refresh_task = asyncio.get_running_loop().create_task(self._refresh())
        if self.version is None:
            raise ApiError(503, f"nothing to serve yet: {without_locations(self._problem)}")
        return self.version

    async def _refresh(self) -> None:
        async with self._refresh_lock:
            if self.version is not None and time.monotonic() - self._checked_at < self.args.poll_interval_s:
                return
            self._checked_at = time.monotonic()
            try:
                candidate = await run_in_threadpool(versions.resolve, self.root, model=self.args.model,
                                                    index=self.args.index)
            except versions.NothingPublished as exc:
                self._problem = str(exc)
                return
            except versions.VersionRejected as exc:
                self._refuse(("resolve", str(exc)), str(exc))
                return
            except Exception as exc:  # storage unreachable: keep serving what we have
                self._problem = f"cannot read {self.root}: {exc}"
                log.warning("version check failed (%s); %s", exc, self._keeping())
                return
            self.retries.keep_only([candidate.key])
            if self.version is not None and candidate.key == self.version.key:
                return
            if candidate.key in self.refused or not self.retries.due(candidate.key):
                return
            timeout = self.args.warm_timeout_s
            try:  # load it on one replica of each before any request depends on it
                # A timeout only stops this wait: the replica's load goes on (its cache shields it),
                # so the next try picks up that same load instead of starting over.
                model = await asyncio.wait_for(self.classifier.warm.remote(candidate.model_id), timeout)
                if model["embedding_dim"] != candidate.embedding_dim:
                    raise versions.VersionRejected(f"model {candidate.model_id} produces {model['embedding_dim']}-"
                                                   f"dimensional embeddings, its card says {candidate.embedding_dim}")
                if candidate.index_id:
                    await asyncio.wait_for(self._warm_search(candidate), timeout)
            except Exception as exc:
                if versions.is_permanent(exc):
                    self.retries.succeeded(candidate.key)
                    self._refuse(candidate.key, f"model {candidate.model_id} / index {candidate.index_id}: {exc}")
                else:
                    self._retry_later(candidate, exc)
                return
            self.retries.succeeded(candidate.key)
            previous, self.version = self.version, candidate
            self._problem = ""
            self.metrics.swaps.inc(tags={"outcome": "served"})
            self.metrics.index_version.set(candidate.published_at,
                                           tags={"index_id": str(candidate.index_id), "model_id": candidate.model_id})
            log.info("now serving model %s with index %s (%d items)%s", candidate.model_id, candidate.index_id,
                     candidate.index_items,
                     f"; was model {previous.model_id} with index {previous.index_id}" if previous else "")

    async def _warm_search(self, candidate: versions.ServingVersion) -> None:
        """Load the index on a replica of every search slot; the version serves only once every
        shard is loaded somewhere, so a query never meets a slot without its shards."""
        infos = await asyncio.gather(*(h.warm.remote(candidate.index_id) for h in self.searches))
        for index in infos:
            if index["model_id"] != candidate.model_id or index["embedding_dim"] != candidate.embedding_dim:
                raise versions.VersionRejected(
                    f"index {candidate.index_id} (model {index['model_id']}, dim {index['embedding_dim']}) "
                    f"does not match model {candidate.model_id} (dim {candidate.embedding_dim})")
        held = sorted(s for index in infos for s in index.get("shards", [0]))
        items = sum(int(index["items"]) for index in infos)
        if held != list(range(candidate.shards)) or items != candidate.index_items:
            raise versions.VersionRejected(
                f"index {candidate.index_id}: its {candidate.shards} shard(s) of {candidate.index_items} items are "
                f"served as shards {held} holding {items} items by {len(self.searches)} search slot(s)")

    def _keeping(self) -> str:
        v = self.version
        return f"keeping model {v.model_id} with index {v.index_id}" if v else "nothing served yet"

    def _retry_later(self, candidate: versions.ServingVersion, exc: BaseException) -> None:
        if isinstance(exc, asyncio.TimeoutError):
            reason = f"warm-up took longer than warm_timeout_s={self.args.warm_timeout_s:g}"
        else:
            reason = short_reason(exc)
        state = self.retries.failed(candidate.key, reason)
        wait = self.retries.delay(state.attempts)
        log.warning("warming model %s / index %s failed (attempt %d: %s); trying again in %.0f s; %s",
                    candidate.model_id, candidate.index_id, state.attempts, exc, wait, self._keeping())
        self.metrics.swaps.inc(tags={"outcome": "retrying"})
        if self.version is None:
            self._problem = f"model {candidate.model_id} / index {candidate.index_id}: {reason}; retrying"

    def retrying(self) -> list[dict]:
        """The versions waiting for another warm-up try (``/v1/info``)."""
        return [{"model_id": key[0], "index_id": key[1], "attempts": state.attempts,
                 "next_try_in_s": round(wait, 1), "last_error": state.last_error}
                for key, state, wait in self.retries.pending()]

    def refused_reasons(self) -> list[str]:
        return sorted({without_locations(r) for r in self.refused.values()})

    def _refuse(self, key: tuple, reason: str) -> None:
        if key not in self.refused:
            log.error("refusing to serve %s; %s", reason, self._keeping())
            self.metrics.swaps.inc(tags={"outcome": "refused"})
        self.refused[key] = reason
        if self.version is None:
            self._problem = reason
