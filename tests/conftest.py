"""Shared fixtures: one local Ray for the whole session, and Fashion-MNIST-format data made here."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# The loopback S3 server's credentials, in the environment every Ray this session starts inherits:
# what a cluster's nodes have of their own (a role, a Secret). Jobs never pass keys to workers
# (artifacts.storage.worker_env), and the embedding job's workers write their part files
# themselves, so without these a worker would write anonymously.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")

# After the environment above: the helpers import the jobs, and with them TensorFlow and Ray.
from tests.helpers import environ, save_trained_model, write_fashion_mnist  # noqa: E402


def _hypothesis_profiles() -> None:
    """Fuzzing budgets (tests/serve/test_fuzz_uploads.py, tests/artifacts/test_fuzz_preprocess.py),
    chosen by HYPOTHESIS_PROFILE: ``ci`` (default) is bounded and derandomized, so a CI failure
    reproduces on any machine; ``long`` explores (docs/RELIABILITY.md, "Fuzzing")."""
    from hypothesis import HealthCheck, settings

    quiet = [HealthCheck.too_slow, HealthCheck.data_too_large]
    settings.register_profile("ci", max_examples=150, deadline=None, derandomize=True,
                              suppress_health_check=quiet, print_blob=True)
    settings.register_profile("long", max_examples=5000, deadline=None, suppress_health_check=quiet,
                              print_blob=True)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


_hypothesis_profiles()


@pytest.fixture(scope="session")
def tiny_fashion_mnist(tmp_path_factory) -> Path:
    return write_fashion_mnist(tmp_path_factory.mktemp("fmnist"))


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> str:
    """A models root holding one untrained model, "cnn-test-a" (the embedding job's tests)."""
    from tests.helpers import save_model

    models = str(tmp_path_factory.mktemp("models"))
    save_model(models, "cnn-test-a")
    return models


@pytest.fixture(scope="session")
def trained_models(tiny_fashion_mnist, tmp_path_factory) -> dict[str, str]:
    """Model URIs by head, trained for a few epochs on the tiny tiles (~15 s both): "softmax",
    cnn_dropout_1 (about 90% on the tiny test split); "cosine", a narrow vitrine_cnn with the
    CosFace head (further from learned: there to be explained through that head)."""
    models = str(tmp_path_factory.mktemp("trained-models"))
    return {"softmax": save_trained_model(models, "cnn-trained", str(tiny_fashion_mnist)),
            "cosine": save_trained_model(models, "cosine-trained", str(tiny_fashion_mnist), architecture="vitrine_cnn",
                                         epochs=5, width=8, dense=32, head="cosine", head_margin=0.1)}


@pytest.fixture(scope="session")
def ray_local():
    """One in-process Ray for the session (starting one costs ~5 s), 2 CPUs pinned."""
    import ray

    if not ray.is_initialized():
        # address="local": never join a `ray start` cluster someone left running on this machine.
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=True,
                 runtime_env={"env_vars": {"TF_CPP_MIN_LOG_LEVEL": "2"}})
    yield ray
    ray.shutdown()


@pytest.fixture(autouse=True, scope="module")
def _serve_down_outside_serve_tests(request):
    """Serve replicas hold CPUs of the shared Ray: modules outside tests/serve get them back."""
    import sys

    if request.path.parent.name != "serve" and "ray.serve" in sys.modules:
        import ray

        if ray.is_initialized():
            from ray import serve

            serve.shutdown()
    yield


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-protocol server (moto's standalone server) on loopback, in its own process.

    Yields its endpoint URL; AWS_* variables point every client (boto3, pyarrow, Ray workers
    started afterwards) at it for the rest of the session."""
    import subprocess
    import sys
    import time
    import urllib.request

    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            break
        except Exception:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("moto S3 server did not start")
            time.sleep(0.2)
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
    with environ(**env):
        yield endpoint
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def s3_bucket(s3_server, request):
    """A fresh bucket per test; returns its ``s3://`` URI."""
    import re
    import uuid

    import boto3

    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-") + "-" + uuid.uuid4().hex[:6]
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture(scope="module")
def clustered_data():
    """tests.helpers.clustered(): 2,000 unit vectors in 10 categories (ids, categories, vectors)."""
    from tests.helpers import clustered

    return clustered()


@pytest.fixture(scope="module")
def clustered_index(clustered_data):
    """An HnswIndex over ``clustered_data`` with tests.helpers.HNSW_TEST_PARAMS."""
    from artifacts.hnsw_index import HnswIndex
    from tests.helpers import HNSW_TEST_PARAMS

    return HnswIndex.build(*clustered_data, **HNSW_TEST_PARAMS)
