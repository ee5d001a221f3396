"""The search replica alone: HNSW against exact search on the published index, one query at a
time (as a Serve replica answers), unfiltered and within the query's own category.

    TF_CPP_MIN_LOG_LEVEL=2 .venv/bin/python benchmarks/search_speed.py            # indexes/LATEST
    .venv/bin/python benchmarks/search_speed.py --index URI --queries 1000 --markdown docs/BENCHMARKS.md

The index is loaded with ``HnswIndex.load(..., num_threads=1)`` like a Search replica. Queries
are ``--queries`` catalogue vectors drawn with ``--seed`` (the draw ``HnswIndex.measure_recall``
makes, so recall is measured on exactly the timed queries). Each query goes through
``HnswIndex.search`` and ``HnswIndex.exact_search`` separately (``Hit`` lists, what
``CatalogueSearcher.search`` calls), timed one by one after a warm-up, the two methods in
alternating blocks of 100 queries. Exact search is numpy over
the index's own float32 vectors, with BLAS limited to ``--blas-threads`` (default 1: the same
single core the HNSW query gets). Recall@10 is ``HnswIndex.measure_recall`` (a hit at the exact
10th similarity counts). ``--ef`` values are all measured; the index's own ``ef`` is marked.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cpu_usage import load_average
from markdown_block import write_block

SECTION = "## Serving (issue 4)"  # where the block goes in a file that has none yet
BEGIN, END = "<!-- search_speed:begin -->", "<!-- search_speed:end -->"


def _stats(seconds: list[float]) -> dict:
    import numpy as np

    ms = np.asarray(seconds) * 1000
    return {"mean": float(ms.mean()), "p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99))}


def time_pair(fa, fb, queries, categories, warmup: int = 50, block: int = 100) -> tuple[list[float], list[float]]:
    """Per-query seconds of ``fa`` and ``fb``, one query at a time, in alternating blocks of
    ``block`` queries: both see the same machine (other load comes and goes), and each runs
    back to back like a replica does (query by query alternation would give every HNSW query
    the cold cache an exact search, streaming 61 MB of vectors, leaves behind)."""
    for i in range(min(warmup, len(queries))):
        fa(queries[i:i + 1], categories[i])
        fb(queries[i:i + 1], categories[i])
    ta, tb = [], []
    for start in range(0, len(queries), block):
        for fn, out in ((fa, ta), (fb, tb)):
            for i in range(start, min(start + block, len(queries))):
                q, c = queries[i:i + 1], categories[i]
                t0 = time.perf_counter()
                fn(q, c)
                out.append(time.perf_counter() - t0)
    return ta, tb


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    storage_root = os.environ.get("VITRINE_STORAGE", str(ROOT / ".vitrine"))
    p.add_argument("--index", default=os.path.join(storage_root, "indexes"), help="index dir or indexes/ (LATEST)")
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--ef", default="16,32,64,128", help="comma-separated ef values (the index's own is added)")
    p.add_argument("--blas-threads", type=int, default=1, help="numpy BLAS threads for exact search")
    p.add_argument("--markdown", help="write the table into this file's '## Serving (issue 4)' section")
    return p


def exact_searcher(index, k: int):
    """Exact search as ``fn(query, category)``; within a category, over that category's vectors
    gathered once at load (HnswIndex.exact_search gathers them on every call, which would
    flatter HNSW)."""
    import numpy as np

    from artifacts.vector_search import as_queries

    blocks = {name: (index.category_members[j], np.ascontiguousarray(index.vectors[index.category_members[j]]))
              for j, name in enumerate(index.category_names)}

    def exact(q, c):
        if c is None:
            return index.exact_search(q, k)
        members, block = blocks[c]
        pos, sim = index._exact(as_queries(q, index.dim), k, members, base=block)
        return index._hits(pos, sim)

    return exact


def measure_efs(index, exact, efs: list[int], queries, own, n_picks: int, args) -> list[dict]:
    """A row per ``ef`` and filter (unfiltered, the query's own category): HNSW and ``exact``
    times, recall."""
    none = [None] * len(own)

    def hnsw(q, c):
        return index.search(q, args.k, c)

    rows = []
    for ef in efs:
        index.set_ef(ef)
        for mode, cats in (("unfiltered", none), ("own category", own)):
            th, te = time_pair(hnsw, exact, queries, cats)
            h, e = _stats(th), _stats(te)
            recall = index.measure_recall(k=args.k, sample=n_picks, seed=args.seed,
                                          category="own" if mode == "own category" else None)
            rows.append({"ef": ef, "mode": mode, "hnsw": h, "exact": e, "speedup_mean": e["mean"] / h["mean"],
                         "speedup_p50": e["p50"] / h["p50"], "recall": recall})
            print(f"ef {ef:>4} {mode:>13}: HNSW mean {h['mean']:.3f} p50 {h['p50']:.3f} p99 {h['p99']:.3f} ms | "
                  f"exact mean {e['mean']:.3f} p50 {e['p50']:.3f} p99 {e['p99']:.3f} ms | "
                  f"{e['mean'] / h['mean']:.1f}x | recall@{args.k} {recall:.4f}", flush=True)
    return rows


def report(rows: list[dict], index, own_ef: int, n_picks: int, library_own: dict, load: tuple[str, str],
           args) -> str:
    """The Markdown: conditions, the table (the index's own ef in bold), the note on the library's filter."""
    lines = [(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {os.cpu_count()} CPUs; load average "
             f"(1/5/15 min) before {load[0]}, after {load[1]}; index `{index.manifest.index_id}` "
             f"({len(index):,} items × {index.dim}, M={index.params.get('M')}, own ef={own_ef}); {n_picks} catalogue "
             f"vectors as queries (seed {args.seed}), k={args.k}; one hnswlib thread, {args.blas_threads} BLAS "
             f"thread(s) for exact search; per-query times in ms."), "",
             (f"| ef | filter | HNSW mean | HNSW p50 | HNSW p99 | exact mean | exact p50 | exact p99 | "
             f"speedup (mean) | speedup (p50) | recall@{args.k} | target (≥ 20×, ≥ 0.99) |"),
             "|--:|:--|--:|--:|--:|--:|--:|--:|--:|--:|--:|:--|"]
    for r in rows:
        h, e = r["hnsw"], r["exact"]
        met = min(r["speedup_mean"], r["speedup_p50"]) >= 20 and r["recall"] >= 0.99
        ef = f"**{r['ef']}** (index)" if r["ef"] == own_ef else str(r["ef"])
        lines.append(f"| {ef} | {r['mode']} | {h['mean']:.3f} | {h['p50']:.3f} | {h['p99']:.3f} | {e['mean']:.3f} | "
                     f"{e['p50']:.3f} | {e['p99']:.3f} | {r['speedup_mean']:.1f}× | {r['speedup_p50']:.1f}× | "
                     f"{r['recall']:.4f} | {'met' if met else 'missed'} |")
    lines += ["", (f"Exact search within the category runs over that category's vectors gathered once at load; "
                  f"`HnswIndex.exact_search(q, k, category)`, which gathers them on every call, takes "
                  f"{library_own['mean']:.3f} ms mean / {library_own['p50']:.3f} ms p50 (first 200 queries). "
                  f"A target counts as met when both the mean and the p50 speedup reach 20×.")]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.blas_threads)  # before numpy loads BLAS

    import numpy as np

    from artifacts.hnsw_index import HnswIndex

    load_before = load_average()
    t0 = time.time()
    index = HnswIndex.load(args.index, num_threads=1)
    load_s = time.time() - t0
    own_ef = int(index.ef)
    n = len(index)
    picks = np.random.default_rng(args.seed).choice(np.arange(n), size=min(args.queries, n), replace=False)
    queries = index.vectors[picks]
    own = index.categories_of(picks)
    print(f"index {index.manifest.index_id}: {n:,} items, dim {index.dim}, ef {own_ef}, loaded in {load_s:.1f} s; "
          f"{len(picks)} queries; load average {load_before}", flush=True)

    exact = exact_searcher(index, args.k)
    _, library = time_pair(exact, lambda q, c: index.exact_search(q, args.k, c), queries[:200], own[:200])
    library_own = _stats(library)
    efs = sorted({own_ef, *(int(e) for e in args.ef.split(",") if e.strip())})
    rows = measure_efs(index, exact, efs, queries, own, len(picks), args)
    index.set_ef(own_ef)
    load_after = load_average()

    text = report(rows, index, own_ef, len(picks), library_own, (load_before, load_after), args)
    print("\n" + text)
    if args.markdown:
        write_block(args.markdown, text, BEGIN, END, SECTION)
    return 0


if __name__ == "__main__":
    sys.exit(main())
