"""The cluster runs the image the Dockerfile builds from the locks, and installs nothing at start:
every manifest (ray_cluster.yaml, cluster/**/*.yaml) names the one tag `make image-tag` prints,
the GPU image exactly where there are GPUs, and no node, pod or job runs pip (a replica that
installed its own Keras could load a model with another Keras than the one that saved it). The
locks (requirements/) agree with pyproject.toml, with each other, and with this environment,
which `make setup` installed from lock-test.txt. No Docker or Kubernetes needed."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
LOCKS = ROOT / "requirements"
LAUNCHER = ROOT / "ray_cluster.yaml"
MANIFESTS = sorted((ROOT / "cluster").rglob("*.yaml"))  # Kubernetes objects and job configs (no kind)
IMAGE = "REGISTRY/vitrine"
# pip/uv/conda/apt installing something: what no start command may do.
INSTALL = re.compile(r"\b(?:pip3?|uv\s+pip|conda|mamba|micromamba|apt-get|apt|dnf|yum)\s+install\b"
                     r"|\bpython3?\s+-m\s+pip\b|\bapk\s+add\b")
# runtime_env fields that install packages on the node when a job or replica starts.
INSTALLING_RUNTIME_ENV = {"pip", "uv", "conda", "py_executable"}


def pins(name: str) -> dict[str, str]:
    """``requirements/<name>``: canonical package name -> pinned version."""
    found = {}
    for line in (LOCKS / name).read_text().splitlines():
        m = re.match(r"([A-Za-z0-9._-]+)(?:\[[^\]]*\])?==([^\s;\\]+)", line)
        if m:
            found[canonicalize_name(m[1])] = m[2]
    assert found, f"{name}: no pins"
    return found


def expected_tag() -> str:
    """The rule `make image-tag` implements: the locked Ray, then a digest of the runtime locks."""
    digest = hashlib.sha256((LOCKS / "lock-cpu.txt").read_bytes() + (LOCKS / "lock-gpu.txt").read_bytes())
    return f"{pins('lock-cpu.txt')['ray']}-{digest.hexdigest()[:8]}"


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def containers(node) -> list[dict]:
    """Every Kubernetes container (a dict with ``name`` and ``image``) anywhere in a manifest."""
    if isinstance(node, dict):
        own = [node] if "image" in node and "name" in node else []
        return own + [c for v in node.values() for c in containers(v)]
    if isinstance(node, list):
        return [c for v in node for c in containers(v)]
    return []


def strings(node) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in [str(k), *strings(v)]]
    if isinstance(node, list):
        return [s for v in node for s in strings(v)]
    return []


def launcher_images() -> dict[str, str]:
    """ray_cluster.yaml: node type -> the image its nodes run."""
    raw = yaml.safe_load(LAUNCHER.read_text())
    top = raw["docker"]
    images = {}
    for name, node_type in raw["available_node_types"].items():
        own = node_type.get("docker") or {}
        if name == raw["head_node_type"]:
            images[name] = own.get("head_image") or top.get("head_image") or top["image"]
        else:
            images[name] = own.get("worker_image") or top.get("worker_image") or top["image"]
    return images


def runtime_envs() -> dict[str, dict]:
    """Every runtime_env the manifests hand to Ray: RayJobs, the RayService's applications and
    deployments, and the ones `ray job submit --runtime-env-json` gets in a container's command."""
    found = {}
    for path in MANIFESTS:
        for d in docs(path):
            kind = d.get("kind", "")
            where = f"{path.relative_to(ROOT)}:{kind}"
            if kind == "RayJob":
                found[where] = yaml.safe_load(d["spec"].get("runtimeEnvYAML") or "{}")
            if kind == "RayService":
                for app in yaml.safe_load(d["spec"]["serveConfigV2"])["applications"]:
                    found[f"{where}:{app['name']}"] = app.get("runtime_env") or {}
                    for dep in app.get("deployments") or []:
                        options = dep.get("ray_actor_options") or {}
                        found[f"{where}:{dep['name']}"] = options.get("runtime_env") or {}
            for c in containers(d):
                script = " ".join([*c.get("command", []), *c.get("args", [])])
                for i, part in enumerate(script.split("--runtime-env-json '")[1:]):
                    found[f"{where}:{c['name']}:{i}"] = json.loads(part.split("'", 1)[0])
    return found


