"""Joining Ray from a shell where RAY_ADDRESS names the Jobs API (as the README suggests for
`vitrine submit`): local commands must still start their own Ray."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SCRIPT = """
import ray
from artifacts.ray_session import ensure_ray
ensure_ray(num_cpus=1)
print("cpus", ray.cluster_resources().get("CPU"))
ray.shutdown()
"""


def test_http_ray_address_does_not_break_local_commands():
    env = {**os.environ, "RAY_ADDRESS": "http://127.0.0.1:1", "RAY_AUTH_MODE": "disabled"}
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "cpus 1.0" in done.stdout


def test_a_cluster_left_running_on_the_machine_is_not_joined_without_an_address():
    # `ray start` records its cluster in <RAY_TMPDIR>/ray/ray_current_cluster, and a bare
    # ray.init() joins it (then refuses num_cpus): a stale one broke a whole CI run. Here the
    # record names a port where nothing listens; local commands must not even try it.
    temp = tempfile.mkdtemp(prefix="rs", dir="/tmp")  # short: Ray's socket paths must fit 108 bytes
    try:
        Path(temp, "ray").mkdir()
        Path(temp, "ray", "ray_current_cluster").write_text("127.0.0.1:9")
        env = {**os.environ, "RAY_TMPDIR": temp, "RAY_AUTH_MODE": "disabled"}
        env.pop("RAY_ADDRESS", None)
        done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "cpus 1.0" in done.stdout
    finally:
        shutil.rmtree(temp, ignore_errors=True)
