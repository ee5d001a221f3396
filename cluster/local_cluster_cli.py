"""The command line of the local cluster: ``up`` starts one and records its pids in a state file,
then returns while it keeps running; ``status`` and ``down`` read that file. Run as
``python -m cluster.local_cluster up|status|down`` (usage in :mod:`cluster.local_cluster`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import local_cluster
from .local_cluster import LocalCluster, LocalClusterConfig
from .processes import is_ray_start_of

STATE_FILE = "state.json"


def default_state_dir() -> str:
    from artifacts import storage

    root = storage.default_root()
    # The state file names local pids: it belongs on this machine, never in object storage.
    return os.path.join(".vitrine" if storage.is_remote(root) else root, "local-cluster")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cluster.local_cluster", description=local_cluster.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=("up", "status", "down"))
    p.add_argument("--workers", type=int, help="worker nodes (default 2)")
    p.add_argument("--head-cpus", type=int, help="logical CPUs of the head (default 1)")
    p.add_argument("--worker-cpus", type=int, help="logical CPUs of each worker (default 1)")
    p.add_argument("--memory-mb", type=int, help="Ray's logical memory per node (default 2048)")
    p.add_argument("--object-store-mb", type=int, help="object store per node (default 256)")
    p.add_argument("--state-dir", help="where `up` records the cluster's pids "
                                       "(default <storage root>/local-cluster, i.e. .vitrine/local-cluster)")
    return p


def main(argv: list[str] | None = None) -> int:
    from artifacts.configuration import load_config

    args = build_parser().parse_args(argv)
    state_path = Path(args.state_dir or default_state_dir()) / STATE_FILE
    if args.action == "up":
        if state_path.exists() and _any_alive(json.loads(state_path.read_text())):
            print(f"a local cluster is already up ({state_path}); `python -m cluster.local_cluster down` first",
                  file=sys.stderr)
            return 1
        config = load_config(LocalClusterConfig, values={
            "workers": args.workers, "head_cpus": args.head_cpus, "worker_cpus": args.worker_cpus,
            "memory_mb": args.memory_mb, "object_store_mb": args.object_store_mb})
        cluster = LocalCluster(config).start()
        state_path.parent.mkdir(parents=True, exist_ok=True)
        state_path.write_text(json.dumps(cluster.to_state(), indent=2))
        _print_status(cluster)
        print(f"\nsubmit jobs:  vitrine submit --address {cluster.dashboard_url} models --json")
        print(f"drivers:      RAY_ADDRESS={cluster.address} RAY_AUTH_MODE=disabled python ...")
        print("stop it:      python -m cluster.local_cluster down")
        return 0
    if not state_path.exists():
        print(f"no local cluster recorded in {state_path}", file=sys.stderr)
        return 1
    cluster = LocalCluster.from_state(json.loads(state_path.read_text()))
    if args.action == "status":
        _print_status(cluster)
        return 0
    cluster.stop()
    state_path.unlink()
    print(f"stopped the local cluster ({len(cluster.nodes)} nodes)")
    return 0


def _any_alive(state: dict) -> bool:
    return any(is_ray_start_of(n["pid"], state["temp_dir"]) for n in state["nodes"])


def _print_status(cluster: LocalCluster) -> None:
    try:
        states = cluster.node_states()
    except Exception as exc:
        states = {}
        print(f"(dashboard not answering: {type(exc).__name__})")
    print(f"dashboard / Jobs API: {cluster.dashboard_url}")
    print(f"GCS address:          {cluster.address}")
    print(f"logs:                 {cluster.temp_dir}")
    for n in cluster.nodes:
        state = states.get(n.node_id, "?" if n.alive else "DEAD")
        print(f"  {n.name:<9} pid {n.pid:<7} node {n.node_id[:12] or '?':<12} cpus {n.num_cpus} "
              f"{json.dumps(n.resources) if n.resources else '':<40} {state}")
