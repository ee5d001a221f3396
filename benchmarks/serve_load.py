"""Closed-loop HTTP load on ``POST /v1/search``: the Ray Serve app against the published design
as a single-process server (``benchmarks/baseline_server.py``), in one run, on loopback.

    RAY_AUTH_MODE=disabled TF_CPP_MIN_LOG_LEVEL=2 .venv/bin/python benchmarks/serve_load.py \
        --markdown docs/BENCHMARKS.md          # baseline, then Serve as shipped and with the best settings
    ... benchmarks/serve_load.py --systems baseline,serve,serve-noop \
        --serve-config shipped,fixed-211-throughput@/tmp/patched   # a patched copy of serve/ in /tmp/patched
    ... benchmarks/serve_load.py --sweep --concurrency 1,16,32 --duration 8   # every SERVE_CONFIGS entry

Both systems serve the same artifacts (``$VITRINE_STORAGE``: ``indexes/LATEST`` and the model it
was built with) and get the same queries: real catalogue PNGs, a different one for every
request. One system runs at a time, each in its own process tree (a local Ray with 2 CPUs for
Serve, deployed by ``jobs.serve_app.run`` from ``serve/config.yaml`` with the overrides of
``SERVE_CONFIGS``); it is stopped before the next starts. For each concurrency N, N clients on
keep-alive connections send a request as soon as their previous one is answered, for
``--warmup`` seconds (not counted) and then ``--duration`` seconds; throughput counts the 200s
completed in that window, latency percentiles are over them, anything else is an error. The
generator (``benchmarks/loadgen.py``) runs in this process and shares the 2 cores with the
server, the same for both systems. Reported besides: the server tree's CPU time per request, the
generator's CPU, and the CPU other processes on the machine used during the window (a window
where that exceeds ``--other-max`` is measured again). Before the load, the first
``--check-queries`` answers of each system are kept and compared with the baseline's (same
class, overlap of the result lists).

A latency CDF (``benchmarks/latency_cdf.py``: one panel per concurrency, one line per system,
from every OK request of the window) is written next to the results: ``--cdf PATH``, by default
``<json name>_latency_cdf.png`` beside ``--json``, else ``serve_latency_cdf.png`` beside
``--markdown`` (and linked from the Markdown block).

``serve-noop`` is Ray Serve with nothing to do (a replica returning a canned answer of the same
size): the ceiling any handler code could reach with this stack on this machine.

The parts, beside this driver: ``serve_configs.py`` (the settings), ``serve_systems.py`` (starting
and stopping each system) and ``serve_children.py`` (what runs inside the Serve children),
``serve_measure.py`` (a system's windows), ``cpu_usage.py``, ``serve_report.py`` (the Markdown).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cpu_usage import load_average
from latency_cdf import plot_latency_cdf
from serve_children import noop_child, serve_child
from serve_configs import SERVE_CONFIGS, ingress_replicas
from serve_measure import measure, query_images
from serve_report import cdf_lines, cdf_path, report_lines, write_markdown
from serve_systems import start_baseline, start_noop, start_serve


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--storage", default=os.environ.get("VITRINE_STORAGE", str(ROOT / ".vitrine")))
    p.add_argument("--concurrency", default="1,4,16,32", help="comma-separated client counts")
    p.add_argument("--duration", type=float, default=20.0, help="measured seconds per concurrency")
    p.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds before each window")
    p.add_argument("--k", type=int, default=30, help="results per search (the app's default_k)")
    p.add_argument("--queries", type=int, default=2000, help="distinct catalogue PNGs to cycle through")
    p.add_argument("--systems", default="baseline,serve")
    p.add_argument("--serve-config", default="shipped,fixed-111-throughput",
                   help="comma-separated Serve settings to measure, names from SERVE_CONFIGS: "
                        f"{', '.join(SERVE_CONFIGS)}; NAME@DIR deploys a modified `serve` package from DIR "
                        "(a patched copy, to measure a proposed change to serve/)")
    p.add_argument("--noop-config", default="", help="process-wide settings for serve-noop (default: the first "
                                                      "--serve-config)")
    p.add_argument("--check-queries", type=int, default=100,
                   help="answers compared with the baseline's (class and result overlap)")
    p.add_argument("--sweep", action="store_true", help="measure every entry of SERVE_CONFIGS (Serve only)")
    p.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray")
    p.add_argument("--baseline-infer", default="auto")
    p.add_argument("--baseline-tf-threads", type=int, default=0)
    p.add_argument("--other-max", type=float, default=0.25,
                   help="a window during which other processes used more cores than this is measured again")
    p.add_argument("--retries", type=int, default=2, help="re-measurements of a window disturbed by other load")
    p.add_argument("--quiet-wait", type=float, default=120.0,
                   help="seconds to wait, before each window, for other load to drop below --other-max")
    p.add_argument("--json", help="write every row to this JSON file")
    p.add_argument("--markdown", help="write the results into this file's '## Serving (issue 4)' section")
    p.add_argument("--cdf", help="latency CDF PNG (default: next to --json as <name>_latency_cdf.png, else "
                                 "serve_latency_cdf.png next to --markdown, else none)")
    p.add_argument("--_serve", nargs=2, help=argparse.SUPPRESS)
    p.add_argument("--_noop", type=int, nargs=2, help=argparse.SUPPRESS)
    p.add_argument("--_quiet-proxy", action="store_true", help=argparse.SUPPRESS)
    return p


def _child_env(storage: str) -> dict:
    env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled"),
           "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
           "VITRINE_STORAGE": storage, "PYTHONPATH": str(ROOT)}
    # Always a private local Ray, never someone's running cluster: without an address ray.init
    # joins the cluster a `ray start` on this machine left running; "local" starts a new one.
    env["RAY_ADDRESS"] = "local"
    return env


def _serve_configs(p: argparse.ArgumentParser, args) -> list[str]:
    names = list(SERVE_CONFIGS) if args.sweep else [c.strip() for c in args.serve_config.split(",") if c.strip()]
    for c in names:
        if c.split("@")[0] not in SERVE_CONFIGS:
            p.error(f"unknown --serve-config {c!r}; one of {', '.join(SERVE_CONFIGS)}")
    return names


def run_systems(systems: list[str], serve_configs: list[str], noop: tuple[str, int], bodies: list[bytes],
                concurrencies: list[int], args, env) -> tuple[list[dict], dict, dict]:
    """Each system (each Serve setting) started, measured and stopped in turn: rows, meta, answers."""
    rows, meta, answers = [], {"baseline": {}, "serve": {}}, {}
    for system in systems:
        for name in (serve_configs if system == "serve" else [None]):
            name, _, code = (name or "").partition("@")
            label = {"baseline": "baseline", "serve-noop": "serve-noop"}.get(
                system, f"serve ({name}{', code ' + Path(code).name if code else ''})")
            print(f"{label}: starting ...", flush=True)
            t0 = time.monotonic()
            if system == "baseline":
                server = start_baseline(args, env)
            elif system == "serve-noop":  # with the process-wide settings of --serve-config
                server = start_noop(*noop, args, env)
            else:
                server = start_serve(name, code, args, env)
            try:
                info = dict(server.info, startup_s=round(time.monotonic() - t0, 1))
                rows_here = measure(server, bodies, concurrencies, args, label)
                answers[label] = server.answers
                if system == "serve":
                    info["replicas_after"] = server.ask("replicas")
                rows += rows_here
                meta.setdefault(system, {})[label] = info
                print(f"{label}: {json.dumps(info)}", flush=True)
            finally:
                server.stop()
    return rows, meta, answers


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    if args._noop:
        return noop_child(args._noop[0], args.num_cpus, args._noop[1])
    if args._serve:
        return serve_child(args._serve[0], int(args._serve[1]), args.num_cpus, args._quiet_proxy)

    env = _child_env(args.storage)
    concurrencies = [int(c) for c in args.concurrency.split(",") if c.strip()]
    systems = ["serve"] if args.sweep else [s.strip() for s in args.systems.split(",") if s.strip()]
    serve_configs = _serve_configs(p, args)
    noop_config = args.noop_config or serve_configs[0].split("@")[0]
    noop_replicas = ingress_replicas(noop_config)  # as many no-op replicas as the Ingress has there
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load_before = load_average()
    print(f"load average before: {load_before}; {os.cpu_count()} CPUs; loading {args.queries} query images",
          flush=True)
    bodies = query_images(args.storage, args.queries)
    rows, meta, answers = run_systems(systems, serve_configs, (noop_config, noop_replicas), bodies, concurrencies,
                                      args, env)
    load_after = load_average()
    latencies = [(r["system"], r["concurrency"], r.pop("latencies_ms")) for r in rows]

    lines = report_lines(rows, meta, answers, args=args, started=started, load=(load_before, load_after),
                         n_queries=len(bodies), noop_config=noop_config, noop_replicas=noop_replicas)
    cdf = cdf_path(args)
    if cdf:
        plot_latency_cdf(cdf, latencies)
        lines += cdf_lines(cdf, args.markdown)
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "meta": meta, "load": [load_before, load_after]},
                                              indent=1))
    if args.markdown:
        write_markdown(args.markdown, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
