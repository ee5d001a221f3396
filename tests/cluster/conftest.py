"""One local multi-node Ray cluster for the session: a head and two workers, each a real
`ray start` on this machine with 1 logical CPU (starting a node costs ~8 s)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def local_cluster():
    from cluster.local_cluster import LocalCluster, LocalClusterConfig
    from tests.helpers import environ

    # This process talks to the cluster too (Jobs API, state API): the same auth mode as its nodes.
    config = LocalClusterConfig(workers=2, head_cpus=1, worker_cpus=1, memory_mb=3072, object_store_mb=256,
                                env=("TF_CPP_MIN_LOG_LEVEL=2", "RAY_DEDUP_LOGS=0"))
    with environ(RAY_AUTH_MODE="disabled", RAY_ADDRESS=None), LocalCluster(config) as cluster:
        yield cluster


@pytest.fixture
def submit_env(monkeypatch, tmp_path):
    """What `vitrine submit` forwards from this process, pinned: storage in this test's tmp dir,
    no dataset or S3 settings leaking in from the shell (the Makefile exports some)."""
    from artifacts.storage import ENV_VARS
    from jobs.submit import VITRINE_ENV_VARS

    for key in (*VITRINE_ENV_VARS, *ENV_VARS):
        monkeypatch.delenv(key, raising=False)
    root = tmp_path / "store"
    monkeypatch.setenv("VITRINE_STORAGE", str(root))
    return root
