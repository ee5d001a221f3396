"""Submit a vitrine job to a Ray cluster through the Jobs API, follow its logs, exit with its status.

    vitrine submit --address http://HEAD:8265 tune --grid tune/grids/thesis.yaml --storage s3://bucket/vitrine
    vitrine submit embed --catalogue s3://bucket/catalogues/shop --storage s3://bucket/vitrine
    vitrine submit --no-wait nightly --config cluster/nightly/nightly.yaml
    vitrine submit --env VITRINE_LOG_LEVEL=DEBUG --submission-id nightly-20261128 nightly --config ...
    vitrine submit --pip --gpu --address http://127.0.0.1:8265 tune --grid tune/grids/thesis.yaml   # KubeRay
    vitrine jobs list | status ID | logs ID | stop ID        # the submitted jobs (jobs/ray_jobs.py)

Everything after the job name goes to the job. The job runs on the cluster as
``python -m jobs.cli <job> <args>`` with this checkout as its ``working_dir``: Ray uploads it
(``.gitignore`` honoured; ``.git``, ``.venv``, ``.vitrine`` and ``tests`` left out) and puts it
first on ``sys.path`` of the driver and every worker, so our packages import without installing
the project. Third-party packages come from the cluster (``ray_cluster.yaml``'s setup commands
install the project), or, on the stock ``rayproject/ray`` image (KubeRay, ``cluster/k8s/``), from
``--pip``: the project's dependencies from its metadata (``--gpu``: TensorFlow with CUDA, the
``gpu`` extra) as the job's runtime_env ``pip``, installed once per node and cached.
``--no-upload`` when the cluster's image already has the project.

Forwarded to the job when set here: ``VITRINE_STORAGE``, ``FASHION_MNIST_DIR``,
``VITRINE_LOG_LEVEL``, ``VITRINE_BACKBONE_WEIGHTS`` and the S3 settings that are not secrets
(``AWS_ENDPOINT_URL``, ``AWS_DEFAULT_REGION``, ``AWS_REGION``, ``AWS_PROFILE``,
``VITRINE_S3_ENDPOINT``); ``--no-forward-env`` turns that off. Forwarded values are visible in the
dashboard's job details, so secret-looking ones (``artifacts.secrets``: ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``*TOKEN*``, ``*SECRET*``, ``*PASSWORD*``,
``*_KEY``) are never forwarded and ``--env`` refuses them: the job's nodes reach object storage
with their own credentials (an instance role / IRSA, the ``vitrine-storage`` Secret on KubeRay,
the environment ``ray start`` ran with on a local cluster).
``RAY_AUTH_MODE`` and ``RAY_AUTH_TOKEN`` are never forwarded: the cluster's nodes run with their
own, and a driver told another mode than its cluster's cannot connect.

The address is ``--address``, else ``$RAY_ADDRESS``, else ``http://127.0.0.1:8265``. Exit status: 0
when the job SUCCEEDED, 1 when it FAILED or was STOPPED; with ``--no-wait``, 0 once submitted.
Ctrl-C stops following, not the job (exit 130).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shlex
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from artifacts import secrets
from artifacts.logs import setup_logging

log = logging.getLogger("vitrine.submit")

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
# Left out of the uploaded working_dir on top of .gitignore: nothing a job needs, and .git alone
# can pass Ray's package size limit.
EXCLUDES = ("/.git", "/.venv", "/.vitrine", "/tests", "**/__pycache__", "*.egg-info", "/.pytest_cache", "/build",
            "/dist")
# Where the job finds its data, storage and models; the S3 list is the embedding job's own.
VITRINE_ENV_VARS = ("VITRINE_STORAGE", "FASHION_MNIST_DIR", "VITRINE_LOG_LEVEL", "VITRINE_LOG_FORMAT",
                    "VITRINE_BACKBONE_WEIGHTS")
# Sub-commands that talk to a cluster from outside; submitting them would recurse.
NOT_SUBMITTABLE = ("submit", "jobs")
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


@dataclass(frozen=True)
class SubmitConfig:
    job: str = ""  # a vitrine sub-command (jobs.cli.COMMANDS)
    args: tuple[str, ...] = ()  # its arguments, as typed
    address: str = ""  # dashboard URL or GCS address; default $RAY_ADDRESS or http://127.0.0.1:8265
    working_dir: str = ""  # uploaded as the job's working_dir; default: this checkout
    upload: bool = True  # False: the cluster's image has the project installed
    pip: bool = False  # install the project's dependencies on the cluster (runtime_env pip)
    gpu: bool = False  # with pip: TensorFlow with CUDA (the gpu extra) instead of the CPU wheel
    excludes: tuple[str, ...] = EXCLUDES
    env: tuple[str, ...] = ()  # extra KEY=VALUE for the job
    forward_env: bool = True  # pass this shell's VITRINE_*/FASHION_MNIST_DIR/S3 settings, never its secrets
    submission_id: str = ""  # default: vitrine-<job>-<UTC time>-<random>
    wait: bool = True  # follow the logs until the job ends
    entrypoint_num_cpus: float = 0.0  # CPUs reserved for the driver itself (Ray's default: none)


@dataclass
class SubmitResult:
    submission_id: str
    address: str
    entrypoint: str
    status: str  # final with wait, else the status right after submitting
    message: str = ""

    @property
    def succeeded(self) -> bool:
        return self.status == "SUCCEEDED"


def resolve_address(address: str = "") -> str:
    return address or os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS


def connect(address: str = ""):
    """A ``JobSubmissionClient`` for ``address`` (see :func:`resolve_address`)."""
    from ray.job_submission import JobSubmissionClient

    # Ray lets $RAY_ADDRESS / $RAY_API_SERVER_ADDRESS override the address it is given; the one
    # resolved here (a flag first) must win.
    with _without_env("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        return JobSubmissionClient(resolve_address(address))


def project_root() -> str:
    """The source checkout this package runs from (pyproject.toml next to jobs/), or ""."""
    root = Path(__file__).resolve().parents[1]
    return str(root) if (root / "pyproject.toml").is_file() and (root / "jobs" / "cli.py").is_file() else ""


def entrypoint(job: str, args=()) -> str:
    from .cli import COMMANDS

    if job not in COMMANDS or job in NOT_SUBMITTABLE:
        valid = ", ".join(sorted(set(COMMANDS) - set(NOT_SUBMITTABLE)))
        raise ValueError(f"cannot submit {job!r}: not a vitrine job; valid: {valid}")
    return shlex.join(["python", "-m", "jobs.cli", job, *args])


def forwarded_env(environ=None) -> dict[str, str]:
    """The settings of this shell that travel to the job: never a secret-looking one."""
    from artifacts import storage

    environ = os.environ if environ is None else environ
    present = {k: environ[k] for k in (*VITRINE_ENV_VARS, *storage.ENV_VARS) if environ.get(k)}
    held_back = secrets.secret_names(present)
    if held_back:
        log.info("not forwarded to the job (secrets; the cluster's nodes use their own credentials): %s",
                 ", ".join(held_back))
    return secrets.without_secrets(present)


def project_requirements(gpu: bool = False) -> list[str]:
    """The project's runtime dependencies for a node that already has Ray: the installed
    metadata (pyproject.toml), without ``ray`` and the extras; ``gpu`` swaps the TensorFlow
    wheels for the ``gpu`` extra's."""
    from importlib.metadata import requires

    from packaging.requirements import Requirement

    base, gpu_extra = [], []
    for line in requires("vitrine") or []:
        req = Requirement(line)
        marker = str(req.marker) if req.marker else ""
        if "extra ==" in marker:
            if 'extra == "gpu"' in marker:
                req.marker = None
                gpu_extra.append(str(req))
        elif req.name != "ray":
            base.append(line)
    if gpu:
        base = [r for r in base if not Requirement(r).name.startswith("tensorflow")] + gpu_extra
    return base


