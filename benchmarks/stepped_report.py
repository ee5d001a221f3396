"""What ``benchmarks/stepped_load.py`` makes of its samples and of the Serve state it polled: each
step's requests, failures and percentiles, p99 over time, when each deployment's replica count
changed, the plot and the Markdown block."""

from __future__ import annotations

import os

import numpy as np


def _pct(values: list[float], p: float) -> float | None:
    return round(float(np.percentile(values, p)), 1) if values else None


def _steps(samples, starts: list[float], end: float, steps: list[tuple[int, float]]) -> list[dict]:
    """Per step: the requests it started (their outcome counts wherever they ended)."""
    edges = [*starts, end]
    rows = []
    for i, (clients, seconds) in enumerate(steps):
        mine = [s for s in samples if edges[i] <= s.start < edges[i + 1]]
        ok = [(s.end - s.start) * 1000 for s in mine if s.status == 200]
        wall = max(1e-9, min(edges[i + 1], max((s.end for s in mine), default=edges[i])) - edges[i])
        rows.append({"step": i + 1, "clients": clients, "seconds": seconds, "requests": len(mine),
                     "failed": len(mine) - len(ok), "rps": round(len(ok) / wall, 1),
                     "p50_ms": _pct(ok, 50), "p99_ms": _pct(ok, 99)})
    return rows