def test_make_image_tag_is_the_lock_digest():
    out = subprocess.run(["make", "-s", "--no-print-directory", "image-tag"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout.strip()
    assert out == expected_tag()


def test_every_manifest_names_the_one_image_tag():
    tag = expected_tag()
    allowed = {f"{IMAGE}:{tag}-cpu", f"{IMAGE}:{tag}-gpu"}
    named = {f"ray_cluster.yaml:{n}": image for n, image in launcher_images().items()}
    for path in MANIFESTS:
        for d in docs(path):
            for c in containers(d):
                named[f"{path.relative_to(ROOT)}:{d['kind']}:{c['name']}"] = c["image"]
    assert {p.name for p in MANIFESTS} >= {"raycluster.yaml", "rayjob-tune.yaml", "rayservice.yaml", "cronjob.yaml"}
    stale = {where: image for where, image in named.items() if image not in allowed}
    assert not stale, (f"images other than {sorted(allowed)} (a new lock means a new tag: "
                       f"sed -i 's/vitrine:[0-9a-f.]*-[0-9a-f]*-/vitrine:{tag}-/' ...): {stale}")
    assert set(named.values()) == allowed, "both node types' images are used"


def test_the_gpu_image_runs_exactly_where_there_are_gpus():
    for name, image in launcher_images().items():
        assert image.endswith("-gpu") == ("gpu" in name), f"ray_cluster.yaml {name}: {image}"
    for path in MANIFESTS:
        for d in docs(path):
            for c in containers(d):
                gpus = int(((c.get("resources") or {}).get("limits") or {}).get("nvidia.com/gpu", 0))
                assert c["image"].endswith("-gpu") == (gpus > 0), f"{path.name}: {c['name']} {c['image']}"


def test_the_install_detector_catches_what_the_manifests_used_to_do():
    # Without this, a detector that matches nothing would pass the test below.
    assert INSTALL.search("pip install -e '/home/ray/vitrine[gpu]'")
    assert INSTALL.search("python -m pip install -r requirements.txt") and INSTALL.search("uv pip install x")
    assert not INSTALL.search("ray job submit --address http://vitrine-head-svc:8265 -- python -m jobs.nightly")


def test_no_node_pod_or_job_installs_packages_at_start():
    raw = yaml.safe_load(LAUNCHER.read_text())
    commands = {key: raw.get(key) or [] for key in ("initialization_commands", "setup_commands",
                                                     "head_setup_commands", "worker_setup_commands",
                                                     "head_start_ray_commands", "worker_start_ray_commands")}
    for name, node_type in raw["available_node_types"].items():
        for key in ("initialization_commands", "worker_setup_commands"):
            commands[f"{name}.{key}"] = node_type.get(key) or []
    for key, lines in commands.items():
        assert not [line for line in lines if INSTALL.search(line)], f"ray_cluster.yaml {key}: {lines}"
    for path in MANIFESTS:
        for d in docs(path):
            # Commands, args, entrypoints, lifecycle hooks and the YAML/JSON embedded in them.
            hits = [s for s in strings(d) if INSTALL.search(s)]
            assert not hits, f"{path.relative_to(ROOT)} {d.get('kind', '')}: installs at start: {hits}"
    envs = runtime_envs()
    assert len(envs) >= 4, f"expected the RayJob's, the RayService's and the CronJob's runtime_env: {sorted(envs)}"
    for where, env in envs.items():
        assert not INSTALLING_RUNTIME_ENV & set(env), f"{where}: runtime_env installs {INSTALLING_RUNTIME_ENV & set(env)}"


def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def test_the_dockerfile_builds_each_node_type_on_the_locked_ray_from_its_lock():
    text = dockerfile()
    ray_version = re.search(r"^ARG RAY_VERSION=(\S+)$", text, re.M)[1]
    for lock in ("lock-cpu.txt", "lock-gpu.txt", "lock-test.txt"):
        assert pins(lock)["ray"] == ray_version, f"Dockerfile RAY_VERSION {ray_version} vs {lock}"
    python_tag = f"py{sys.version_info.major}{sys.version_info.minor}"  # the Python the locks are for
    bases = {node: image for image, node in re.findall(r"^FROM (\S+) AS (cpu|gpu)-base$", text, re.M)}
    assert bases == {"cpu": f"rayproject/ray:${{RAY_VERSION}}-{python_tag}",
                     "gpu": f"rayproject/ray:${{RAY_VERSION}}-{python_tag}-gpu"}
    assert re.search(r"^FROM \$\{NODE\}-base$", text, re.M)
    assert "pip install --no-cache-dir --require-hashes -r requirements/lock-${NODE}.txt" in text
    assert "pip install --no-cache-dir --no-deps -e ." in text  # the project, without re-resolving
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv*", ".vitrine"} <= set(ignored), "local state stays out of the image"


@pytest.mark.parametrize("lock, tensorflow, other", [("lock-cpu.txt", "tensorflow-cpu", "tensorflow"),
                                                     ("lock-test.txt", "tensorflow-cpu", "tensorflow"),
                                                     ("lock-gpu.txt", "tensorflow", "tensorflow-cpu")])
def test_one_tensorflow_per_node_type(lock, tensorflow, other):
    locked = pins(lock)
    assert tensorflow in locked and other not in locked, f"{lock}: {tensorflow} and not {other}"
    assert any(name.startswith("nvidia-cudnn") for name in locked) == (tensorflow == "tensorflow")  # and-cuda
    assert locked[tensorflow] == pins("lock-cpu.txt")["tensorflow-cpu"]


def test_every_node_type_and_ci_run_the_same_versions():
    test, cpu, gpu = pins("lock-test.txt"), pins("lock-cpu.txt"), pins("lock-gpu.txt")
    for name in ("ray", "keras", "numpy", "hnswlib", "pyarrow", "boto3"):
        assert test[name] == cpu[name] == gpu[name], name
    for lock, locked in (("lock-cpu.txt", cpu), ("lock-gpu.txt", gpu)):
        differ = {n: (v, test[n]) for n, v in locked.items() if n in test and test[n] != v}
        assert not differ, f"{lock} vs lock-test.txt: {differ}"


@pytest.mark.parametrize("lock, extras", [("lock-test.txt", {"test"}), ("lock-cpu.txt", set()),
                                          ("lock-gpu.txt", {"gpu"})])
def test_the_locks_satisfy_pyproject(lock, extras):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(r) for r in project["dependencies"]]
    wanted += [Requirement(r) for extra in sorted(extras) for r in project["optional-dependencies"][extra]]
    locked = pins(lock)
    for req in wanted:
        if req.marker and not req.marker.evaluate({"extra": ""}):
            continue  # another platform's TensorFlow
        name = canonicalize_name(req.name)
        if lock == "lock-gpu.txt" and name == "tensorflow-cpu":
            continue  # the GPU nodes' one TensorFlow is the gpu extra's
        assert name in locked, f"{lock} lacks {req} (run make lock)"
        assert req.specifier.contains(locked[name], prereleases=True), f"{lock}: {name}=={locked[name]} vs {req}"


def test_this_environment_is_the_lock():
    # `make test` runs `make setup`, which installs lock-test.txt: a version that differs means
    # the tests ran on something other than what CI and the images install.
    differ = {}
    for name, pinned in pins("lock-test.txt").items():
        try:
            installed = version(name)
        except PackageNotFoundError:
            installed = None
        if installed != pinned:
            differ[name] = (pinned, installed)
    assert not differ, f"(locked, installed) differ; run make setup: {differ}"
