"""Joining Ray from a shell where RAY_ADDRESS names the Jobs API (as the README suggests for
`vitrine submit`): local commands must still start their own Ray."""

from __future__ import annotations

import os
import subprocess
import sys

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
