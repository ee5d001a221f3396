"""A small published store (model → catalogue → embeddings → index) and the Serve app deployed
over it on the session's local Ray, reachable over real HTTP on loopback."""

import time

import pytest

from artifacts import storage
from jobs.export_catalogue import ExportConfig
from jobs.export_catalogue import run as export
from tests.helpers import EMBED_KEY, SEARCH_KEY, http, publish_version

# Small replicas, so that scaling up fits the session's 2 logical CPUs next to everything else.
TEST_DEPLOYMENTS = {
    "Ingress": {"ray_actor_options": {"num_cpus": 0.1},
                "autoscaling_config": {"min_replicas": 1, "max_replicas": 1}},
    "Classifier": {"ray_actor_options": {"num_cpus": 0.2},
                   "autoscaling_config": {"min_replicas": 1, "initial_replicas": 1, "max_replicas": 1}},
    "Search": {"ray_actor_options": {"num_cpus": 0.1},
               "autoscaling_config": {"min_replicas": 1, "initial_replicas": 1, "max_replicas": 1}},
}


@pytest.fixture(scope="session")
def serving_store(tmp_path_factory, tiny_fashion_mnist) -> str:
    """600 catalogue images (60 per class), an (untrained) model, its embeddings and index."""
    root = str(tmp_path_factory.mktemp("serving-store"))
    export(ExportConfig(split="train", out=storage.join(root, "catalogue"), data=str(tiny_fashion_mnist)))
    publish_version(root, "cnn-serve-a")
    return root


@pytest.fixture(scope="session")
def serve_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def api_keys_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("secrets") / "api-keys"
    path.write_text(f"# name scopes key\nnightly embed {EMBED_KEY}\nshop search {SEARCH_KEY}\n")
    return str(path)


@pytest.fixture(scope="session")
def deploy_app(ray_local, serve_port, api_keys_file):
    """``deploy_app(root, deployments=..., **args) -> base URL``: (re)deploy serve/config.yaml with
    test-sized replicas; the same config twice is deployed once."""
    from serve import deploy

    state = {"config": None}

    def _deploy(root: str, *, deployments: dict | None = None, **args) -> str:
        overrides = {name: dict(options) for name, options in TEST_DEPLOYMENTS.items()}
        for name, options in (deployments or {}).items():
            overrides[name] = deploy._merge(overrides[name], options)
        args = {"storage": root, "poll_interval_s": 1.0, "api_keys_file": api_keys_file, **args}
        config = deploy.load_config(args=args, deployments=overrides,
                                    http={"host": "127.0.0.1", "port": serve_port})
        from ray import serve

        running = deploy.APP_NAME in serve.status().applications if state["config"] else False
        if config != state["config"] or not running:
            deploy.deploy(config, timeout_s=180)
            state["config"] = config
        url = f"http://127.0.0.1:{serve_port}"
        deadline = time.monotonic() + 60
        while http(url + "/healthz").status != 200:  # the ingress has taken a version into service
            assert time.monotonic() < deadline, http(url + "/healthz").body
            time.sleep(0.5)
        return url

    yield _deploy
    from ray import serve

    serve.shutdown()


@pytest.fixture(scope="module")
def app_url(deploy_app, serving_store) -> str:
    return deploy_app(serving_store)
