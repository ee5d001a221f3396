"""The report of ``benchmarks/serve_load.py``: the Markdown text (conditions, the systems, the
table, answers compared with the baseline's, throughput against the baseline, the peaks), the
latency CDF's path and link, and the block it replaces in docs/BENCHMARKS.md."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from markdown_block import write_block
from serve_configs import SERVE_CONFIGS
from serve_measure import agreement

SECTION = "## Serving (issue 4)"
BEGIN, END = "<!-- serve_load:begin -->", "<!-- serve_load:end -->"


def _fmt(v, nd=1):
    return "–" if v is None or math.isnan(v) else f"{v:,.{nd}f}"


def table(rows: list[dict]) -> list[str]:
    out = [("| system | clients | requests/s | p50 ms | p95 ms | p99 ms | errors | server CPU ms/request | "
           "CPU cores: server / load generator / other processes |"), "|:--|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in rows:
        out.append(f"| {r['system']} | {r['concurrency']} | {_fmt(r['rps'])} | {_fmt(r['p50_ms'])} | "
                   f"{_fmt(r['p95_ms'])} | {_fmt(r['p99_ms'])} | {r['errors']} | {_fmt(r['server_cpu_ms_per_req'], 2)} | "
                   f"{r['server_cpu_cores']:.2f} / {r['client_cpu_cores']:.2f} / {r['other_cores']:.2f} |")
    return out


def comparison(base: list[dict], serve: list[dict], label: str) -> list[str]:
    by_c = {r["concurrency"]: r for r in base}
    out = [f"| clients | {label} ÷ baseline throughput | p99 {label} / baseline (ms) | target (≥ 3×, p99 ≤ baseline) |",
           "|--:|--:|--:|:--|"]
    for r in serve:
        b = by_c.get(r["concurrency"])
        if not b or not b["rps"]:
            continue
        ratio = r["rps"] / b["rps"]
        met = ratio >= 3.0 and r["p99_ms"] <= b["p99_ms"]
        out.append(f"| {r['concurrency']} | {ratio:.2f}× | {_fmt(r['p99_ms'])} / {_fmt(b['p99_ms'])} | "
                   f"{'met' if met else 'missed'} |")
    return out


def conditions(started: str, load: tuple[str, str], n_queries: int, args) -> list[str]:
    """When, on what machine and load, with which queries: the report's first paragraph."""
    return [(f"{started}; {os.cpu_count()} CPUs; load average (1/5/15 min) before {load[0]}, after {load[1]}; "
             f"{n_queries} distinct catalogue PNGs as queries, k={args.k}; {args.warmup:g} s warm-up + "
             f"{args.duration:g} s measured per row."), ""]


def systems(meta: dict) -> list[str]:
    """A line on the baseline's inference and one on each Serve setting measured."""
    lines = []
    if meta.get("baseline"):
        b = meta["baseline"]["baseline"]
        lines.append(f"Baseline: `{b['infer']}` per query (single-image times at start-up, ms: "
                     f"{', '.join(f'{k} {v}' for k, v in b['infer_ms'].items())}), {b['tf_threads']} TF threads.")
    for label, info in meta["serve"].items():
        name = label[len("serve ("):-1].split(", code ")[0]
        lines.append(f"`{label}`: {SERVE_CONFIGS[name]['about']}; replicas after the run: "
                     f"{json.dumps(info.get('replicas_after', {}))}.")
    return lines


def noop_note(noop_config: str, noop_replicas: int) -> str:
    return (f"`serve-noop`: Ray Serve's ceiling here: the same HTTP proxy and {noop_replicas} replica(s) that "
            "read the body and return a canned answer of the same size (no decoding, model or search); "
            f"process-wide settings (env) of `{noop_config}`: "
            f"`{json.dumps(SERVE_CONFIGS[noop_config].get('env', {}))}`.")


def same_answers(meta: dict, answers: dict, k: int) -> list[str]:
    """Each Serve setting's first answers against the baseline's (class and result overlap)."""
    if "baseline" not in answers:
        return []
    lines = [""]
    for label in meta["serve"]:
        a = agreement(answers[label], answers["baseline"])
        lines.append(f"Same answers? `{label}` vs baseline on the first {a['n']} queries: same predicted class "
                     f"{a['same_class']:.0%}, top-{k} results in common {a['overlap']:.1%} (HNSW vs exact).")
    return lines


def peaks(rows: list[dict]) -> list[str]:
    """Each system's highest throughput, as a multiple of the baseline's (none without a baseline)."""
    peak = {}
    for r in rows:
        if r["rps"] > peak.get(r["system"], {"rps": -1})["rps"]:
            peak[r["system"]] = r
    if "baseline" not in peak:
        return []
    b = peak["baseline"]
    return ["", f"Peak throughput: baseline {b['rps']:.1f} requests/s ({b['concurrency']} clients, p99 "
                f"{b['p99_ms']:.1f} ms); " + "; ".join(
                    f"{k} {r['rps']:.1f} ({r['concurrency']} clients, p99 {r['p99_ms']:.1f} ms) = "
                    f"{r['rps'] / b['rps']:.2f}× the baseline" for k, r in peak.items() if k != "baseline") + "."]


def report_lines(rows: list[dict], meta: dict, answers: dict, *, args, started: str, load: tuple[str, str],
                 n_queries: int, noop_config: str, noop_replicas: int) -> list[str]:
    """The report's Markdown lines, without the latency CDF (``cdf_lines``)."""
    lines = conditions(started, load, n_queries, args) + systems(meta) + [""] + table(rows)
    if meta.get("serve-noop"):
        lines.append(noop_note(noop_config, noop_replicas))
    lines += same_answers(meta, answers, args.k)
    base = [r for r in rows if r["system"] == "baseline"]
    for label in [*meta["serve"], *meta.get("serve-noop", {})]:
        if base:
            lines += [""] + comparison(base, [r for r in rows if r["system"] == label], label)
    return lines + peaks(rows)


def cdf_path(args) -> str:
    """``--cdf``, else beside ``--json`` as <name>_latency_cdf.png, else beside ``--markdown``, else ""."""
    return args.cdf or (str(Path(args.json).with_name(Path(args.json).stem + "_latency_cdf.png")) if args.json else
                        str(Path(args.markdown).with_name("serve_latency_cdf.png")) if args.markdown else "")


def cdf_lines(cdf: str, markdown: str | None) -> list[str]:
    """The CDF picture's link from the Markdown file (none without one)."""
    if not markdown:
        return []
    link = os.path.relpath(Path(cdf).resolve(), Path(markdown).resolve().parent)
    return ["", f"![latency CDF]({link})", "",
            "Latency CDF of each row's OK requests (one panel per client count, one line per system)."]


def write_markdown(path: str, text: str) -> None:
    """Replace the serve_load block in ``path`` (or add it, under SECTION)."""
    write_block(path, text, BEGIN, END, SECTION)
