"""The local multi-node cluster: the nodes Ray sees are the ones asked for, and taking a cluster
down kills its own processes and nobody else's (`ray stop` would kill every cluster here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cluster.processes import pids_naming

pytestmark = pytest.mark.slow


def test_the_cluster_has_a_head_and_two_pinned_workers(local_cluster):
    from ray.util.state import list_nodes

    nodes = {n.node_id: n for n in list_nodes(address=local_cluster.dashboard_url, detail=True)}
    ours = [n for n in local_cluster.nodes if n.alive]
    assert len(ours) >= 3 and ours[0].is_head
    for node in ours:
        seen = nodes[node.node_id]
        assert seen.state == "ALIVE"
        assert seen.resources_total["CPU"] == node.num_cpus == 1  # not the whole machine
        assert seen.resources_total["memory"] == 3072 * 2**20
        assert bool(seen.is_head_node) == node.is_head
        for name, amount in node.resources.items():
            assert seen.resources_total[name] == amount
        assert node.raylet_pid and str(node.raylet_pid) in os.listdir("/proc")


def test_cli_down_stops_its_cluster_and_leaves_other_clusters_running(local_cluster, tmp_path):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    state_dir = tmp_path / "state"
    cli = [sys.executable, "-m", "cluster.local_cluster"]
    up = subprocess.run([*cli, "up", "--workers", "1", "--state-dir", str(state_dir)], env=env,
                        check=False, capture_output=True, text=True, timeout=240)
    assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-2000:]
    state = json.loads((state_dir / "state.json").read_text())
    assert [n["name"] for n in state["nodes"]] == ["head", "worker-1"]
    assert pids_naming(state["temp_dir"])  # its processes outlive the `up` command

    down = subprocess.run([*cli, "down", "--state-dir", str(state_dir)], env=env, check=False,
                          capture_output=True, text=True, timeout=120)
    assert down.returncode == 0, down.stdout[-2000:] + down.stderr[-2000:]
    assert not pids_naming(state["temp_dir"]) and not os.path.exists(state["temp_dir"])
    assert not (state_dir / "state.json").exists()
    # The session's cluster, on the same machine, is untouched.
    states = local_cluster.node_states()
    assert all(states[n.node_id] == "ALIVE" for n in local_cluster.nodes if n.alive)
