"""Which shard of a sharded index holds which items, and which search slot serves which shard.

Items go to shards by category first: whole categories are packed into shards (largest first,
first fit) up to the shard budget, so a category query touches one shard. A category larger
than the budget gets shards of its own and its items are spread over them by a stable hash of
``item_id`` (:func:`stable_hash`), so a rebuild or an increment puts an item where it was.
Shard ``s`` is served by search slot ``s % slots`` (:func:`slot_of`). The budget in bytes becomes
one in items through :func:`estimate_item_bytes`. The shards themselves are
:mod:`artifacts.index_shards`.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np

from .index_manifest import IndexLoadError

# Categories are JSON keys in the plan; items without a category are kept under this one.
NO_CATEGORY = ""


def stable_hash(item_id: str) -> int:
    """A hash of an item id that every process and every run agrees on (``hash()`` does not)."""
    return int.from_bytes(hashlib.blake2b(str(item_id).encode("utf-8"), digest_size=8).digest(), "big")


def slot_of(shard: int, slots: int) -> int:
    """The search slot (deployment) that serves shard ``shard`` when ``slots`` serve the index."""
    return int(shard) % max(1, int(slots))


def shards_of_slot(shards: int, slot: int, slots: int) -> list[int]:
    return [s for s in range(shards) if slot_of(s, slots) == slot]


def _key(category: str | None) -> str:
    return NO_CATEGORY if category is None else str(category)


@dataclass(frozen=True)
class ShardPlan:
    """Which shard holds which items: ``whole`` categories live in one shard each; the items of a
    ``split`` category go to ``split[c][stable_hash(item_id) % len(split[c])]``."""

    shards: int
    whole: dict = field(default_factory=dict)  # category -> shard
    split: dict = field(default_factory=dict)  # category -> [shard, ...]

    def shard_of(self, item_id: str, category: str | None) -> int:
        key = _key(category)
        if key in self.whole:
            return int(self.whole[key])
        parts = self.split.get(key)
        if parts is None:
            raise KeyError(f"category {key!r} is not in this shard plan")
        return int(parts[stable_hash(item_id) % len(parts)])

    def assign(self, item_ids: Sequence[str], categories: Sequence[str | None]) -> np.ndarray:
        return np.array([self.shard_of(i, c) for i, c in zip(item_ids, categories)], dtype=np.int64)

    def shards_for(self, category: str | Iterable[str] | None) -> list[int]:
        """Shards holding items of ``category`` (a name or several); ``None``: every shard."""
        if category is None:
            return list(range(self.shards))
        names = [category] if isinstance(category, str) else list(category)
        out: set[int] = set()
        for name in names:
            key = _key(name)
            if key in self.whole:
                out.add(int(self.whole[key]))
            out.update(int(s) for s in self.split.get(key, ()))
        return sorted(out)

    def categories_of(self, shard: int) -> list[str]:
        """Categories with items in ``shard`` (``NO_CATEGORY`` for uncategorised items)."""
        return sorted([c for c, s in self.whole.items() if int(s) == shard]
                      + [c for c, parts in self.split.items() if shard in parts])

    def to_dict(self) -> dict:
        return {"shards": self.shards, "whole": dict(self.whole), "split": {c: list(p) for c, p in self.split.items()}}

    @classmethod
    def from_dict(cls, data: Mapping) -> "ShardPlan":
        plan = cls(shards=int(data["shards"]), whole={str(c): int(s) for c, s in data.get("whole", {}).items()},
                   split={str(c): [int(s) for s in p] for c, p in data.get("split", {}).items()})
        used = set(plan.whole.values()) | {s for p in plan.split.values() for s in p}
        if plan.shards < 1 or used != set(range(plan.shards)) or set(plan.whole) & set(plan.split):
            raise IndexLoadError(f"inconsistent shard plan: {plan.to_dict()}")
        return plan

    @classmethod
    def single(cls, categories: Iterable[str | None]) -> "ShardPlan":
        """Everything in shard 0: how a plain index reads."""
        return cls(shards=1, whole={_key(c): 0 for c in categories})


def plan_shards(item_ids: Sequence[str], categories: Sequence[str | None], max_items: int) -> ShardPlan:
    """Assign items to shards of at most ``max_items`` each (0 = one shard).

    Whole categories are packed first fit, largest first (ties by name, so the plan is
    deterministic). A category over ``max_items`` is split by :func:`stable_hash` over the fewest
    shards in which no hash bucket exceeds ``max_items``.
    """
    keys = [_key(c) for c in categories]
    sizes = dict(Counter(keys))
    if max_items <= 0 or sum(sizes.values()) <= max_items:
        return ShardPlan(shards=1, whole={c: 0 for c in sizes})
    bins: list[int] = []  # items per packed shard
    whole: dict[str, int] = {}
    big = []
    for name in sorted(sizes, key=lambda c: (-sizes[c], c)):
        n = sizes[name]
        if n > max_items:
            big.append(name)
            continue
        for b, used in enumerate(bins):
            if used + n <= max_items:
                bins[b] += n
                whole[name] = b
                break
        else:
            whole[name] = len(bins)
            bins.append(n)
    split: dict[str, list[int]] = {}
    next_shard = len(bins)
    for name in big:
        hashes = np.array([stable_hash(i) for i, k in zip(item_ids, keys) if k == name], dtype=np.uint64)
        parts = math.ceil(sizes[name] / max_items)
        # A hash spreads items only about evenly: add shards until no bucket overflows.
        while np.bincount((hashes % np.uint64(parts)).astype(np.int64), minlength=parts).max() > max_items:
            parts += 1
        split[name] = list(range(next_shard, next_shard + parts))
        next_shard += parts
    return ShardPlan(shards=next_shard, whole=whole, split=split)


def estimate_item_bytes(dim: int, M: int = 16, *, in_subindex: bool = True) -> int:
    """Bytes one item costs a shard's files: the vector in ``vectors.npy``, its vector, label and
    level-0 links (2M neighbours) in the global graph, the same again in its category's sub-index,
    and an allowance for upper graph levels and the id map."""
    graph = 4 * dim + 8 + 4 * (2 * M + 1) + 4 * (M + 1)  # upper levels: ~1/ln(M) of items, rounded up
    return int(4 * dim + graph * (2 if in_subindex else 1) + 64)
