"""Item id → row, for a million ids in tens of megabytes: the ids as one sorted array of
fixed-width bytes and a binary search, instead of a dict of Python strings (about 150 bytes an
entry, ids and dict slots together). Search replicas hold several such maps per index version
(image locations, metadata rows, stored vectors for "more like this"), and two versions during a
hot swap; docs/BENCHMARKS.md ("Scale") has what that costs a replica at 1M items."""

from __future__ import annotations

from typing import Iterable

import numpy as np
import pyarrow as pa

_CHUNK = 1 << 17  # rows converted at a time: bounds the temporary index arrays


def fixed_width(ids) -> np.ndarray:
    """``ids`` (strings: an Arrow array, a list, a numpy array) as a numpy ``S<width>`` array of
    their UTF-8 bytes, built from Arrow's buffers without a Python object per id. Ids never end
    in NUL bytes (the item-id rule), which numpy's fixed-width bytes would strip."""
    if isinstance(ids, (pa.Array, pa.ChunkedArray)):
        arr = ids
    elif isinstance(ids, np.ndarray):
        arr = pa.array(ids if ids.dtype == object else ids.astype(str), pa.string())
    else:
        arr = pa.array(list(ids), pa.string())
    arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    arr = arr.cast(pa.large_string())
    if arr.null_count:
        raise ValueError("item ids must not be null")
    n = len(arr)
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64, count=n + 1, offset=arr.offset * 8)
    buffer = arr.buffers()[2]  # None when every id is empty
    data = np.frombuffer(buffer, dtype=np.uint8) if n and buffer is not None else np.zeros(0, np.uint8)
    lengths = np.diff(offsets)
    width = max(1, int(lengths.max()) if n else 1)
    out = np.zeros((n, width), np.uint8)
    for lo in range(0, n, _CHUNK):
        hi = min(n, lo + _CHUNK)
        lens = lengths[lo:hi]
        rows = np.repeat(np.arange(lo, hi), lens)
        cols = np.arange(int(lens.sum())) - np.repeat(np.cumsum(lens) - lens, lens)
        out[rows, cols] = data[offsets[lo]:offsets[hi]]
    return out.view(f"S{width}").reshape(n)


class IdLookup:
    """Rows of ``ids`` by id: ``get(id)`` → row or None, ``rows(ids)`` → int64 rows (-1: absent).
    Of duplicate ids, the first row wins (as ``dict(zip(ids, range(n)))`` would keep the last: an
    index holds each live id once, so callers pass unique ids)."""

    def __init__(self, ids):
        keys = fixed_width(ids)
        self._order = np.argsort(keys, kind="stable")
        self._sorted = keys[self._order]
        self._width = keys.dtype.itemsize

    def __len__(self) -> int:
        return len(self._sorted)

    @property
    def nbytes(self) -> int:
        return int(self._sorted.nbytes + self._order.nbytes)

    def rows(self, ids: Iterable[str]) -> np.ndarray:
        encoded = [str(i).encode("utf-8") for i in ids]
        if not len(self._sorted) or not encoded:
            return np.full(len(encoded), -1, np.int64)
        # Longer than every stored id: cannot be one (and would be cut to the width by numpy).
        queries = np.array([e if len(e) <= self._width else b"" for e in encoded], dtype=f"S{self._width}")
        at = np.minimum(np.searchsorted(self._sorted, queries), len(self._sorted) - 1)
        found = (self._sorted[at] == queries) & np.array([0 < len(e) <= self._width for e in encoded])
        return np.where(found, self._order[at], -1).astype(np.int64)

    def get(self, item_id: str) -> int | None:
        row = int(self.rows([item_id])[0])
        return None if row < 0 else row

    def __contains__(self, item_id: str) -> bool:
        return self.get(item_id) is not None
