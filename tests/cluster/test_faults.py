"""Node loss during the nightly embedding: a worker node running an embedding actor is SIGKILLed
mid-run (raylet, agents, workers at once, as when a machine disappears). Ray Data restarts the
actor elsewhere and retries its batches; the run must still publish every catalogue item exactly
once.

The Tune side of fault tolerance (a grid whose driver is SIGKILLed resumes without redoing
finished trials) is tests/tune/test_grid.py::test_interrupted_grid_resumes_without_redoing_finished_trials.
"""

from __future__ import annotations

import time

import pyarrow.parquet as pq
import pytest

from artifacts import embeddings, publish, storage
from jobs.submit import SubmitConfig, connect, follow, run
from tests.helpers import last_json

pytestmark = [pytest.mark.slow, pytest.mark.fault]


def embedder_actors(dashboard_url: str) -> list:
    from ray.util.state import list_actors

    actors = list_actors(address=dashboard_url, detail=True, limit=1000, raise_on_missing_output=False)
    return [a for a in actors if "Embedder" in (a.repr_name or "")]


def test_embedding_publishes_every_item_once_after_a_worker_node_dies(local_cluster, submit_env, tmp_path):
    import io

    from jobs.export_catalogue import ExportConfig
    from jobs.export_catalogue import run as export
    from tests.helpers import save_model, write_fashion_mnist

    # 3,000 items in batches of 8: long enough (hundreds of actor calls) to kill a node mid-run.
    data = write_fashion_mnist(tmp_path / "fmnist", train_per_class=300, test_per_class=1)
    models = storage.join(str(submit_env), "models")
    save_model(models, "cnn-faults")
    cat = tmp_path / "catalogue"
    export(ExportConfig(split="train", out=str(cat), data=str(data)))
    expected = set(pq.read_table(cat / "manifest.parquet", columns=["item_id"]).column("item_id").to_pylist())
    assert len(expected) == 3000

    url = local_cluster.dashboard_url
    sid = run(SubmitConfig(job="embed", address=url, wait=False, args=(
        "--catalogue", str(cat), "--model", models, "--json", "--set", "local_max_items=0",
        "--set", "batch_size=8", "--set", "min_actors=2", "--set", "max_actors=2",
        "--set", "cpus_per_actor=1"))).submission_id
    client = connect(url)

    # Kill the worker node that hosts an embedding actor as soon as one is serving.
    workers = {n.node_id: n for n in local_cluster.nodes if not n.is_head and n.alive}
    deadline = time.monotonic() + 240
    victim = None
    while victim is None:
        status = str(client.get_job_status(sid))
        assert status in ("PENDING", "RUNNING"), f"the job ended before a node could be killed: {status}\n" + \
            client.get_job_logs(sid)[-3000:]
        assert time.monotonic() < deadline, "no embedding actor came up on a worker node"
        victim = next((a for a in embedder_actors(url) if a.state == "ALIVE" and a.node_id in workers), None)
        time.sleep(0.2)
    assert str(client.get_job_status(sid)) == "RUNNING"
    killed = local_cluster.kill_node(workers[victim.node_id].index)
    # What an autoscaler would do; it also gives the rest of the session its two workers back.
    local_cluster.add_worker()

    status = follow(client, sid, io.StringIO())
    logs = client.get_job_logs(sid)
    assert status == "SUCCEEDED", logs[-4000:]
    summary = last_json(logs)
    assert summary["counts"]["embedded"] == 3000 and summary["counts"]["failed"] == 0
    assert summary["timings"]["mode"] == "ray-data"

    runs = embeddings.model_runs_uri(str(submit_env), "cnn-faults")
    assert publish.latest_id(runs) == summary["run_id"]
    ids = embeddings.read_table(runs, columns=["item_id"]).column("item_id").to_pylist()
    assert len(ids) == len(set(ids)) == 3000, "an item is missing or written twice"
    assert set(ids) == expected

    # The kill really hit the job: the node is gone and the actor it hosted had to be restarted.
    local_cluster.wait_for_node_state(killed.node_id, "DEAD", timeout_s=60)
    after = {a.actor_id: a for a in embedder_actors(url)}
    assert after[victim.actor_id].num_restarts >= 1
    print(f"node loss: worker {killed.name} killed mid-run; job SUCCEEDED; {len(ids)} rows, {len(set(ids))} unique, "
          f"= catalogue; embedding actor restarted {after[victim.actor_id].num_restarts}x")
