"""Full index build against an incremental update of the same index, on a real embeddings run.

    nice .venv/bin/python -m benchmarks.index_update --embeddings .vitrine/embeddings/<model_id> \\
        --changed 0.01 --threads 2 [--json]

Builds the run's index from scratch, saves and reloads it (as the nightly job finds it), then
makes a next night in memory: ``--changed`` of the items split into re-embedded (vector moved,
new content hash), removed and new ones (a third each), and times
``artifacts.index_update.update_index`` on the reloaded index against ``HnswIndex.build`` of
the next night. Recall@10 (``HnswIndex.measure_recall``, unfiltered and own-category) of both.
Also the resident memory a replica gains by loading the index (``vectors.npy`` memory-mapped).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def next_night(ids, cats, vectors, hashes, changed: float, seed: int):
    from artifacts.vector_search import l2_normalise

    rng = np.random.default_rng(seed)
    n, third = len(ids), max(1, int(round(len(ids) * changed / 3)))
    picks = rng.choice(n, 2 * third, replace=False)
    moved, removed = picks[:third], picks[third:]
    vecs, hashes = vectors.copy(), np.asarray(hashes, dtype=object).copy()
    vecs[moved] = l2_normalise(vectors[moved] + 0.3 * rng.normal(size=(third, vectors.shape[1])).astype(np.float32)
                               * np.abs(vectors[moved]).mean())
    hashes[moved] = [h + "-next" for h in hashes[moved]]
    keep = np.ones(n, bool)
    keep[removed] = False
    src = rng.choice(np.flatnonzero(keep), third)  # new items look like existing ones, slightly moved
    new_vecs = l2_normalise(vectors[src] + 0.3 * rng.normal(size=(third, vectors.shape[1])).astype(np.float32)
                            * np.abs(vectors[src]).mean())
    new_ids = [f"new-{i}" for i in range(third)]
    return (list(np.asarray(ids, dtype=object)[keep]) + new_ids,
            list(np.asarray(cats, dtype=object)[keep]) + [cats[i] for i in src],
            np.vstack([vecs[keep], new_vecs]), list(hashes[keep]) + [f"h-{i}" for i in new_ids])


def main(argv: list[str] | None = None) -> int:
    from artifacts import embeddings
    from artifacts.hnsw_index import HnswIndex
    from artifacts.index_update import read_keys, read_rows, update_index

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--embeddings", required=True)
    p.add_argument("--changed", type=float, default=0.01)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    run = embeddings.resolve_run(args.embeddings)
    ids, cats, hashes, _ = read_keys(run)
    vectors = read_rows(run, np.arange(len(ids)), ids)
    params = dict(M=16, ef_construction=200, ef=64, exact_below=1000, seed=100, num_threads=args.threads)
    first = HnswIndex.build(ids, cats, vectors, content_hashes=hashes, **params)
    ids2, cats2, vecs2, hashes2 = next_night(ids, cats, vectors, hashes, args.changed, args.seed)
    out = {"items": len(ids), "dim": int(vectors.shape[1]), "changed": args.changed, "threads": args.threads}
    with tempfile.TemporaryDirectory(prefix="vitrine-bench-") as tmp:
        first.save(f"{tmp}/first", index_id="first")
        del first
        before = rss_mb()
        t = time.perf_counter()
        previous = HnswIndex.load(f"{tmp}/first", num_threads=args.threads)
        out["load_seconds"] = time.perf_counter() - t
        out["rss_added_by_load_mb"] = rss_mb() - before
        out["vectors_npy_mb"] = previous.vectors.nbytes / 2**20
        t = time.perf_counter()
        updated, stats = update_index(previous, ids2, cats2, hashes2, vecs2, num_threads=args.threads)
        out["update_seconds"] = time.perf_counter() - t
        out["update"] = stats.to_dict()
        t = time.perf_counter()
        updated.save(f"{tmp}/updated", index_id="updated")
        out["save_updated_seconds"] = time.perf_counter() - t
    t = time.perf_counter()
    full = HnswIndex.build(ids2, cats2, vecs2, content_hashes=hashes2, **params)
    out["full_build_seconds"] = time.perf_counter() - t
    for name, index in (("full", full), ("incremental", updated)):
        out[f"{name}_recall_at_10"] = index.measure_recall(k=10, sample=args.queries, seed=args.seed)
        out[f"{name}_filtered_recall_at_10"] = index.measure_recall(k=10, sample=args.queries, seed=args.seed,
                                                                    category="own")
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"{out['items']} items x {out['dim']}, {args.changed:.1%} changed ({stats.changed} re-embedded, "
          f"{stats.removed} removed, {stats.new} new), {args.threads} threads")
    print(f"full build {out['full_build_seconds']:.2f} s; incremental update {out['update_seconds']:.2f} s "
          f"(+ load {out['load_seconds']:.2f} s, save {out['save_updated_seconds']:.2f} s)")
    print(f"recall@10 full {out['full_recall_at_10']:.4f} / own category {out['full_filtered_recall_at_10']:.4f}; "
          f"incremental {out['incremental_recall_at_10']:.4f} / {out['incremental_filtered_recall_at_10']:.4f}")
    print(f"loading added {out['rss_added_by_load_mb']:.0f} MB of RSS (vectors.npy {out['vectors_npy_mb']:.0f} MB, "
          f"memory-mapped)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
