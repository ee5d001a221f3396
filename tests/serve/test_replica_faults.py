"""A Serve replica killed under steady load: at least 99% of requests succeed, the replica is replaced."""

import os
import signal
import time

import pytest

from artifacts import storage
from serve import deploy
from tests.helpers import Load, wait_until
from tests.helpers import replica_pids

pytestmark = [pytest.mark.slow, pytest.mark.fault]

TWO_EACH = {name: {"autoscaling_config": {"min_replicas": 2, "initial_replicas": 2, "max_replicas": 2}}
            for name in ("Classifier", "Search")}


@pytest.mark.parametrize("deployment", ["Classifier", "Search"])
def test_killed_replica_is_replaced_and_requests_keep_succeeding(deploy_app, serving_store, deployment):
    url = deploy_app(serving_store, deployments=TWO_EACH)
    wait_until(lambda: len(replica_pids(deployment)) == 2, 60, "two replica processes")
    before = replica_pids(deployment)
    catalogue = storage.join(serving_store, "catalogue", "coat")
    image = storage.read_bytes(storage.join(catalogue, sorted(storage.list_dir(catalogue))[0]))
    with Load(url, image, threads=4) as load:
        wait_until(lambda: len(load.answers) >= 20, 60, "steady load")
        victim = sorted(before)[0]
        os.kill(victim, signal.SIGKILL)
        t_kill, n_kill = time.monotonic(), len(load.answers)
        wait_until(lambda: len(replica_pids(deployment) - before) == 1 and
                   deploy.replica_counts().get(deployment) == 2, 90, "a replacement replica")
        replaced_after = time.monotonic() - t_kill
        wait_until(lambda: len(load.answers) >= n_kill + 40, 60, "load after the replacement")
    statuses = [s for s, _, _ in load.answers]
    ok = statuses.count(200) / len(statuses)
    assert ok >= 0.99, f"{ok:.2%} of {len(statuses)} requests succeeded; statuses {sorted(set(statuses))}"
    assert victim not in replica_pids(deployment)
    print(f"{deployment}: replaced in {replaced_after:.1f} s; {statuses.count(200)}/{len(statuses)} ok")
