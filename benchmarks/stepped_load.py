"""Stepped load on ``POST /v1/search`` (low → high → low) against the Serve app on a local
multi-node cluster: replicas of each deployment and p99 latency over time, and how long the
autoscaler took to add a replica and to remove it again.

    RAY_AUTH_MODE=disabled TF_CPP_MIN_LOG_LEVEL=2 VITRINE_STORAGE=$PWD/.vitrine \\
        .venv/bin/python benchmarks/stepped_load.py --markdown docs/BENCHMARKS.md \\
        --plot docs/img/stepped_load.png --json /tmp/stepped_load.json
    ... benchmarks/stepped_load.py --steps 2:30,32:60,2:90 --nodes 3 --cpus-per-node 2
    ... benchmarks/stepped_load.py --deployments '{"Classifier": {"autoscaling_config": {"target_ongoing_requests": 2}}}'
    ... benchmarks/stepped_load.py --from-json /tmp/stepped_load.json --plot ... --markdown ...   # re-render a run

The cluster is ``cluster/local_cluster.py``: ``--nodes`` real ``ray start`` nodes on loopback (a
head and workers), each with ``--cpus-per-node`` logical CPUs. Those are Ray's bookkeeping, not
cores: on a 2-core machine, 3 nodes of 2 give the autoscaler room to place replicas up to every
deployment's ``max_replicas``, while all of them share the same 2 cores. The app is deployed as
``vitrine serve --address`` deploys it (``jobs.serve_app.run``), from serve/config.yaml with the
``--deployments`` overrides, behind Serve's HAProxy ingress in Ray's throughput mode (the settings
``vitrine serve`` uses on a local Ray; ``--proxy python`` for the Python proxy), with the proxy on
the head only (every node's proxy would want the same port on one machine).

The load is ``benchmarks/loadgen.py``'s closed loop (each client sends its next request as soon as
the previous one is answered), its concurrency changed at each step; the queries are real
catalogue PNGs, a different one for every request. While it runs, a thread reads the app's state
from the dashboard's Serve REST API (``GET /api/serve/applications/``, what ``serve status``
shows) every ``--poll-s``: per deployment the RUNNING replicas and the autoscaler's target.
Any answer but a 200 search answer is a failed request.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cpu_usage import load_average
from loadgen import build_requests, run_steps
from serve_measure import is_search_answer, query_images, wait_serving
from stepped_report import analyse, plot, report_lines, scaling

PROXY_ENV = {  # what `vitrine serve` sets for a local Ray (jobs/serve_app.py), per --proxy
    "haproxy": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_HA_PROXY": "1"},
    "python": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_HA_PROXY": "0"},
}


@dataclass(frozen=True)
class SteppedLoadConfig:
    storage: str = ""  # "" = $VITRINE_STORAGE or ./.vitrine: indexes/LATEST and its model
    steps: tuple[tuple[int, float], ...] = ((2, 40.0), (32, 75.0), (2, 90.0))  # (clients, seconds)
    nodes: int = 3  # the head and nodes - 1 workers
    cpus_per_node: int = 2  # logical CPUs each node announces to Ray
    memory_mb: int = 4096  # Ray's logical memory per node
    proxy: str = "haproxy"  # or "python"
    deployments: dict = field(default_factory=dict)  # overrides of serve/config.yaml, by deployment
    poll_s: float = 0.5
    bucket_s: float = 5.0  # width of the p99-over-time buckets
    k: int = 30
    queries: int = 2000


def _get_json(url: str, timeout_s: float = 5.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout_s) as r:
        return json.loads(r.read())


def _deployment_state(details: dict) -> dict:
    out = {}
    for app in (details.get("applications") or {}).values():
        for name, d in (app.get("deployments") or {}).items():
            out[name] = {"running": sum(r.get("state") == "RUNNING" for r in d.get("replicas") or []),
                         "replicas": len(d.get("replicas") or []), "target": d.get("target_num_replicas")}
    return out


class Poller(threading.Thread):
    """Reads the Serve state every ``poll_s`` until stopped: ``history`` is ``[(perf_counter, state)]``."""

    def __init__(self, dashboard_url: str, poll_s: float):
        super().__init__(daemon=True)
        self.url, self.poll_s = f"{dashboard_url}/api/serve/applications/", poll_s
        self.history: list[tuple[float, dict]] = []
        self.failures = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            t = time.perf_counter()
            try:
                self.history.append((t, _deployment_state(_get_json(self.url))))
            except (OSError, ValueError):  # the dashboard busy for a moment: a gap in the series
                self.failures += 1
            self._halt.wait(max(0.0, self.poll_s - (time.perf_counter() - t)))

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)


def _deploy(cluster, config: SteppedLoadConfig, storage_root: str, port: int) -> str:
    import yaml

    from jobs.serve_app import ServeConfig
    from jobs.serve_app import run as serve_run
    from serve import deploy

    spec = deploy.load_config(args={"storage": storage_root}, deployments=config.deployments,
                              http={"host": "127.0.0.1", "port": port})
    spec["proxy_location"] = "HeadOnly"  # every node's proxy would want the same port on one machine
    with tempfile.TemporaryDirectory(prefix="vitrine-stepped-") as tmp:
        path = Path(tmp) / "serve.yaml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        return serve_run(ServeConfig(config=str(path), address=cluster.address, storage=storage_root)).url


def run(config: SteppedLoadConfig) -> dict:
    """Start the cluster, deploy, run the steps while polling the Serve state, stop everything;
    the samples, the state history and their analysis (``stepped_report.analyse``)."""
    from artifacts import storage
    from cluster.local_cluster import LocalCluster, LocalClusterConfig
    from serve_systems import free_port

    storage_root = config.storage or storage.default_root()
    bodies = query_images(storage_root, config.queries)
    proxy_env = PROXY_ENV[config.proxy]
    # This process talks to the cluster (driver, dashboard) with the nodes' auth mode and Serve modes.
    os.environ.update({"RAY_AUTH_MODE": "disabled", **proxy_env})
    os.environ.pop("RAY_ADDRESS", None)
    cluster_config = LocalClusterConfig(
        workers=config.nodes - 1, head_cpus=config.cpus_per_node, worker_cpus=config.cpus_per_node,
        memory_mb=config.memory_mb, object_store_mb=256,
        env=("TF_CPP_MIN_LOG_LEVEL=2", *(f"{k}={v}" for k, v in proxy_env.items())))
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load_before = load_average()
    t_start = time.monotonic()
    with LocalCluster(cluster_config) as cluster:
        import ray

        try:
            url = _deploy(cluster, config, storage_root, free_port())
            deployed_s = time.monotonic() - t_start
            search = f"{url.rstrip('/')}/v1/search?k={config.k}"
            requests = build_requests(search, bodies)
            wait_serving(search, requests[0])
            poller = Poller(cluster.dashboard_url, config.poll_s)
            poller.start()
            time.sleep(2 * config.poll_s)  # the state before the first step
            try:
                samples, starts = run_steps(search, requests, list(config.steps), check=is_search_answer)
                end = time.perf_counter()
            finally:
                poller.stop()
        finally:
            from ray import serve

            if ray.is_initialized():
                serve.shutdown()
                ray.shutdown()
    load_after = load_average()
    result = analyse(samples, starts, end, list(config.steps), poller.history, config.bucket_s)
    result.update({"load_before": load_before, "load_after": load_after, "deployed_s": round(deployed_s, 1),
                   "poll_failures": poller.failures, "cpus": os.cpu_count(), "nodes": config.nodes,
                   "cpus_per_node": config.cpus_per_node, "proxy": config.proxy,
                   "deployments": config.deployments, "queries": len(bodies), "storage": storage_root,
                   "started": started})
    return result


def _steps(text: str) -> tuple[tuple[int, float], ...]:
    out = []
    for part in text.split(","):
        clients, _, seconds = part.partition(":")
        out.append((int(clients), float(seconds)))
    return tuple(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--storage", default=os.environ.get("VITRINE_STORAGE", ""))
    p.add_argument("--steps", default="2:40,32:75,2:90", help="clients:seconds, comma-separated, in order")
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--cpus-per-node", type=int, default=2)
    p.add_argument("--proxy", choices=sorted(PROXY_ENV), default="haproxy")
    p.add_argument("--deployments", default="{}", help="JSON overrides of serve/config.yaml's deployments")
    p.add_argument("--poll-s", type=float, default=0.5)
    p.add_argument("--bucket-s", type=float, default=5.0)
    p.add_argument("--json", help="write the samples' summary, the state history and the analysis here")
    p.add_argument("--plot", help="replicas and p99 over time (PNG)")
    p.add_argument("--markdown", help="write the results into this file's stepped-load block")
    p.add_argument("--from-json", help="no run: the plot and Markdown of a run's --json file")
    args = p.parse_args(argv)
    from artifacts.logs import setup_logging

    setup_logging()
    if args.from_json:
        result = json.loads(Path(args.from_json).read_text())
        # The replica series is the record; the times read off it follow this version's rules.
        result["scaling"] = scaling(result["replicas"], result["high_s"], result["fall_s"])
    else:
        config = SteppedLoadConfig(storage=args.storage, steps=_steps(args.steps), nodes=args.nodes,
                                   cpus_per_node=args.cpus_per_node, proxy=args.proxy,
                                   deployments=json.loads(args.deployments), poll_s=args.poll_s,
                                   bucket_s=args.bucket_s)
        result = run(config)
        result["command"] = " ".join(["benchmarks/stepped_load.py", *(sys.argv[1:] if argv is None else argv)])
    if args.json and not args.from_json:
        Path(args.json).write_text(json.dumps(result, indent=1, default=str))
    if args.plot:
        plot(args.plot, result)
    text = "\n".join(report_lines(result, plot_path=args.plot, markdown=args.markdown,
                                  command=result.get("command", "benchmarks/stepped_load.py")))
    print("\n" + text, flush=True)
    if args.markdown:
        from markdown_block import write_block

        write_block(args.markdown, text, "<!-- stepped_load:begin -->", "<!-- stepped_load:end -->",
                    "## Serving (issue 4)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
