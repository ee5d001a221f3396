"""Joining Ray: the configured cluster, or a local one started in-process (the default)."""

from __future__ import annotations

import logging
import os

log = logging.getLogger("vitrine.ray")


def ensure_ray(address: str = "", num_cpus: int = 0, *, metrics_export_port: int = 0) -> None:
    """Connect once per process: to ``address`` ("auto", "ray://…", "host:port"), else to the
    cluster ``RAY_ADDRESS`` names (a submitted job), else to a private local Ray with ``num_cpus``
    CPUs (0 = all). A process already connected keeps its connection.

    ``metrics_export_port`` (local Ray only): where Ray's metrics agent serves Prometheus text
    (``/metrics``); 0 lets Ray pick one. On a cluster, ``ray start --metrics-export-port`` sets it.
    """
    import ray

    if ray.is_initialized():
        return
    env = os.environ.get("RAY_ADDRESS", "")
    if not address and env.startswith(("http://", "https://")):
        # An http address is the Jobs API that `vitrine submit` talks to (the README suggests
        # exporting it); ray.init() would try to join it as a cluster and fail. Local commands
        # start their own Ray instead, as they do without it.
        log.info("RAY_ADDRESS=%s is a Jobs API address (for vitrine submit); starting a local Ray", env)
        address = "local"
    elif not address and not env:
        # Nothing named a cluster: start a private one. A bare ray.init() would instead join
        # whatever `ray start` last left in /tmp/ray/ray_current_cluster on this machine (another
        # user's, a stale test's) and then refuse num_cpus. A job submitted to a cluster has
        # RAY_ADDRESS set by Ray; joining a `ray start` cluster by hand is --address auto.
        address = "local"
    address = address or env  # RAY_ADDRESS=local (serve_load's children) also starts a private one
    if address == "local":
        ray.init(address="local", num_cpus=num_cpus or None, include_dashboard=False,
                 **({"_metrics_export_port": metrics_export_port} if metrics_export_port else {}))
    else:
        # A cluster's nodes were sized by `ray start`: num_cpus is not ours to set there.
        ray.init(address=address)


def metrics_url() -> str | None:
    """The Prometheus endpoint of this process's Ray node, once connected."""
    import ray

    try:
        node = ray._private.worker.global_worker.node  # no public accessor for the port
        return f"http://{node.node_ip_address}:{node.metrics_export_port}/metrics"
    except Exception:
        return None
