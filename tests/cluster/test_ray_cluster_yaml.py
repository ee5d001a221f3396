"""ray_cluster.yaml passes Ray's own launcher validation (no cloud calls)."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_cluster_yaml_validates_with_rays_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    validate_config(prepare_config(raw))  # raises on any schema error
    types = raw["available_node_types"]
    assert raw["head_node_type"] in types
    assert any("gpu" in name for name in types) and any("cpu" in name for name in types)
    import ray

    # The project's image tag starts with the Ray it is built on (Makefile image-tag, Dockerfile).
    assert raw["docker"]["image"].split(":")[1].startswith(f"{ray.__version__}-"), "the image must match the installed Ray"
    assert types["gpu_worker"]["docker"]["worker_image"].endswith("-gpu")
