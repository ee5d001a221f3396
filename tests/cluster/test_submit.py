"""`vitrine submit` and `vitrine jobs` against a real multi-node Ray cluster on this machine: the
project travels as the job's working_dir, storage settings (never secrets) travel as its environment,
and the exit status is the job's."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time

import pytest

from artifacts import embeddings, model_artifact, publish, storage
from jobs import ray_jobs
from jobs.submit import SubmitConfig, SubmitResult, run, runtime_env
from tests.helpers import last_json

pytestmark = pytest.mark.slow


def submit(cluster, job: str, *args: str) -> tuple[SubmitResult, str]:
    out = io.StringIO()
    result = run(SubmitConfig(job=job, args=args, address=cluster.dashboard_url), out=out)
    return result, out.getvalue()


def test_runtime_env_carries_the_project_and_the_storage_settings_not_the_auth_mode(submit_env, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    env = runtime_env(SubmitConfig(job="models", env=("VITRINE_LOG_LEVEL=DEBUG",)))
    assert env["env_vars"] == {"VITRINE_STORAGE": str(submit_env), "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
                               "VITRINE_LOG_LEVEL": "DEBUG"}
    assert os.path.isfile(os.path.join(env["working_dir"], "jobs", "cli.py"))
    assert {"/.venv", "/.vitrine", "/.git"} <= set(env["excludes"]) and "pip" not in env
    gpu = runtime_env(SubmitConfig(job="tune", pip=True, gpu=True, forward_env=False))
    assert "env_vars" not in gpu
    assert any(r.startswith("tensorflow[and-cuda]") for r in gpu["pip"])
    assert not any(r.startswith(("tensorflow-cpu", "ray")) for r in gpu["pip"])


def test_s3_keys_in_the_shell_never_reach_the_runtime_env(submit_env, monkeypatch):
    # The runtime_env is job metadata: the dashboard and `ray job list` show it to anyone.
    for key, value in {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI",
                       "AWS_SESSION_TOKEN": "FwoGZXIvYXdzE", "AWS_ENDPOINT_URL": "http://s3.internal:9000",
                       "AWS_DEFAULT_REGION": "eu-central-1"}.items():
        monkeypatch.setenv(key, value)
    env = runtime_env(SubmitConfig(job="models"))["env_vars"]
    assert env == {"VITRINE_STORAGE": str(submit_env), "AWS_ENDPOINT_URL": "http://s3.internal:9000",
                   "AWS_DEFAULT_REGION": "eu-central-1"}
    assert not {"wJalrXUtnFEMI", "FwoGZXIvYXdzE", "AKIAEXAMPLE"} & set(env.values())
    for pair in ("AWS_SECRET_ACCESS_KEY=x", "VITRINE_API_KEY=x", "DB_PASSWORD=x"):
        with pytest.raises(ValueError, match="secret-looking"):
            runtime_env(SubmitConfig(job="models", env=(pair,)))


def test_models_job_runs_on_the_cluster_and_vitrine_jobs_reports_it(local_cluster, submit_env, capsys):
    result, logs = submit(local_cluster, "models", "--json")
    assert result.succeeded, logs[-3000:]
    assert result.entrypoint == "python -m jobs.cli models --json"
    names = {m["name"] for m in last_json(logs)}
    assert {"vitrine_cnn", "seed_cnn", "lenet5"} <= names

    url = local_cluster.dashboard_url
    capsys.readouterr()
    assert ray_jobs.main(["list", "--json", "--address", url]) == 0
    rows = {r["submission_id"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows[result.submission_id]["status"] == "SUCCEEDED"
    assert rows[result.submission_id]["metadata"]["vitrine_job"] == "models"
    assert ray_jobs.main(["status", result.submission_id, "--address", url]) == 0
    assert f"{result.submission_id}: SUCCEEDED" in capsys.readouterr().out
    assert ray_jobs.main(["logs", result.submission_id, "--address", url]) == 0
    assert "vitrine_cnn" in capsys.readouterr().out


def test_vitrine_jobs_redacts_secrets_a_job_was_submitted_with(local_cluster, capsys):
    # Submitted around `vitrine submit` (which refuses them), as `ray job submit` would: the cluster
    # holds the secret, `vitrine jobs` must not print it.
    from jobs.submit import connect

    secret = "wJalrXUtnFEMI-leaked"
    client = connect(local_cluster.dashboard_url)
    # The job prints its own secret, as a careless script would: `vitrine jobs logs` must not show it.
    sid = client.submit_job(entrypoint=f"env DB_PASSWORD={secret} python -c "
                                       "\"import os; print('DB_PASSWORD=' + os.environ['DB_PASSWORD'])\"",
                            runtime_env={"env_vars": {"AWS_SECRET_ACCESS_KEY": secret, "AWS_REGION": "eu-central-1"}},
                            metadata={"api_token": secret, "vitrine_job": "raw"})
    url = local_cluster.dashboard_url
    capsys.readouterr()
    assert ray_jobs.main(["list", "--json", "--address", url]) == 0
    listed = capsys.readouterr().out
    row = {r["submission_id"]: r for r in json.loads(listed)}[sid]
    assert row["runtime_env"]["env_vars"] == {"AWS_SECRET_ACCESS_KEY": "***", "AWS_REGION": "eu-central-1"}
    assert row["metadata"] == {"api_token": "***", "vitrine_job": "raw"}
    assert ray_jobs.main(["list", "--address", url]) == 0
    table = capsys.readouterr().out
    ray_jobs.main(["status", sid, "--json", "--address", url])
    status = capsys.readouterr().out
    assert sid in table and "DB_PASSWORD=***" in table and json.loads(status)["metadata"]["api_token"] == "***"
    assert secret not in listed + table + status
    deadline = time.monotonic() + 120
    while str(client.get_job_status(sid)) not in ("SUCCEEDED", "FAILED", "STOPPED"):
        assert time.monotonic() < deadline, client.get_job_logs(sid)
        time.sleep(0.5)
    assert secret in client.get_job_logs(sid)  # the cluster has it; the command must not print it
    assert ray_jobs.main(["logs", sid, "--address", url]) == 0
    logs = capsys.readouterr().out
    assert "DB_PASSWORD=***" in logs and secret not in logs


def test_a_failing_job_makes_vitrine_submit_exit_non_zero(local_cluster, submit_env):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.run([sys.executable, "-m", "jobs.cli", "submit", "--address", local_cluster.dashboard_url,
                           "tune", "--grid", "does-not-exist.yaml"],
                          env=env, check=False, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("job vitrine-tune-") and ": FAILED" in last
    assert "does-not-exist.yaml" in proc.stdout  # the job's own error reached the terminal
    sid = last.split()[1].rstrip(":")
    status = subprocess.run([sys.executable, "-m", "jobs.cli", "jobs", "status", sid, "--address",
                             local_cluster.dashboard_url],
                            env=env, check=False, capture_output=True, text=True, timeout=60)
    assert status.returncode == 1 and "FAILED" in status.stdout


def test_smoke_grid_on_the_cluster_exports_a_model_to_the_forwarded_storage(local_cluster, submit_env,
                                                                           tiny_fashion_mnist):
    # No --storage: the job finds its storage root through the forwarded VITRINE_STORAGE.
    result, logs = submit(local_cluster, "tune", "--grid", "tune/grids/default.yaml", "--smoke-test",
                          "--data", str(tiny_fashion_mnist), "--json")
    assert result.succeeded, logs[-4000:]
    summary = last_json(logs)
    card = model_artifact.read_card(summary["model_uri"])  # a smoke run never moves models/LATEST
    assert summary["model_uri"] == storage.join(str(submit_env), "models", card.model_id)
    assert (submit_env / "models" / card.model_id / model_artifact.MODEL_FILE).is_file()
    assert card.architecture == "vitrine_cnn" and card.test_metrics["accuracy"] > 0.1


def test_embedding_job_on_the_cluster_goes_through_ray_data_actors(local_cluster, submit_env, tiny_fashion_mnist,
                                                                  tmp_path):
    from jobs.export_catalogue import ExportConfig
    from jobs.export_catalogue import run as export
    from tests.helpers import save_model

    models = storage.join(str(submit_env), "models")
    save_model(models, "cnn-on-cluster")
    cat = str(tmp_path / "catalogue")
    export(ExportConfig(split="train", out=cat, data=str(tiny_fashion_mnist), limit=200))

    result, logs = submit(local_cluster, "embed", "--catalogue", cat, "--model", models, "--json",
                          "--set", "local_max_items=0", "--set", "batch_size=32",
                          "--set", "cpus_per_actor=1")  # the nodes have 1 CPU each
    assert result.succeeded, logs[-4000:]
    summary = last_json(logs)
    assert summary["timings"]["mode"] == "ray-data" and summary["counts"]["embedded"] == 200
    runs = embeddings.model_runs_uri(str(submit_env), "cnn-on-cluster")
    assert publish.latest_id(runs) == summary["run_id"]
    table = embeddings.read_table(runs)
    ids = table.column("item_id").to_pylist()
    assert len(ids) == len(set(ids)) == 200
    assert set(ids) == {f"train-{i:06d}" for i in range(200)}


def test_no_wait_returns_at_once_and_vitrine_jobs_stop_stops_the_job(local_cluster, submit_env, tiny_fashion_mnist,
                                                                    capsys):
    # The full default grid: minutes of training, so it is surely still running when stopped.
    result = run(SubmitConfig(job="tune", args=("--grid", "tune/grids/default.yaml", "--data", str(tiny_fashion_mnist)),
                              address=local_cluster.dashboard_url, wait=False))
    assert result.status in ("PENDING", "RUNNING")
    capsys.readouterr()
    assert ray_jobs.main(["stop", result.submission_id, "--address", local_cluster.dashboard_url]) == 0
    assert capsys.readouterr().out.strip() == f"{result.submission_id}: STOPPED"
    assert ray_jobs.main(["status", result.submission_id, "--address", local_cluster.dashboard_url]) == 1
