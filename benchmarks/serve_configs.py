"""The Serve settings ``benchmarks/serve_load.py`` measures: ``deploy.load_config(deployments=...)``
overrides of serve/config.yaml, plus process-wide settings of the local Ray ("env",
"global_logging"), by name."""

from __future__ import annotations


def _fixed(ingress: int = 1, classifier: int = 1, search: int = 1) -> dict:
    def n(k):
        return {"autoscaling_config": {"min_replicas": k, "initial_replicas": k, "max_replicas": k}}
    return {"Ingress": n(ingress), "Classifier": n(classifier), "Search": n(search)}


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _batch(size: int, wait_s: float) -> dict:
    return {"Classifier": {"user_config": {"max_batch_size": size, "batch_wait_timeout_s": wait_s}}}


NO_ACCESS_LOG = {d: {"logging_config": {"enable_access_log": False}} for d in ("Ingress", "Classifier", "Search")}
# Serve deployment settings tried by --sweep: deploy.load_config(deployments=...) overrides of
# serve/config.yaml, plus process-wide settings of the local Ray ("env", "global_logging").
SERVE_CONFIGS: dict[str, dict] = {
    "shipped": {"deployments": {}, "about": "serve/config.yaml as it is (autoscaling, 1 replica each at start)"},
    "fixed-111": {"deployments": _fixed(1, 1, 1), "about": "1 replica each, no autoscaling"},
    "fixed-121": {"deployments": _fixed(1, 2, 1), "about": "2 Classifier replicas"},
    "fixed-111-b32-w2ms": {"deployments": _merge(_fixed(1, 1, 1), _batch(32, 0.002)),
                           "about": "batch up to 32, wait 2 ms"},
    "fixed-111-b16-w10ms": {"deployments": _merge(_fixed(1, 1, 1), _batch(16, 0.010)),
                            "about": "batch up to 16, wait 10 ms"},
    "fixed-111-quiet": {"deployments": _merge(_fixed(1, 1, 1), NO_ACCESS_LOG), "global_logging": True,
                        "about": "no access logs (replicas and proxy)"},
    "fixed-111-sameloop": {"deployments": _fixed(1, 1, 1),
                           "env": {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
                                   "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0"},
                           "about": "user code and router on the replica's own event loop"},
    "fixed-111-throughput": {"deployments": _fixed(1, 1, 1), "env": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"},
                             "about": "RAY_SERVE_THROUGHPUT_OPTIMIZED=1 (Ray's throughput mode: direct ingress, "
                                      "gRPC between replicas, user code and router on the main loop, batched logs)"},
    "fixed-111-throughput-b32-w2ms": {"deployments": _merge(_fixed(1, 1, 1), _batch(32, 0.002)),
                                      "env": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"},
                                      "about": "RAY_SERVE_THROUGHPUT_OPTIMIZED=1, batch up to 32, wait 2 ms"},
    "fixed-211-throughput": {"deployments": _fixed(2, 1, 1), "env": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"},
                             "about": "RAY_SERVE_THROUGHPUT_OPTIMIZED=1, 2 Ingress replicas"},
    "haproxy": {"deployments": {}, "env": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_HA_PROXY": "1"},
                "about": "serve/config.yaml with Ray's throughput mode behind Serve's HAProxy ingress "
                         "(RAY_SERVE_ENABLE_HA_PROXY=1: HAProxy forwards HTTP straight to the Ingress replicas)"},
    "shipped-proxy": {"deployments": {}, "env": {"RAY_SERVE_ENABLE_HA_PROXY": "0"},
                      "about": "serve/config.yaml in Ray's throughput mode through Serve's Python HTTP proxy "
                               "(RAY_SERVE_ENABLE_HA_PROXY=0: what `vitrine serve` shipped before the HAProxy ingress)"},
    "fixed-111-throughput-proxy": {"deployments": _fixed(1, 1, 1),
                                   "env": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
                                           "RAY_SERVE_ENABLE_DIRECT_INGRESS": "0"},
                                   "about": "Ray's throughput mode but through the HTTP proxy (no direct ingress)"},
}


def ingress_replicas(name: str) -> int:
    """The Ingress replicas of setting ``name`` (1 where it autoscales): serve-noop runs as many."""
    return int(SERVE_CONFIGS[name].get("deployments", {}).get("Ingress", {}).get(
        "autoscaling_config", {}).get("max_replicas", 1))
