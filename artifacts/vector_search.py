"""Exact nearest neighbours over unit vectors with numpy: normalising queries, the best ``k`` of a
similarity matrix, merging and padding result lists, and recall@k of an approximate search against
the exact one. Shared by the HNSW index, its shards and the measurements."""

from __future__ import annotations

import numpy as np


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), as float32."""
    v = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.where(norms > 0, norms, 1).astype(np.float32)


def as_queries(vectors, dim: int) -> np.ndarray:
    """Query vectors as a float32 ``(n, dim)`` array of unit rows; one vector is one query."""
    q = np.asarray(vectors, dtype=np.float32)
    if q.ndim == 1:
        q = q[None, :]
    if q.ndim != 2 or q.shape[1] != dim:
        raise ValueError(f"query vectors must have shape (n, {dim}); got {np.shape(vectors)}")
    if not np.isfinite(q).all():
        raise ValueError("query vectors contain NaN or infinity")
    return l2_normalise(q)


def top_k(sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best-first ``(columns, similarities)`` of each row; ties broken by column (stable)."""
    n = sims.shape[1]
    k = min(k, n)
    if k == 0:
        return np.zeros((len(sims), 0), np.int64), np.zeros((len(sims), 0), np.float32)
    if k < n:
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        # Stable order among equal similarities: by column, so exact search is deterministic.
        part.sort(axis=1)
    else:
        part = np.broadcast_to(np.arange(n), sims.shape).copy()
    vals = np.take_along_axis(sims, part, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1).astype(np.int64), np.take_along_axis(vals, order, axis=1)


def merge(parts: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge best-first candidate lists (positions, similarities; -1 = none) into the top ``k``."""
    pos = np.concatenate([p for p, _ in parts], axis=1)
    sim = np.concatenate([s for _, s in parts], axis=1)
    sim = np.where(pos < 0, -np.inf, sim)
    cols, vals = top_k(sim, k)
    out_pos = np.take_along_axis(pos, cols, axis=1)
    out_pos[~np.isfinite(vals)] = -1
    return pad(out_pos, vals, k)


def pad(pos: np.ndarray, sim: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut or pad (-1 / -inf) best-first results to ``k`` columns."""
    if pos.shape[1] >= k:
        return pos[:, :k], sim[:, :k].astype(np.float32)
    n, have = pos.shape
    pad_pos = np.full((n, k - have), -1, np.int64)
    pad_sim = np.full((n, k - have), -np.inf, np.float32)
    return np.hstack([pos, pad_pos]), np.hstack([sim.astype(np.float32), pad_sim])


def recall_at_k(approx: np.ndarray, exact_sims: np.ndarray, approx_sims: np.ndarray, *, tol: float = 1e-5) -> float:
    """Mean fraction of the exact top-k that the approximate search returned.

    ``approx`` holds returned positions (-1 = none), ``approx_sims`` their similarities recomputed
    exactly, ``exact_sims`` the exact top-k similarities (best first). A returned item counts
    when its similarity reaches the exact k-th best (minus ``tol``), so ties and duplicates in
    the catalogue do not count as misses.
    """
    if approx.size == 0:
        return float("nan")
    finite = np.isfinite(exact_sims)
    wanted = finite.sum(axis=1)
    # The k-th best exact similarity; a filter that leaves fewer than k items lowers the bar
    # to the worst of those that exist.
    threshold = np.where(finite, exact_sims, np.inf).min(axis=1, keepdims=True)
    hits = ((approx >= 0) & (approx_sims >= threshold - tol)).sum(axis=1)
    valid = wanted > 0
    return float(np.mean(np.minimum(hits[valid], wanted[valid]) / wanted[valid])) if valid.any() else float("nan")