def _buckets(samples, t0: float, end: float, bucket_s: float) -> list[dict]:
    """p99 and throughput of the requests that ended in each ``bucket_s`` window from ``t0``."""
    n = int(np.ceil((end - t0) / bucket_s))
    by = [[] for _ in range(n)]
    failed = [0] * n
    for s in samples:
        i = min(n - 1, max(0, int((s.end - t0) // bucket_s)))
        if s.status == 200:
            by[i].append((s.end - s.start) * 1000)
        else:
            failed[i] += 1
    return [{"t_s": round((i + 0.5) * bucket_s, 1), "p99_ms": _pct(v, 99), "rps": round(len(v) / bucket_s, 1),
             "failed": failed[i]} for i, v in enumerate(by)]


def _series(history: list[tuple[float, dict]], t0: float) -> dict[str, list[tuple[float, int, int]]]:
    """deployment → [(seconds from t0, RUNNING replicas, autoscaler's target)]."""
    out: dict[str, list] = {}
    for t, state in history:
        for name, d in state.items():
            out.setdefault(name, []).append((round(t - t0, 2), d["running"], d["target"]))
    return out


def _first(points, after: float, test) -> float | None:
    return next((t for t, running, target in points if t >= after and test(running, target)), None)


def scaling(series: dict, high_s: float, fall_s: float) -> dict[str, dict]:
    """Per deployment: replicas when the high step began, the most it reached, and how long after
    the step began the autoscaler raised its target / the extra replica was RUNNING; how long
    after the load fell the target came back down / the count was back to where it started
    (negative: back down already during the high step)."""
    out = {}
    for name, points in series.items():
        before = [p for p in points if p[0] <= high_s] or points[:1]
        base = before[-1][1]
        peak = max(r for _, r, _ in points)
        row = {"base": base, "max": peak, "decided_after_s": None, "running_after_s": None,
               "target_down_after_s": None, "back_after_s": None}
        decided = _first(points, high_s, lambda r, t: (t or 0) > base)
        if decided is not None:
            row["decided_after_s"] = round(decided - high_s, 1)
        up = _first(points, high_s, lambda r, t: r > base)
        if up is not None:
            row["running_after_s"] = round(up - high_s, 1)
            down = _first(points, up, lambda r, t: (t or 0) <= base)
            back = _first(points, up, lambda r, t: r <= base)
            row["target_down_after_s"] = None if down is None else round(down - fall_s, 1)
            row["back_after_s"] = None if back is None else round(back - fall_s, 1)
        out[name] = row
    return out


def analyse(samples, starts: list[float], end: float, steps: list[tuple[int, float]],
            history: list[tuple[float, dict]], bucket_s: float) -> dict:
    """Everything the report, the plot and the JSON need; times in seconds from the first step."""
    t0 = starts[0]
    high = max(range(len(steps)), key=lambda i: steps[i][0])
    high_s = starts[high] - t0
    fall_s = (starts[high + 1] if high + 1 < len(starts) else end) - t0
    series = _series(history, t0)
    return {"steps": _steps(samples, starts, end, steps), "buckets": _buckets(samples, t0, end, bucket_s),
            "step_starts_s": [round(s - t0, 2) for s in starts], "end_s": round(end - t0, 2), "bucket_s": bucket_s,
            "high_step": high + 1, "high_s": round(high_s, 2), "fall_s": round(fall_s, 2),
            "replicas": series, "scaling": scaling(series, high_s, fall_s),
            "failed": sum(s.status != 200 for s in samples), "requests": len(samples),
            "statuses": {str(k): v for k, v in sorted(_count(s.status for s in samples).items())}}


def _count(values) -> dict:
    out: dict = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


def plot(path: str, result: dict) -> None:
    """Two panels over time: RUNNING replicas per deployment, and p99 with the clients per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True, height_ratios=[1, 1.3])
    for i, (name, points) in enumerate(sorted(result["replicas"].items())):
        lift = 0.04 * i  # lines of equal counts side by side, not on top of each other
        times = [p[0] for p in points]
        top.step(times, [p[1] + lift for p in points], where="post", label=f"{name} RUNNING", linewidth=1.8,
                 color=f"C{i}")
        top.step(times, [(p[2] or 0) + lift for p in points], where="post", label=f"{name} target", linewidth=1,
                 linestyle="dotted", color=f"C{i}")
    top.set_ylabel("replicas")
    peak = max((max(p[1], p[2] or 0) for points in result["replicas"].values() for p in points), default=1)
    top.set_ylim(0.5, peak + 1.3)  # room for the legend above the lines
    top.yaxis.get_major_locator().set_params(integer=True)
    top.legend(loc="upper left", fontsize=7, ncol=3)
    b = [x for x in result["buckets"] if x["p99_ms"] is not None]
    bottom.plot([x["t_s"] for x in b], [x["p99_ms"] for x in b], marker="o", markersize=3, color="C3",
                label=f"p99 per {result['bucket_s']:g} s")
    bottom.set_ylabel("p99 latency (ms)")
    bottom.set_xlabel("seconds from the first step")
    clients = bottom.twinx()
    edges = [*result["step_starts_s"], result["end_s"]]
    for i, step in enumerate(result["steps"]):
        clients.hlines(step["clients"], edges[i], edges[i + 1], colors="grey", linestyles="dashed")
        for ax in (top, bottom):
            ax.axvline(edges[i], color="grey", linewidth=0.6)
    clients.set_ylabel("clients (dashed)")
    clients.set_ylim(0, max(s["clients"] for s in result["steps"]) * 1.2)
    bottom.legend(loc="upper right", fontsize=8)
    fig.suptitle("Stepped load on POST /v1/search: replicas and p99", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _s(v) -> str:
    return "never" if v is None else f"{v:.1f} s"


def _after_fall(v) -> str:
    return f"{_s(v)} (before the load fell)" if v is not None and v < 0 else _s(v)


def report_lines(result: dict, *, plot_path: str | None, markdown: str | None, command: str) -> list[str]:
    lines = [f"Run {result['started']}: {result['cpus']}-CPU VM, no GPU; a local cluster of {result['nodes']} "
             f"`ray start` nodes with {result['cpus_per_node']} logical CPUs each ({result['nodes'] * result['cpus_per_node']} "
             f"for Ray's bookkeeping, on {result['cpus']} cores); proxy: {result['proxy']}; 1-minute load average "
             f"{result['load_before'].split()[0]} before, {result['load_after'].split()[0]} after (the run's own "
             f"processes included); {result['queries']} distinct catalogue PNGs; cluster up and app deployed "
             f"in {result['deployed_s']} s.", "", "```bash",
             f"RAY_AUTH_MODE=disabled TF_CPP_MIN_LOG_LEVEL=2 VITRINE_STORAGE={result.get('storage', '$PWD/.vitrine')} "
             ".venv/bin/python \\",
             f"  {command}", "```", ""]
    if result["deployments"]:
        lines += [f"Overrides of serve/config.yaml: `{result['deployments']}`", ""]
    lines += ["| step | clients | seconds | requests | failed | req/s | p50 ms | p99 ms |",
              "|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for s in result["steps"]:
        lines.append(f"| {s['step']} | {s['clients']} | {s['seconds']:g} | {s['requests']} | {s['failed']} | "
                     f"{s['rps']} | {s['p50_ms']} | {s['p99_ms']} |")
    lines += ["", f"Failed requests over the whole run: **{result['failed']}** of {result['requests']} "
                  f"(statuses {result['statuses']}).", "",
              f"| deployment | replicas at step {result['high_step']} | most | target raised after | "
              f"extra replica RUNNING after | target back down after the load fell | replicas back after the load fell |",
              "|:--|--:|--:|--:|--:|--:|--:|"]
    for name, r in sorted(result["scaling"].items()):
        lines.append(f"| {name} | {r['base']} | {r['max']} | {_s(r['decided_after_s'])} | {_s(r['running_after_s'])} | "
                     f"{_after_fall(r['target_down_after_s'])} | {_after_fall(r['back_after_s'])} |")
    if plot_path:
        rel = os.path.relpath(plot_path, os.path.dirname(os.path.abspath(markdown))) if markdown else plot_path
        lines += ["", f"![replicas and p99 over time under stepped load]({rel})"]
    return lines
