"""What runs inside the Serve children of ``benchmarks/serve_load.py`` (its hidden ``--_serve``
and ``--_noop`` flags): the app as shipped, or a no-op deployment, each answering the parent's
line commands on stdin until the parent closes it."""

from __future__ import annotations

import json
import os
import sys


def serve_child(config_path: str, port: int, num_cpus: int, quiet_proxy: bool) -> int:
    """Runs in the Serve child: the app via ``jobs.serve_app.run``, until stdin closes."""
    # Our answers go to the parent on the original stdout; everything else (Ray prints worker
    # output on the driver's stdout) goes to stderr, the log file, so the pipe never fills up.
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    from artifacts.logs import setup_logging
    from jobs.serve_app import ServeConfig, run

    setup_logging()
    if quiet_proxy:
        # What `deploy.deploy` would do if it passed the config's logging_config to serve_start:
        # start Serve (controller + proxy) without access logs; deploy() then reuses it.
        from ray.serve._private.api import serve_start

        from artifacts.ray_session import ensure_ray

        ensure_ray("", num_cpus)
        serve_start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="EveryNode",
                    global_logging_config={"enable_access_log": False})
    result = run(ServeConfig(config=config_path, host="127.0.0.1", port=port, num_cpus=num_cpus))
    print(json.dumps({"ready": result.url, "replicas": result.replicas}), file=answers, flush=True)
    from serve import deploy

    return _answer_until_eof(answers, deploy.replica_counts)


def noop_child(port: int, num_cpus: int, replicas: int = 1) -> int:
    """Runs in the child of ``serve-noop``: Ray Serve's own ceiling on this machine. One deployment
    that reads the body and returns a canned answer of the size of a real search answer: the
    HTTP proxy and one replica hop, no decoding, no model, no search."""
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    from ray import serve
    from starlette.responses import Response

    from artifacts.ray_session import ensure_ray

    canned = json.dumps({"model_id": "m" * 32, "index_id": "i" * 60, "predicted": "Sneaker",
                         "classes": [{"name": f"class-{i}", "probability": 0.1} for i in range(10)],
                         "category": "Sneaker", "k": 30,
                         "results": [{"item_id": f"train-{i:06d}", "category": "Sneaker", "distance": 0.123456,
                                      "similarity": 87.65, "image_url": f"/v1/items/train-{i:06d}/image"}
                                     for i in range(30)], "took_ms": 1.0}).encode()

    @serve.deployment(name="Noop", num_replicas=replicas, max_ongoing_requests=64,
                      logging_config={"enable_access_log": False})
    class Noop:
        async def __call__(self, request) -> Response:
            await request.body()
            return Response(canned, media_type="application/json")

    ensure_ray("", num_cpus)
    serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"enable_access_log": False})
    serve.run(Noop.bind(), name="noop", route_prefix="/")
    print(json.dumps({"ready": f"http://127.0.0.1:{port}/", "replicas": {"Noop": replicas}}), file=answers,
          flush=True)
    return _answer_until_eof(answers, lambda: {"Noop": replicas})


def _answer_until_eof(answers, replica_counts) -> int:
    """A child's loop: answer "replicas" on stdin until the parent closes it, then stop Serve and Ray."""
    import ray
    from ray import serve

    try:
        for line in sys.stdin:
            if line.strip() == "replicas":
                print(json.dumps(replica_counts()), file=answers, flush=True)
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
    return 0