def runtime_env(config: SubmitConfig, environ=None) -> dict:
    """The job's runtime_env: the project as working_dir and its environment variables."""
    env = forwarded_env(environ) if config.forward_env else {}
    for pair in config.env:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--env {pair!r} is not KEY=VALUE")
        if secrets.is_secret_name(key):
            # The runtime_env is job metadata: the dashboard and `ray job list` show it to anyone.
            raise ValueError(f"--env {key}: secret-looking values never go into a job's runtime_env, where the "
                             "dashboard and the job's metadata show them; give the cluster's nodes the "
                             "credentials (an instance role / IRSA, or the vitrine-storage Secret on KubeRay)")
        env[key] = value
    renv: dict = {"env_vars": env} if env else {}
    if config.upload:
        working_dir = config.working_dir or project_root()
        if not working_dir:
            raise ValueError("no source checkout to upload: pass --working-dir DIR (the project root), "
                             "or --no-upload when the cluster's image has vitrine installed")
        if not (Path(working_dir) / "jobs" / "cli.py").is_file():
            raise ValueError(f"--working-dir {working_dir} is not the vitrine project root (no jobs/cli.py)")
        renv["working_dir"] = str(Path(working_dir).resolve())
        renv["excludes"] = list(config.excludes)
    if config.pip:
        renv["pip"] = project_requirements(gpu=config.gpu)
    elif config.gpu:
        raise ValueError("--gpu only chooses the TensorFlow wheel that --pip installs: add --pip")
    return renv


