"""What 10M and 100M items would cost, computed from a run of ``benchmarks/scale.py``.

    python benchmarks/scale_plan.py /path/to/scale.json [--cores 2] [--node-cores 16]
        [--replica-budget-gib 16] [--qps 1000] [--markdown out.md]

Every figure is a measured per-item cost from the largest size of that run, multiplied out;
the table says which measurement each row rests on. The scalings are the simple ones the
measured curve supports (linear for embedding, bytes and memory; n log n for a full HNSW
build, from the largest two sizes; search latency by its measured growth per doubling of items).
No GPU was measured: embedding hours are for CPU nodes only.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path


def _growth(rows: list[dict], get) -> float:
    """Measured factor per 10x items between the two largest sizes (log-log slope)."""
    (a, b) = rows[-2], rows[-1]
    va, vb = get(a), get(b)
    if not va or not vb or a["items"] == b["items"]:
        return 1.0
    slope = math.log(vb / va) / math.log(b["items"] / a["items"])
    return 10 ** slope


def plan(rows: list[dict], *, cores: int, node_cores: int, budget_gib: float, qps: float,
         targets=(10_000_000, 100_000_000)) -> str:
    rows = sorted(rows, key=lambda r: r["items"])
    big = rows[-1]
    n = big["items"]
    embed_core_s = big["full"]["timings"]["embed_s"] * cores / n  # CPU-core seconds an item
    parquet_b = big["parquet_mb"] * 2**20 / n
    graph_b = big["replica"]["graph_mb"] * 2**20 / n
    replica_b = (big["replica"]["rss_mb"] - big["replica"]["rss_before_mb"]) * 2**20 / n
    changed = sum((big["index_incremental"].get(k) or 0) for k in ("added", "deleted")) or 0.01 * n
    inc_s_item = big["index_incremental"]["build_seconds"] / max(changed, 1)
    build_s = big["index_full"]["build_seconds"]
    p50 = big["replica"]["unfiltered"]["p50_ms"]
    p50_growth = _growth(rows, lambda r: r["replica"]["unfiltered"]["p50_ms"]) if len(rows) > 1 else 1.0
    warm = big["increment_same_process_warm"]
    # The warm increment less its embedding: listing, the diff, carrying the unchanged rows, writing.
    chain_s_item = (warm["seconds"] - warm["timings"].get("embed_s", 0.0)) / n
    budget = budget_gib * 2**30
    lines = [f"From the {n:,}-item point of `{big.get('_source', 'scale.json')}` "
             f"({cores} cores measured; nodes of {node_cores} cores, {budget_gib:g} GiB per search replica, "
             f"{qps:,.0f} queries/s):", "",
             "| | " + " | ".join(f"{t:,} items" for t in targets) + " | rests on (measured at " + f"{n:,}) |",
             "|---|" + "--:|" * len(targets) + "---|"]

    def row(label: str, fn, basis: str) -> None:
        lines.append(f"| {label} | " + " | ".join(fn(t) for t in targets) + f" | {basis} |")

    row("full embedding, CPU core-hours", lambda t: f"{t * embed_core_s / 3600:,.0f}",
        f"{embed_core_s * 1e3:.2f} core-ms an item (full run's embed_s x {cores} cores)")
    row(f"... wall hours on 10 nodes of {node_cores} cores", lambda t: f"{t * embed_core_s / 3600 / (10 * node_cores):,.2f}",
        "the same, spread evenly (Ray Data scales actors and decode tasks by config)")
    row("embeddings Parquet, GB", lambda t: f"{t * parquet_b / 1e9:,.0f}", f"{parquet_b:,.0f} bytes an item")
    row("index graphs (vectors + links), GiB", lambda t: f"{t * graph_b / 2**30:,.0f}",
        f"{graph_b:,.0f} bytes an item (index.bin + sub-indexes)")
    row(f"search shards at {budget_gib:g} GiB a replica", lambda t: f"{math.ceil(t * replica_b / budget):,}",
        f"{replica_b:,.0f} bytes of replica RSS an item")
    row("full index build, hours (n log n)", lambda t: f"{build_s * t / n * math.log(t) / math.log(n) / 3600:,.1f}",
        f"{build_s:,.0f} s at {n:,} ({big['index_full'].get('mode')}, all cores of this machine)")
    row("nightly 1% increment: index update, minutes",
        lambda t: f"{0.01 * t * inc_s_item / 60:,.1f}", f"{inc_s_item * 1e3:.2f} ms a changed item")
    row("nightly 1% increment: list, diff, carry, write, minutes (one driver)",
        lambda t: f"{t * chain_s_item / 60:,.1f}",
        f"{chain_s_item * 1e6:.1f} us a catalogue item (the warm increment less its embedding)")
    row("nightly 1% increment: embedding the changed items, CPU core-minutes",
        lambda t: f"{0.01 * t * embed_core_s / 60:,.0f}", "the full run's cost an item")
    row("search p50 per shard, ms (1 thread)", lambda t: f"{p50 * p50_growth ** math.log10(min(t, budget / replica_b) / n):.2f}",
        f"{p50:.3f} ms, x{p50_growth:.2f} per 10x items (measured slope)")

    def cores_for(t: int) -> str:
        shards = max(1, math.ceil(t * replica_b / budget))
        per_shard = min(t / shards, budget / replica_b)
        shard_ms = p50 * p50_growth ** math.log10(per_shard / n)
        # category=all asks every shard: its CPU per query is the sum over shards; at 60% utilisation.
        return f"{math.ceil(qps * shards * shard_ms / 1000 / 0.6):,}"

    row(f"search cores for {qps:,.0f} q/s, category=all", cores_for,
        "shards x per-shard p50, 60% utilisation; the classifier and HTTP are extra")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", help="the --json file benchmarks/scale.py wrote")
    p.add_argument("--cores", type=int, default=2, help="cores of the machine that measured")
    p.add_argument("--node-cores", type=int, default=16)
    p.add_argument("--replica-budget-gib", type=float, default=16.0)
    p.add_argument("--qps", type=float, default=1000.0)
    p.add_argument("--markdown")
    args = p.parse_args(argv)
    rows = json.loads(Path(args.results).read_text())
    for r in rows:
        r["_source"] = Path(args.results).name
    text = plan(rows, cores=args.cores, node_cores=args.node_cores, budget_gib=args.replica_budget_gib, qps=args.qps)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
