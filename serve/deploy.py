"""Deploying ``serve/config.yaml`` (the format ``serve deploy`` and KubeRay's ``serveConfigV2``
take) on the connected Ray cluster, with per-run overrides, and waiting until it serves.

Ray's own ``serve deploy`` goes through the dashboard's REST API; this goes through the same
controller call (``deploy_apps``) that ``serve run config.yaml`` uses, so a local Ray started
without a dashboard works too.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from pathlib import Path

import yaml

from artifacts import secrets, storage

log = logging.getLogger("vitrine.serve")
CONFIG_FILE = Path(__file__).with_name("config.yaml")
APP_NAME = "vitrine"
# Settings a replica on another node needs to reach the same object storage as this process.
# No credentials: a runtime_env is shown by the dashboard and `serve status`, so replicas get keys
# from their node (instance role / IRSA, the vitrine-storage Secret on KubeRay, the environment
# `ray start` ran with locally), never from here (artifacts/secrets.py).
FORWARDED_ENV = ("VITRINE_STORAGE", "VITRINE_S3_ENDPOINT", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_REGION",
                 "TF_CPP_MIN_LOG_LEVEL", "VITRINE_LOG_LEVEL", "VITRINE_LOG_FORMAT")


class DeployError(RuntimeError):
    pass


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_config(path: str | Path = CONFIG_FILE, *, args: dict | None = None,
                deployments: dict[str, dict] | None = None, http: dict | None = None,
                forward_env: bool = True) -> dict:
    """The Serve config with overrides: app ``args``, per-deployment options (merged by name) and
    ``http_options``. The storage root is made absolute here, where the caller's settings live."""
    config = yaml.safe_load(Path(path).read_text())
    apps = config.get("applications") or []
    if len(apps) != 1:
        raise DeployError(f"{path}: expected one application, found {len(apps)}")
    app = apps[0]
    app["args"] = {**(app.get("args") or {}), **{k: v for k, v in (args or {}).items() if v is not None}}
    root = app["args"].get("storage") or storage.default_root()
    app["args"]["storage"] = root if storage.is_remote(root) else os.path.abspath(root)
    copies = _search_slots(app, path)
    known = {d["name"]: d for d in app.get("deployments", [])}
    for name, options in (deployments or {}).items():
        if name not in known or name in copies:
            raise DeployError(f"no deployment {name!r} in {path}; it has {', '.join(n for n in known if n not in copies)}")
        # Options given for Search apply to the slots copied from it.
        for each in [name, *(copies if name == "Search" else ())]:
            known[each].update(_merge(known[each], options))
    if http:
        config["http_options"] = {**(config.get("http_options") or {}), **http}
    if forward_env:
        env = secrets.without_secrets({k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)})
        if env:
            runtime_env = app.setdefault("runtime_env", {})
            runtime_env["env_vars"] = {**env, **(runtime_env.get("env_vars") or {})}
    for each in [app, *(app.get("deployments") or [])]:
        renv = each.get("runtime_env") or (each.get("ray_actor_options") or {}).get("runtime_env") or {}
        found = secrets.secret_names(renv.get("env_vars") or {})
        if found:
            raise DeployError(f"{path}: {each.get('name', 'application')}'s runtime_env sets {', '.join(found)}: "
                              "secret-looking values never go into a runtime_env, where the dashboard and "
                              "`serve status` show them; give the nodes the credentials instead")
    return config


def _search_slots(app: dict, path) -> list[str]:
    """Add a copy of the ``Search`` deployment's options for each search slot past the first
    (``search_shards``) that the file does not list; returns their names. Slots it lists keep
    their own options; a slot beyond ``search_shards`` is a mistake (Serve would refuse it)."""
    from .args import search_slot_name

    slots = int(app["args"].get("search_shards") or 1)
    deployments = app.setdefault("deployments", [])
    listed = {d["name"] for d in deployments}
    extra = sorted(n for n in listed if n.startswith("Search-") and n not in {search_slot_name(s) for s in range(slots)})
    if extra:
        raise DeployError(f"{path} lists {', '.join(extra)} but search_shards is {slots}")
    base = next((d for d in deployments if d["name"] == "Search"), {"name": "Search"})
    copies = [search_slot_name(s) for s in range(1, slots) if search_slot_name(s) not in listed]
    deployments.extend({**copy.deepcopy(base), "name": name} for name in copies)
    return copies


def deploy(config: dict, *, timeout_s: float = 300.0) -> str:
    """Deploy on the Ray this process is connected to; returns the page's URL once RUNNING."""
    from ray import serve
    from ray.serve._private.api import serve_start
    from ray.serve.config import gRPCOptions
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(config)
    client = serve_start(http_options=schema.http_options.model_dump(), proxy_location=schema.proxy_location,
                         grpc_options=gRPCOptions(**schema.grpc_options.model_dump()))
    client.deploy_apps(schema, _blocking=False)
    names = [a.name for a in schema.applications]
    deadline = time.monotonic() + timeout_s
    last = ""
    while True:
        apps = serve.status().applications
        states = {n: apps[n].status if n in apps else "NOT_STARTED" for n in names}
        failed = {n: apps[n].message for n, s in states.items() if s in ("DEPLOY_FAILED", "UNHEALTHY")}
        if failed:
            raise DeployError("; ".join(f"{n}: {m}" for n, m in failed.items()))
        if all(s == "RUNNING" for s in states.values()):
            break
        if str(states) != last:
            log.info("waiting for the app: %s", ", ".join(f"{n} {s}" for n, s in states.items()))
            last = str(states)
        if time.monotonic() > deadline:
            raise DeployError(f"not running after {timeout_s:.0f} s: {states}")
        time.sleep(0.5)
    http = schema.http_options
    host = "127.0.0.1" if http.host in ("0.0.0.0", "::", "") else http.host
    prefix = schema.applications[0].route_prefix or "/"
    return f"http://{host}:{http.port}{prefix}"


def replica_counts(app_name: str = APP_NAME) -> dict[str, int]:
    """Running replicas per deployment (what the autoscaler has done)."""
    from ray import serve

    app = serve.status().applications.get(app_name)
    if app is None:
        return {}
    return {name: int(d.replica_states.get("RUNNING", 0)) for name, d in app.deployments.items()}
