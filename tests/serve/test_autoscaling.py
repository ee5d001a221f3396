"""Autoscaling: load drives the Classifier and Search deployments up, quiet brings them back down.

The bounds and delays come from serve/config.yaml's keys, shortened so the test takes a minute.
"""

import time

import pytest

from artifacts import storage
from serve import deploy
from tests.helpers import Load

pytestmark = pytest.mark.slow

# Target 0.5: one Ingress replica gathers concurrent searches into at most two calls in flight
# to the Classifier and to Search (serve/ingress.py, max_concurrent_batches=2), and on a loaded
# machine they rarely overlap, so a target of 1 was never exceeded (the fresh-clone CI at 320ca82).
FAST = {"upscale_delay_s": 1, "downscale_delay_s": 5, "look_back_period_s": 2, "metrics_interval_s": 0.5,
        "target_ongoing_requests": 0.5}
SCALING = {
    "Classifier": {"autoscaling_config": {"min_replicas": 1, "initial_replicas": 1, "max_replicas": 3, **FAST}},
    "Search": {"autoscaling_config": {"min_replicas": 1, "initial_replicas": 1, "max_replicas": 2, **FAST}},
}


def watch(predicate, timeout: float) -> list[dict]:
    """Replica counts every half second until ``predicate(counts)``; the history comes back."""
    history, deadline = [], time.monotonic() + timeout
    while True:
        counts = deploy.replica_counts()
        history.append(counts)
        if predicate(counts) or time.monotonic() > deadline:
            return history
        time.sleep(0.5)


def test_replicas_scale_up_under_load_and_back_down(deploy_app, serving_store):
    url = deploy_app(serving_store, deployments=SCALING)
    assert deploy.replica_counts()["Classifier"] == 1
    catalogue = storage.join(serving_store, "catalogue", "bag")
    image = storage.read_bytes(storage.join(catalogue, sorted(storage.list_dir(catalogue))[0]))
    with Load(url, image, threads=12) as load:
        up = watch(lambda c: c.get("Classifier", 0) >= 2, 90)
        time.sleep(2)
    assert up[-1].get("Classifier", 0) >= 2, f"never scaled up: {up[-5:]}"
    down = watch(lambda c: c.get("Classifier", 0) == 1 and c.get("Search", 0) == 1, 90)
    assert down[-1]["Classifier"] == 1 and down[-1]["Search"] == 1, f"never scaled down: {down[-5:]}"
    statuses = [s for s, _, _ in load.answers]
    assert len(statuses) > 50 and statuses.count(200) == len(statuses), sorted(set(statuses))
