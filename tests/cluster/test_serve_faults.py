"""Serving on the multi-node cluster: the app deployed with `vitrine serve --address` (a driver that
exits, as an operator's would), then a Classifier replica killed under steady load: at least 99%
of requests succeed and the replica is replaced."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.serve.conftest import serve_port, serving_store  # noqa: F401  (fixtures)
from tests.helpers import Load, http, replica_pids, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.fault]
ROOT = Path(__file__).resolve().parents[2]


def driver(cluster, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def app_on_cluster(local_cluster, serving_store, serve_port, tmp_path):  # noqa: F811
    from serve import deploy

    small = {"ray_actor_options": {"num_cpus": 0.1}}
    two = {"autoscaling_config": {"min_replicas": 2, "initial_replicas": 2, "max_replicas": 2}}
    config = deploy.load_config(
        args={"storage": serving_store, "poll_interval_s": 2.0},
        deployments={"Ingress": small, "Classifier": {**small, **two}, "Search": {**small, **two}},
        http={"host": "127.0.0.1", "port": serve_port})
    config["proxy_location"] = "HeadOnly"  # every node's proxy would want the same port on one machine
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    done = driver(local_cluster, "-m", "jobs.cli", "serve", "--address", local_cluster.address, "--config", str(path))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert f"http://127.0.0.1:{serve_port}/" in done.stdout
    url = f"http://127.0.0.1:{serve_port}"
    wait_until(lambda: http(url + "/healthz").status == 200, 60, "the app on the cluster")
    yield url
    down = driver(local_cluster, "-c", f"import ray; ray.init(address={local_cluster.address!r}); "
                                       "from ray import serve; serve.shutdown()")
    assert down.returncode == 0, down.stderr[-2000:]


def test_killed_replica_on_the_cluster_is_replaced_under_load(app_on_cluster, serving_store):  # noqa: F811
    url = app_on_cluster
    wait_until(lambda: len(replica_pids("Classifier")) == 2, 60, "two Classifier replicas")
    before = replica_pids("Classifier")
    sample = http(url + "/v1/samples").json()["samples"][0]
    image = http(url + sample["image_url"]).body
    with Load(url, image, threads=4) as load:
        wait_until(lambda: len(load.answers) >= 20, 60, "steady load")
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        t_kill, n_kill = time.monotonic(), len(load.answers)
        wait_until(lambda: len(replica_pids("Classifier") - before) == 1 and len(replica_pids("Classifier")) == 2,
                   120, "a replacement Classifier replica")
        replaced_after = time.monotonic() - t_kill
        wait_until(lambda: len(load.answers) >= n_kill + 40, 60, "load after the replacement")
    statuses = [s for s, _, _ in load.answers]
    ok = statuses.count(200) / len(statuses)
    assert ok >= 0.99, f"{ok:.2%} of {len(statuses)} requests succeeded; statuses {sorted(set(statuses))}"
    print(f"cluster: Classifier replica replaced in {replaced_after:.1f} s; {statuses.count(200)}/{len(statuses)} ok")
