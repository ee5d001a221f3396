"""Why a category filter searches the category's own graph: three ways to restrict an HNSW search
to some categories, measured on an embeddings run.

    python -m benchmarks.filter_strategies --embeddings .vitrine/embeddings/<model_id> [--json]

- ``subindex``: each large category has its own graph (what :class:`artifacts.hnsw_index.HnswIndex`
  does). A filtered query costs what an unfiltered one does, on a smaller graph, and scales with
  threads; the price is a second copy of every item's vector and links, and about twice the build.
- ``callback``: hnswlib's filter callback on the global graph. It re-enters Python for every
  candidate it visits, holding the GIL, so concurrent requests in a replica do not run in parallel;
  far from the category it visits thousands of nodes.
- ``overfetch``: ask the global graph for ``k / fraction`` candidates and keep the allowed ones,
  doubling until ``k`` are found; far from the category it walks towards the whole index.

Cases: catalogue queries restricted to their own category (classify-then-filter) and to the
smallest category with queries from the others (a shopper asking for another category than the
photo shows). Reported: recall@10 against exact filtered search, batched time per query, and
single-query throughput from 1 and 2 threads. Results: docs/BENCHMARKS.md, "Category filters".
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from artifacts.hnsw_index import HnswIndex
from artifacts.vector_search import as_queries, pad, recall_at_k, top_k

STRATEGIES = ("subindex", "callback", "overfetch")


def _allowed(index: HnswIndex, category) -> np.ndarray:
    names = [category] if isinstance(category, str) else list(category)
    allowed = np.zeros(index.n_positions, dtype=bool)
    for name in names:
        allowed[index.category_members[index.category_names.index(name)]] = True
    return allowed


def _callback(index: HnswIndex, q: np.ndarray, k: int, category) -> tuple[np.ndarray, np.ndarray]:
    allowed = _allowed(index, category)
    k_eff = min(k, int(allowed.sum()))
    allowed_list = allowed.tolist()  # list indexing is the cheapest Python-side check
    try:
        labels, dists = index.graph.knn_query(q, k=k_eff, num_threads=index.num_threads or -1,
                                              filter=allowed_list.__getitem__)
    except RuntimeError:  # fewer than k found: answer exactly, as the index does
        return index.exact_search_positions(q, k, category)
    return pad(labels.astype(np.int64), (1.0 - dists).astype(np.float32), k)


def _overfetch(index: HnswIndex, q: np.ndarray, k: int, category, factor: float = 2.0):
    allowed = _allowed(index, category)
    n_allowed = int(allowed.sum())
    want = min(k, n_allowed)
    fetch = min(len(index), max(k, int(math.ceil(k * factor / max(n_allowed / len(index), 1e-9)))))
    pos = np.full((len(q), k), -1, np.int64)
    sim = np.full((len(q), k), -np.inf, np.float32)
    todo = np.arange(len(q))
    while len(todo):
        labels, sims = index.search_positions(q[todo], fetch)
        keep = (labels >= 0) & allowed[np.maximum(labels, 0)]
        cols, vals = top_k(np.where(keep, sims, -np.inf), k)
        found = np.take_along_axis(labels, cols, axis=1)
        found[~np.isfinite(vals)] = -1
        pos[todo], sim[todo] = pad(found, vals, k)
        # Queries far from the allowed items found too few of them: fetch twice as many.
        todo = todo[(pos[todo] >= 0).sum(axis=1) < want]
        if fetch >= len(index):
            break
        fetch = min(len(index), fetch * 2)
    return pos, sim


def filtered_search(index: HnswIndex, vectors, k: int, category, strategy: str) -> tuple[np.ndarray, np.ndarray]:
    """``(positions, similarities)`` of ``k`` neighbours within ``category`` by ``strategy``."""
    if strategy == "subindex":
        return index.search_positions(vectors, k, category)
    q = as_queries(vectors, index.dim)
    if strategy == "callback":
        return _callback(index, q, k, category)
    if strategy == "overfetch":
        return _overfetch(index, q, k, category)
    raise ValueError(f"unknown strategy {strategy!r}; valid: {', '.join(STRATEGIES)}")


def compare(index: HnswIndex, *, queries: int = 1000, k: int = 10, seed: int = 0,
            single_queries: int = 500) -> list[dict]:
    """One row per case and strategy: recall@k against exact filtered search and time per query."""
    rng = np.random.default_rng(seed)
    categorised = np.flatnonzero(index.category_codes >= 0)
    picks = rng.choice(categorised, size=min(queries, len(categorised)), replace=False)
    q, codes = index.vectors[picks], index.category_codes[picks]
    counts = index.category_counts()
    smallest = min(counts, key=counts.get)
    cases = {
        "own category": [(name, np.flatnonzero(codes == j)) for j, name in enumerate(index.category_names)],
        f"another category ({smallest}, {counts[smallest]} items)":
            [(smallest, np.flatnonzero(codes != index.category_names.index(smallest)))],
    }
    rows = []
    for case, groups in cases.items():
        for strategy in STRATEGIES:
            seconds, weighted, total = 0.0, 0.0, 0
            for name, sel in groups:
                if not len(sel):
                    continue
                t = time.perf_counter()
                pos, _ = filtered_search(index, q[sel], k, name, strategy)
                seconds += time.perf_counter() - t
                _, exact_sim = index.exact_search_positions(q[sel], k, name)
                approx_sim = np.einsum("qd,qkd->qk", q[sel], index.vectors[np.maximum(pos, 0)])
                weighted += recall_at_k(pos, exact_sim, approx_sim) * len(sel)
                total += len(sel)
            singles = [(q[i], name) for name, sel in groups for i in sel][:single_queries]
            rows.append({"case": case, "strategy": strategy, "queries": total, "recall_at_k": weighted / max(total, 1),
                         "ms_per_query": 1000 * seconds / max(total, 1),
                         "qps_1_thread": _throughput(index, singles, k, strategy, 1),
                         "qps_2_threads": _throughput(index, singles, k, strategy, 2)})
    return rows


def _throughput(index: HnswIndex, singles: list, k: int, strategy: str, threads: int) -> float:
    """Queries per second, one query per call from ``threads`` Python threads, as a Serve
    replica handling concurrent requests would issue them."""
    if not singles:
        return float("nan")
    t = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(lambda qn: filtered_search(index, qn[0], k, qn[1], strategy), singles))
    return len(singles) / (time.perf_counter() - t)


def main(argv: list[str] | None = None) -> int:
    from artifacts.configuration import load_config
    from jobs.build_index import SMOKE_ITEMS, BuildIndexConfig, read_embeddings, resolve_embeddings

    p = argparse.ArgumentParser(prog="python -m benchmarks.filter_strategies", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--embeddings", help="embeddings run dir, or <root>/embeddings/<model_id> (its LATEST run)")
    p.add_argument("--storage", help="storage root URI (default $VITRINE_STORAGE or ./.vitrine)")
    p.add_argument("--queries", type=int, default=1000, help="catalogue queries (default 1000)")
    p.add_argument("--smoke-test", action="store_true", help=f"first {SMOKE_ITEMS:,} items")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="index build settings (BuildIndexConfig: M, ef_construction, ef, seed, num_threads)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    args = p.parse_args(argv)
    config = load_config(BuildIndexConfig, overrides=args.overrides,
                         values={"embeddings": args.embeddings, "storage": args.storage})
    ids, cats, vectors, _ = read_embeddings(resolve_embeddings(config), SMOKE_ITEMS if args.smoke_test else 0)
    t = time.time()
    index = HnswIndex.build(ids, cats, vectors, M=config.M, ef_construction=config.ef_construction, ef=config.ef,
                            exact_below=0, seed=config.seed, num_threads=config.num_threads)
    global_only = HnswIndex.build(ids, [None] * len(ids), vectors, M=config.M, ef_construction=config.ef_construction,
                                  ef=config.ef, seed=config.seed, num_threads=config.num_threads)
    build_all = time.time() - t - global_only.build_seconds
    index.set_num_threads(1)  # per-query cost as one Serve replica thread sees it
    rows = compare(index, queries=args.queries, seed=config.seed)
    if args.json:
        print(json.dumps({"items": len(ids), "dim": index.dim, "build_seconds_with_subindexes": build_all,
                          "build_seconds_global_only": global_only.build_seconds, "rows": rows}, indent=2))
        return 0
    print(f"{len(ids)} items, dim {index.dim}, {len(index.category_names)} categories; M={config.M} "
          f"ef_construction={config.ef_construction} ef={config.ef}; one search thread")
    print(f"build: global index {global_only.build_seconds:.1f} s; with per-category sub-indexes {build_all:.1f} s")
    print("| queries filtered to | strategy | recall@10 vs exact filtered | ms / query (batched) "
          "| queries/s, 1 thread | queries/s, 2 threads |\n|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['case']} | {r['strategy']} | {r['recall_at_k']:.4f} | {r['ms_per_query']:.3f} | "
              f"{r['qps_1_thread']:.0f} | {r['qps_2_threads']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
