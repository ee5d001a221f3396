"""Joining Ray: the configured cluster, or a local one started in-process (the default)."""

from __future__ import annotations


def ensure_ray(address: str = "", num_cpus: int = 0) -> None:
    """Connect once per process; ``address`` ("auto", "ray://…", "host:port") or a local Ray with
    ``num_cpus`` CPUs (0 = all). A process already connected keeps its connection."""
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address)
    else:
        ray.init(num_cpus=num_cpus or None, include_dashboard=False)