def run(config: SubmitConfig, out: TextIO | None = None) -> SubmitResult:
    """Submit ``vitrine <job> <args>``; with ``config.wait``, stream its logs to ``out`` until it ends."""
    out = out or sys.stdout
    command = entrypoint(config.job, config.args)
    renv = runtime_env(config)
    address = resolve_address(config.address)
    _warn_local_paths(renv.get("env_vars", {}), address)
    client = connect(address)
    submission_id = config.submission_id or (
        f"vitrine-{config.job}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:6]}")
    submission_id = client.submit_job(
        entrypoint=command, runtime_env=renv, submission_id=submission_id,
        entrypoint_num_cpus=config.entrypoint_num_cpus or None,
        metadata={"vitrine_job": config.job})
    env_names = sorted(renv.get("env_vars", {}))
    log.info("submitted %s to %s: %s%s", submission_id, address, command,
             f" (env: {', '.join(env_names)})" if env_names else "")
    if not config.wait:
        return SubmitResult(submission_id, address, command, str(client.get_job_status(submission_id)))
    try:
        status = follow(client, submission_id, out)
    except KeyboardInterrupt:
        log.warning("stopped following %s; the job keeps running (vitrine jobs stop %s --address %s)",
                    submission_id, submission_id, address)
        return SubmitResult(submission_id, address, command, str(client.get_job_status(submission_id)),
                            "interrupted")
    info = client.get_job_info(submission_id)
    return SubmitResult(submission_id, address, command, status, info.message or "")


def follow(client, submission_id: str, out: TextIO) -> str:
    """Stream the job's logs to ``out`` until it ends; its final status."""
    import asyncio

    async def tail() -> None:
        async for chunk in client.tail_job_logs(submission_id):
            out.write(secrets.redact(chunk))  # NAME=value split across two chunks is missed
            out.flush()

    try:
        asyncio.run(tail())
    except RuntimeError as exc:  # the stream can drop (head restart, proxy timeout); the job may go on
        log.warning("log stream of %s ended early (%s); waiting for the job's status", submission_id, exc)
    while True:
        # The stream closes when the driver exits; the status may lag it by a moment.
        status = str(client.get_job_status(submission_id))
        if status in TERMINAL:
            return status
        time.sleep(1.0)


def build_parser() -> argparse.ArgumentParser:
    from .cli import COMMANDS

    jobs = sorted(set(COMMANDS) - set(NOT_SUBMITTABLE))
    p = argparse.ArgumentParser(prog="vitrine submit", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--address", help=f"Ray dashboard URL or GCS address (default $RAY_ADDRESS or {DEFAULT_ADDRESS})")
    p.add_argument("--working-dir", help="project root uploaded as the job's working_dir (default: this checkout)")
    p.add_argument("--no-upload", action="store_true", help="upload nothing: the cluster's image has vitrine")
    p.add_argument("--pip", action="store_true", help="install the project's dependencies on the cluster "
                   "(for the stock rayproject/ray image)")
    p.add_argument("--gpu", action="store_true", help="with --pip: TensorFlow with CUDA (the gpu extra)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="environment variable for the job")
    p.add_argument("--no-forward-env", action="store_true",
                   help="do not pass this shell's VITRINE_*/AWS_* settings (secrets never travel)")
    p.add_argument("--submission-id", help="the job's id (default vitrine-<job>-<time>-<random>)")
    p.add_argument("--no-wait", action="store_true", help="return once submitted")
    p.add_argument("--entrypoint-num-cpus", type=float, help="CPUs reserved for the driver (default 0)")
    p.add_argument("job", help=f"the vitrine command to run: {', '.join(jobs)}")
    p.add_argument("args", nargs=argparse.REMAINDER, help="the job's own arguments")
    return p


def main(argv: list[str] | None = None) -> int:
    from artifacts.configuration import load_config

    args = build_parser().parse_args(argv)
    setup_logging()
    config = load_config(SubmitConfig, values={
        "job": args.job, "args": tuple(args.args), "address": args.address, "working_dir": args.working_dir,
        "upload": False if args.no_upload else None, "pip": args.pip or None, "gpu": args.gpu or None,
        "env": tuple(args.env),
        "forward_env": False if args.no_forward_env else None, "submission_id": args.submission_id,
        "wait": False if args.no_wait else None, "entrypoint_num_cpus": args.entrypoint_num_cpus})
    try:
        result = run(config)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not config.wait:
        print(result.submission_id)
        return 0
    # A failed job's message repeats the tail of its logs: its first line is the news.
    note = result.message.strip().splitlines()[0] if result.message.strip() else ""
    print(f"job {result.submission_id}: {result.status}" + (f" ({note.rstrip(':')})" if note else ""))
    if result.message == "interrupted":
        return 130
    return 0 if result.succeeded else 1


@contextlib.contextmanager
def _without_env(*names: str):
    saved = {k: os.environ.pop(k) for k in names if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def _warn_local_paths(env: dict, address: str) -> None:
    """A local path means the same directory on every node only when the cluster is this machine."""
    from urllib.parse import urlparse

    host = urlparse(address if "://" in address else f"//{address}").hostname or ""
    if host in ("127.0.0.1", "localhost", "::1"):
        return
    for key in ("VITRINE_STORAGE", "FASHION_MNIST_DIR"):
        value = env.get(key, "")
        if value and "://" not in value:
            log.warning("%s=%s is a local path: on the cluster it names a directory of the node the job "
                        "runs on, not this machine's (use s3://..., or --env %s=...)", key, value, key)


if __name__ == "__main__":
    sys.exit(main())
