"""The KubeRay manifests (cluster/k8s/) and the nightly CronJob agree with the code they run: real
commands and files, the installed Ray, serve/config.yaml and ray_cluster.yaml (their images and
that nothing installs at start: tests/cluster/test_images.py). No Kubernetes needed: these are
the mistakes a cluster would only show at 2 a.m."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import ray
import yaml

from jobs.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "cluster" / "k8s"
MANIFESTS = sorted(K8S.glob("*.yaml"))
CRONJOB = ROOT / "cluster" / "nightly" / "cronjob.yaml"


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def one(path: Path, kind: str) -> dict:
    found = [d for d in docs(path) if d["kind"] == kind]
    assert len(found) == 1, f"{path.name}: expected one {kind}"
    return found[0]


def cluster_specs() -> dict[str, dict]:
    """Every RayCluster spec in the manifests, whether standalone or inside a RayJob/RayService."""
    return {"raycluster": one(K8S / "raycluster.yaml", "RayCluster")["spec"],
            "rayjob": one(K8S / "rayjob-tune.yaml", "RayJob")["spec"]["rayClusterSpec"],
            "rayservice": one(K8S / "rayservice.yaml", "RayService")["spec"]["rayClusterConfig"]}


def containers(node) -> list[dict]:
    """Every container (dicts with an ``image``) anywhere in a manifest."""
    found = []
    if isinstance(node, dict):
        if "image" in node and "name" in node:
            found.append(node)
        for value in node.values():
            found.extend(containers(value))
    elif isinstance(node, list):
        for value in node:
            found.extend(containers(value))
    return found


def vitrine_command(command: str) -> tuple[str, list[str]]:
    """``python -m jobs.cli <job> ...`` / ``vitrine <job> ...`` / ``python -m jobs.<module> ...`` →
    (the vitrine sub-command, its arguments); fails for anything else."""
    words = shlex.split(command)
    if words[:3] == ["python", "-m", "jobs.cli"]:
        job, args = words[3], words[4:]
    elif words[0] == "vitrine":
        job, args = words[1], words[2:]
    elif words[:2] == ["python", "-m"] and words[2].startswith("jobs."):
        by_module = {module: name for name, (module, _) in COMMANDS.items()}
        assert words[2] in by_module, f"{words[2]} is no vitrine job module"
        job, args = by_module[words[2]], words[3:]
    else:
        raise AssertionError(f"not a vitrine command: {command}")
    assert job in COMMANDS, f"{job!r} is not a vitrine command ({', '.join(sorted(COMMANDS))})"
    return job, args


def test_every_manifest_parses_with_the_kinds_kuberay_knows():
    assert {p.name for p in MANIFESTS} >= {"raycluster.yaml", "rayjob-tune.yaml", "rayservice.yaml",
                                           "serviceaccount.yaml"}
    for path in MANIFESTS:
        for d in docs(path):
            assert d["apiVersion"] in ("ray.io/v1", "v1"), path.name
            assert d["kind"] in ("RayCluster", "RayJob", "RayService", "ServiceAccount"), path.name
            assert d["metadata"]["name"], path.name


@pytest.mark.parametrize("name", ["raycluster", "rayjob", "rayservice"])
def test_cluster_specs_have_what_kuberay_requires(name):
    spec = cluster_specs()[name]
    assert spec["rayVersion"] == ray.__version__
    head = spec["headGroupSpec"]
    assert "rayStartParams" in head and head["template"]["spec"]["containers"]
    assert head["rayStartParams"].get("num-cpus") == "0", "the head runs drivers and Serve's proxy, no work"
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["authOptions"] == {"mode": "token", "secretName": "vitrine-ray-auth"}
    for group in spec["workerGroupSpecs"]:
        assert group["groupName"] and "rayStartParams" in group
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], group["groupName"]
        for c in group["template"]["spec"]["containers"]:
            gpus = int(c["resources"]["limits"].get("nvidia.com/gpu", 0))
            assert (gpus > 0) == c["image"].endswith("-gpu"), f"{group['groupName']}: GPU image iff GPU limits"
    for pod in [head, *spec["workerGroupSpecs"]]:
        assert pod["template"]["spec"]["serviceAccountName"] == "vitrine-ray"  # S3 through the IAM role


def runtime_env_vars() -> dict[str, dict]:
    """The env_vars of every runtime_env the manifests and the CronJob hand to Ray."""
    found = {"rayjob": yaml.safe_load(one(K8S / "rayjob-tune.yaml", "RayJob")["spec"]["runtimeEnvYAML"])}
    service = yaml.safe_load(one(K8S / "rayservice.yaml", "RayService")["spec"]["serveConfigV2"])
    for app in service["applications"]:
        found[f"rayservice:{app['name']}"] = app.get("runtime_env") or {}
        for d in app.get("deployments") or []:
            found[f"rayservice:{d['name']}"] = (d.get("ray_actor_options") or {}).get("runtime_env") or {}
    cron = one(CRONJOB, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    script = " ".join(cron["containers"][0]["args"])
    found["cronjob"] = json.loads(script.split("--runtime-env-json '", 1)[1].split("'", 1)[0])
    return {name: env.get("env_vars") or {} for name, env in found.items()}


def test_no_secret_travels_as_a_literal_or_in_a_runtime_env():
    from artifacts.secrets import secret_names

    for name, env in runtime_env_vars().items():
        assert not secret_names(env), f"{name}: the dashboard shows a runtime_env's env_vars"
    for path in [*MANIFESTS, CRONJOB]:
        for d in docs(path):
            for c in containers(d):
                for e in c.get("env", []):
                    # A secret comes from a Secret (valueFrom), never as a value in the manifest.
                    assert not (secret_names([e["name"]]) and "value" in e), f"{path.name}: {c['name']} {e['name']}"


def test_ray_pods_take_storage_keys_from_the_named_secret_where_no_role_reaches_them():
    for name, spec in cluster_specs().items():
        for pod in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
            for c in pod["template"]["spec"]["containers"]:
                refs = [e["secretRef"] for e in c.get("envFrom", []) if "secretRef" in e]
                # optional: with an IAM role (serviceaccount.yaml) the Secret need not exist.
                assert {"name": "vitrine-storage", "optional": True} in refs, f"{name}: {c['name']}"


def test_serve_pods_read_api_keys_from_the_mounted_secret_and_the_nightly_job_sends_its_own():
    spec = cluster_specs()["rayservice"]
    for pod in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        pod_spec = pod["template"]["spec"]
        assert {"name": "api-keys", "secret": {"secretName": "vitrine-api-keys", "optional": True}} in pod_spec["volumes"]
        for c in pod_spec["containers"]:
            mount = next(m for m in c["volumeMounts"] if m["name"] == "api-keys")
            path = next(e["value"] for e in c["env"] if e["name"] == "VITRINE_API_KEYS_FILE")
            assert mount["readOnly"] and path.startswith(mount["mountPath"] + "/")
    # The app's args name at most a key file, never a key (serve/config.yaml is in git).
    args = yaml.safe_load((ROOT / "serve" / "config.yaml").read_text())["applications"][0]["args"]
    assert not {k for k in args if "key" in k.lower()} - {"api_keys_file", "search_requires_key"}
    for pod in [cluster_specs()["raycluster"]["headGroupSpec"], *cluster_specs()["raycluster"]["workerGroupSpecs"]]:
        for c in pod["template"]["spec"]["containers"]:
            key = next(e for e in c["env"] if e["name"] == "VITRINE_API_KEY")
            assert key["valueFrom"]["secretKeyRef"] == {"name": "vitrine-api-keys", "key": "nightly", "optional": True}


def test_images_match_the_installed_ray_and_ray_cluster_yaml():
    launcher = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    launcher_images = {launcher["docker"]["image"]} | {
        t["docker"]["worker_image"] for t in launcher["available_node_types"].values() if "docker" in t}
    images = {c["image"] for p in [*MANIFESTS, CRONJOB] for d in docs(p) for c in containers(d)}
    assert images and images == launcher_images, images ^ launcher_images
    for image in images:  # the project's image tags start with the Ray it is built on (make image-tag)
        assert image.split(":")[1].startswith(f"{ray.__version__}-"), image


def test_worker_groups_match_the_launcher_config():
    launcher = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    types = launcher["available_node_types"]
    spec = cluster_specs()["raycluster"]
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"cpu-workers", "gpu-workers"}
    for group, node_type in (("cpu-workers", "cpu_worker"), ("gpu-workers", "gpu_worker")):
        assert groups[group]["minReplicas"] == types[node_type]["min_workers"]
        assert groups[group]["maxReplicas"] == types[node_type]["max_workers"]
    assert types[launcher["head_node_type"]]["resources"].get("CPU") == 0
    assert spec["autoscalerOptions"]["idleTimeoutSeconds"] == launcher["idle_timeout_minutes"] * 60


def test_the_rayjob_runs_a_real_grid_with_the_project_from_object_storage():
    job = one(K8S / "rayjob-tune.yaml", "RayJob")["spec"]
    command, args = vitrine_command(job["entrypoint"])
    assert command == "tune"
    grid = args[args.index("--grid") + 1]
    assert (ROOT / grid).is_file(), grid
    from jobs.tune_grid import build_parser

    build_parser().parse_args(args)  # every flag exists
    assert job["shutdownAfterJobFinishes"] is True
    env = yaml.safe_load(job["runtimeEnvYAML"])
    assert env["working_dir"].startswith("s3://") and env["working_dir"].endswith(".zip")
    assert "pip" not in env  # the GPU image has tensorflow[and-cuda] (Dockerfile)
    submitter = job["submitterPodTemplate"]["spec"]["containers"][0]
    token = {e["name"]: e for e in submitter["env"]}["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert token["name"] == job["rayClusterSpec"]["authOptions"]["secretName"]


def test_the_rayservice_carries_serve_config_yaml():
    from ray.serve.schema import ServeDeploySchema

    service = one(K8S / "rayservice.yaml", "RayService")["spec"]
    deployed = yaml.safe_load(service["serveConfigV2"])
    ServeDeploySchema.model_validate(deployed)  # what `serve deploy` and KubeRay accept
    local = yaml.safe_load((ROOT / "serve" / "config.yaml").read_text())
    ServeDeploySchema.model_validate(local)
    apps = deployed["applications"]
    for app in apps:
        env = app.pop("runtime_env")
        assert env["working_dir"].startswith("s3://")  # serveConfigV2 takes no local paths
        assert "pip" not in env  # the image has the dependencies the models were saved with
    # Same applications, import paths, args, deployments and autoscaling: copy serve/config.yaml's
    # text into serveConfigV2 (indented) whenever it changes.
    assert deployed == local, "cluster/k8s/rayservice.yaml serveConfigV2 differs from serve/config.yaml"
    assert {d["name"] for a in apps for d in a["deployments"]} >= {"Ingress", "Classifier", "Search"}


def test_the_nightly_cronjob_submits_a_real_job_to_the_raycluster():
    cron = one(CRONJOB, "CronJob")
    raycluster = one(K8S / "raycluster.yaml", "RayCluster")
    container = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    script = " ".join(container["args"])
    # KubeRay names the head service <RayCluster name>-head-svc.
    assert f"http://{raycluster['metadata']['name']}-head-svc:8265" in script
    command, args = vitrine_command(script.split(" -- ", 1)[1])
    assert command == "nightly"
    config = args[args.index("--config") + 1]
    assert (ROOT / config).is_file(), config
    env = {e["name"]: e for e in container["env"]}
    assert env["RAY_AUTH_MODE"]["value"] == "token"
    secret = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert secret["name"] == raycluster["spec"]["authOptions"]["secretName"] and secret["key"] == "auth_token"
    runtime_env = json.loads(script.split("--runtime-env-json '", 1)[1].split("'", 1)[0])
    assert runtime_env["working_dir"].startswith("s3://")
    assert "pip" not in runtime_env  # the RayCluster's image has the dependencies


def test_the_nightly_job_reaches_the_rayservice_for_small_increments():
    from urllib.parse import urlparse

    nightly = yaml.safe_load((ROOT / "cluster" / "nightly" / "nightly.yaml").read_text())
    service = one(K8S / "rayservice.yaml", "RayService")
    url = urlparse(nightly["embed"]["service_url"])
    # KubeRay names the Serve service <RayService name>-serve-svc; Serve listens on its http_options port.
    assert url.hostname == f"{service['metadata']['name']}-serve-svc"
    port = yaml.safe_load(service["spec"]["serveConfigV2"]).get("http_options", {}).get("port", 8000)
    assert url.port == port
