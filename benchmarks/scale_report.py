"""The scale benchmark's table (markdown) and log-log plots of cost against catalogue items, from
the rows benchmarks/scale.py measures (or an earlier run's JSON: ``scale.py --from-json``)."""

from __future__ import annotations


def markdown(rows: list[dict], command: str, wall_s: float) -> str:
    def g(row, *path, fmt="{:.1f}"):
        v = row
        for p in path:
            v = (v or {}).get(p)
        return "–" if v is None else fmt.format(v)

    lines = [f"Measured with `{command}` ({wall_s / 60:.0f} min in all).", "",
             "| items | full run s | items/s | driver peak RSS MB | tree peak RSS MB | Parquet MB "
             "| 1% incr. same process, cold / warm s | 1% incr. fresh job s | index full s | index incr. s | recall full/incr. "
             "| replica load s | replica RSS MB | graphs MB | p50/p99 ms (ef) all | p50/p99 ms (ef) category |",
             "|" + "--:|" * 16]
    for r in rows:
        rep = r.get("replica", {})
        lines.append("| " + " | ".join([
            f"{r['items']:,}", g(r, "full", "seconds"), g(r, "full", "items_per_s", fmt="{:,.0f}"),
            g(r, "full", "driver_rss_mb", fmt="{:,.0f}"), g(r, "full", "tree_rss_mb", fmt="{:,.0f}"),
            g(r, "parquet_mb", fmt="{:,.0f}"),
            f"{g(r, 'increment_same_process', 'seconds')} / {g(r, 'increment_same_process_warm', 'seconds')}",
            g(r, "increment_fresh_job", "seconds"), g(r, "index_full", "seconds"), g(r, "index_incremental", "seconds"),
            f"{g(r, 'index_full', 'recall_at_10', fmt='{:.4f}')}/{g(r, 'index_incremental', 'recall_at_10', fmt='{:.4f}')}",
            g(rep, "load_s"), g(rep, "rss_mb", fmt="{:,.0f}"), g(rep, "graph_mb", fmt="{:,.0f}"),
            *(f"{g(rep, k, 'p50_ms', fmt='{:.3f}')}/{g(rep, k, 'p99_ms', fmt='{:.3f}')} ({g(rep, k, 'ef', fmt='{}')})"
              for k in ("unfiltered", "category"))]) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [r["items"] for r in rows]

    def series(*keys):
        out = []
        for r in rows:
            v = r
            for k in keys:
                v = (v or {}).get(k)
            out.append(v)
        return out

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for label, keys in (("full embedding run", ("full", "seconds")),
                        ("1% increment, same process (model loaded)", ("increment_same_process_warm", "seconds")),
                        ("1% increment, fresh job", ("increment_fresh_job", "seconds")),
                        ("index full build", ("index_full", "seconds")),
                        ("index incremental update", ("index_incremental", "seconds")),
                        ("replica load (hot swap)", ("replica", "load_s"))):
        axes[0].plot(n, series(*keys), marker="o", label=label)
    axes[0].set_ylabel("seconds")
    for label, keys in (("embedding driver", ("full", "driver_rss_mb")), ("driver + Ray tree", ("full", "tree_rss_mb")),
                        ("index build", ("index_full", "rss_mb")), ("search replica", ("replica", "rss_mb")),
                        ("replica graphs (files)", ("replica", "graph_mb")), ("Parquet", ("parquet_mb",))):
        axes[1].plot(n, series(*keys), marker="o", label=label)
    axes[1].set_ylabel("MB")
    for label, keys in (("p50 unfiltered", ("replica", "unfiltered", "p50_ms")),
                        ("p99 unfiltered", ("replica", "unfiltered", "p99_ms")),
                        ("p50 in category", ("replica", "category", "p50_ms")),
                        ("p99 in category", ("replica", "category", "p99_ms"))):
        axes[2].plot(n, series(*keys), marker="o", label=label)
    axes[2].set_ylabel("ms per query (1 thread, recall@10 >= 0.99)")
    for ax, title in zip(axes, ("time", "memory and bytes", "search latency")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("catalogue items")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
