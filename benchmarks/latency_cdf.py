"""The latency CDF picture of ``benchmarks/serve_load.py``: one panel per client count, one line
per system, from the per-request latencies the load generator kept."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def ecdf(latencies_ms) -> tuple[np.ndarray, np.ndarray]:
    """Sorted latencies and the fraction of requests at or below each."""
    x = np.sort(np.asarray(latencies_ms, dtype=np.float64))
    return x, np.arange(1, len(x) + 1) / max(len(x), 1)


def plot_latency_cdf(path: str | Path, series: list[tuple[str, int, list[float]]]) -> Path:
    """Write the CDF PNG; ``series``: ``(system, concurrency, latencies_ms)`` per measured row."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    concurrencies = sorted({c for _, c, _ in series})
    systems = list(dict.fromkeys(s for s, _, _ in series))
    colour = {s: f"C{i % 10}" for i, s in enumerate(systems)}
    cols = min(len(concurrencies), 2) or 1
    rows = -(-len(concurrencies) // cols) or 1
    fig = Figure(figsize=(6.0 * cols, 3.8 * rows + 0.8), dpi=110, layout="constrained")
    axes = np.asarray(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, c in zip(axes, concurrencies):
        for system, conc, lat in series:
            if conc != c or not len(lat):
                continue
            x, y = ecdf(lat)
            ax.step(x, y, where="post", color=colour[system], linewidth=1.5)
            p99 = float(np.percentile(x, 99))
            ax.plot([p99], [0.99], "o", color=colour[system], markersize=4)
        for q in (0.5, 0.99):
            ax.axhline(q, color="0.6", linewidth=0.7, linestyle=":")
        ax.set_xscale("log")
        # Plain 1-2-5 labels: the default log labels (2x10^0 ...) overlap on a narrow range.
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_ylim(0.0, 1.01)
        ax.set_title(f"{c} client{'s' if c != 1 else ''}", fontsize=10)
        ax.set_xlabel("latency, ms (log scale)")
        ax.set_ylabel("fraction of requests")
        ax.grid(alpha=0.3, which="both")
    for ax in axes[len(concurrencies):]:
        ax.set_visible(False)
    fig.legend([Line2D([], [], color=colour[s], linewidth=2) for s in systems], systems,
               loc="outside lower center", ncol=min(len(systems), 3), fontsize=8, frameon=False)
    fig.suptitle("POST /v1/search latency CDF (OK requests in the measured window; dot = p99, dotted = p50/p99)",
                 fontsize=10)
    path = Path(path)
    fig.savefig(path)
    return path
