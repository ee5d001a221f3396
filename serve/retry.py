"""Versions whose warm-up failed for a reason that may pass, and when each may be tried again.

A storage hiccup, a slow load or a replica lost while warming says nothing about the version
itself, so it must not refuse that version for good: it is tried again on a later refresh, with
the wait doubling after each failure (up to a cap) so a broken store is not hammered.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Callable, Hashable

BASE_DELAY_S = 1.0
MAX_DELAY_S = 60.0
REASON_CHARS = 160
# URIs and absolute paths name buckets and directories: they go to the log, never into /v1/info.
_LOCATION = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\",;)]+|(?<![\w.])/[^\s'\",;)]+")


def without_locations(text: str) -> str:
    """``text`` with storage URIs and file paths replaced by ``<path>``: for what clients see
    (``/v1/info``, 503 bodies); the log keeps the full text."""
    return _LOCATION.sub("<path>", text)


def short_reason(exc: BaseException) -> str:
    """The exception's type and first line, locations replaced by ``<path>``, cut short."""
    cause = getattr(exc, "cause", None)  # a RayTaskError carries the replica's exception
    if isinstance(cause, BaseException):
        exc = cause
    lines = str(exc).strip().splitlines()
    text = _LOCATION.sub("<path>", lines[0] if lines else "")
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= REASON_CHARS else text[: REASON_CHARS - 3] + "..."


@dataclass
class Retry:
    attempts: int
    next_at: float
    last_error: str


class RetryBackoff:
    """Failed attempts per key: ``due(key)`` says whether to try now, ``failed``/``succeeded``
    record the outcome. The clock is injectable so the schedule is tested without sleeping."""

    def __init__(self, base_s: float = BASE_DELAY_S, cap_s: float = MAX_DELAY_S,
                 clock: Callable[[], float] = time.monotonic):
        if base_s <= 0 or cap_s < base_s:
            raise ValueError(f"need 0 < base_s <= cap_s, got base_s={base_s}, cap_s={cap_s}")
        self.base_s, self.cap_s, self._clock = base_s, cap_s, clock
        self._state: dict[Hashable, Retry] = {}

    def delay(self, attempts: int) -> float:
        """The wait after the ``attempts``-th consecutive failure: base, 2 x base, ... up to the cap."""
        return min(self.cap_s, self.base_s * 2.0 ** max(0, min(attempts - 1, 62)))

    def due(self, key: Hashable) -> bool:
        state = self._state.get(key)
        return state is None or self._clock() >= state.next_at

    def failed(self, key: Hashable, reason: str) -> Retry:
        previous = self._state.get(key)
        attempts = (previous.attempts if previous else 0) + 1
        state = Retry(attempts=attempts, next_at=self._clock() + self.delay(attempts), last_error=reason)
        self._state[key] = state
        return state

    def succeeded(self, key: Hashable) -> None:
        self._state.pop(key, None)

    def keep_only(self, keys) -> None:
        """Forget every key not in ``keys``: a version no longer published is not retried."""
        keys = set(keys)
        for key in [k for k in self._state if k not in keys]:
            del self._state[key]

    def pending(self) -> list[tuple[Hashable, Retry, float]]:
        """``(key, state, seconds until the next try)`` for every key being retried."""
        now = self._clock()
        return [(key, state, max(0.0, state.next_at - now)) for key, state in self._state.items()]
