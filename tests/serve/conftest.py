"""A small published store (model → catalogue → embeddings → index) and the Serve app deployed
over it on the session's local Ray, reachable over real HTTP on loopback."""

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

import pytest

from artifacts import storage
from jobs.build_index import BuildIndexConfig
from jobs.build_index import run as build_index
from jobs.embed_catalogue import EmbedConfig
from jobs.embed_catalogue import run as embed
from jobs.export_catalogue import ExportConfig
from jobs.export_catalogue import run as export
from tests.jobs.test_embed_catalogue import save_model

# Small replicas, so that scaling up fits the session's 2 logical CPUs next to everything else.
TEST_DEPLOYMENTS = {
    "Ingress": {"ray_actor_options": {"num_cpus": 0.1},
                "autoscaling_config": {"min_replicas": 1, "max_replicas": 1}},
    "Classifier": {"ray_actor_options": {"num_cpus": 0.2},
                   "autoscaling_config": {"min_replicas": 1, "initial_replicas": 1, "max_replicas": 1}},
    "Search": {"ray_actor_options": {"num_cpus": 0.1},
               "autoscaling_config": {"min_replicas": 1, "initial_replicas": 1, "max_replicas": 1}},
}


def publish_version(root: str, model_id: str, *, seed: int = 0) -> str:
    """Save a model, embed the store's catalogue with it and publish the index; returns its id."""
    models = storage.join(root, "models")
    save_model(models, model_id, seed=seed)
    run = embed(EmbedConfig(catalogue=storage.join(root, "catalogue"), model=storage.join(models, model_id),
                            out=root, local_max_items=10_000, full=True))
    assert run.published
    result = build_index(BuildIndexConfig(embeddings=run.run_uri, out=root, storage=root, recall_queries=100))
    assert result.published
    return result.index_id


@pytest.fixture(scope="session")
def serving_store(tmp_path_factory, tiny_fashion_mnist) -> str:
    """600 catalogue images (60 per class), an (untrained) model, its embeddings and index."""
    root = str(tmp_path_factory.mktemp("serving-store"))
    export(ExportConfig(split="train", out=storage.join(root, "catalogue"), data=str(tiny_fashion_mnist)))
    publish_version(root, "cnn-serve-a")
    return root


@dataclass
class Response:
    status: int
    body: bytes
    headers: dict

    def json(self):
        return json.loads(self.body)


def http(url: str, data: bytes | None = None, *, method: str | None = None, headers: dict | None = None,
         timeout: float = 30.0) -> Response:
    """A real HTTP request; error statuses come back as responses, not exceptions."""
    req = urllib.request.Request(url, data=data, headers=headers or {},
                                 method=method or ("POST" if data is not None else "GET"))
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return Response(resp.status, resp.read(), dict(resp.headers))
    except urllib.error.HTTPError as exc:
        return Response(exc.code, exc.read(), dict(exc.headers))


def multipart_files(files: list[tuple[str, bytes]], field: str = "file",
                    content_type: str = "image/png") -> tuple[bytes, str]:
    """A multipart/form-data body with one ``field`` part per ``(filename, data)``, and its type."""
    boundary = "vitrine-test-boundary-7f3a"
    body = b"".join((f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
                     f"Content-Type: {content_type}\r\n\r\n").encode() + data + b"\r\n" for filename, data in files)
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def multipart(field: str, filename: str, data: bytes, content_type: str = "image/png") -> tuple[bytes, str]:
    return multipart_files([(filename, data)], field, content_type)


@pytest.fixture(scope="session")
def serve_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# API keys of the test deployments (serve/auth.py): one per scope.
EMBED_KEY = "test-embed-key-7f3a-0123456789abcdef"
SEARCH_KEY = "test-search-key-7f3a-0123456789abcdef"
EMBED_AUTH = {"Authorization": f"Bearer {EMBED_KEY}"}


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
