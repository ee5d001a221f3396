"""The systems ``benchmarks/serve_load.py`` puts under load, each a child process in its own
process tree that it starts and stops: the single-process baseline, the Serve app with one of
``SERVE_CONFIGS``, and serve-noop (Ray Serve with nothing to do). The Serve children run
``serve_load.py`` itself with its hidden ``--_serve`` / ``--_noop`` flags
(``benchmarks/serve_children.py``)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from serve_configs import SERVE_CONFIGS

HERE = Path(__file__).resolve().parent
ENTRY = HERE / "serve_load.py"  # what the Serve children run


class Server:
    """A server in a child process (its own process tree), started and stopped by us."""

    def __init__(self, name: str, cmd: list[str], env: dict, *, ready_timeout_s: float = 300.0,
                 cwd: str | None = None):
        self.name = name
        # The child's stderr, kept after the run (its path is printed when something fails).
        self.log = tempfile.NamedTemporaryFile(prefix=f"vitrine-{name}-", suffix=".log", delete=False)  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, text=True, start_new_session=True, cwd=cwd)
        deadline = time.monotonic() + ready_timeout_s
        self.info: dict = {}
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            if line.startswith("{") and '"ready"' in line:
                self.info = json.loads(line)
                break
        if not self.info:
            self.stop(keep_log=True)
            raise RuntimeError(f"{name} did not start; log: {self.log.name}\n{Path(self.log.name).read_text()[-3000:]}")
        self.url = self.info["ready"]

    def ask(self, command: str) -> dict:
        """A line command to the child (Serve: ``replicas``); its one-line JSON answer."""
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def stop(self, timeout_s: float = 60.0, keep_log: bool = False) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()  # the Serve child shuts Ray down when its stdin closes
            except OSError:
                pass
            try:
                self.proc.wait(timeout=timeout_s if self.name == "serve" else 1)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        try:  # anything of its tree still alive (its own session)
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if getattr(self, "tmp", None):
            shutil.rmtree(self.tmp, ignore_errors=True)
        self.log.close()
        if not keep_log:
            Path(self.log.name).unlink(missing_ok=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_baseline(args, env) -> Server:
    port = free_port()
    cmd = [sys.executable, str(HERE / "baseline_server.py"), "--port", str(port),
           "--storage", args.storage, "--infer", args.baseline_infer]
    if args.baseline_tf_threads:
        cmd += ["--tf-threads", str(args.baseline_tf_threads)]
    return Server("baseline", cmd, env, ready_timeout_s=180)


def start_serve(name: str, code: str, args, env) -> Server:
    spec = SERVE_CONFIGS[name]
    port = free_port()
    from serve import deploy

    config = deploy.load_config(deploy.CONFIG_FILE, deployments=spec.get("deployments") or {},
                                args={"storage": args.storage}, http={"host": "127.0.0.1", "port": port})
    import yaml

    path = Path(tempfile.mkdtemp(prefix="vitrine-serve-load-")) / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    child_env = {**env, **spec.get("env", {})}
    if code:
        # A patched copy of the project's serve/ package (a proposed change, measured before it is
        # made): first on PYTHONPATH of the child, and its working directory, which Ray puts near the
        # front of every worker's sys.path.
        child_env["PYTHONPATH"] = os.pathsep.join([str(Path(code).resolve()), env["PYTHONPATH"]])
    cmd = [sys.executable, str(ENTRY), "--_serve", str(path), str(port),
           "--num-cpus", str(args.num_cpus)]
    if spec.get("global_logging"):
        cmd.append("--_quiet-proxy")
    try:
        server = Server("serve", cmd, child_env, ready_timeout_s=300, cwd=str(Path(code).resolve()) if code else None)
    except BaseException:
        shutil.rmtree(path.parent, ignore_errors=True)
        raise
    server.tmp = path.parent
    return server


def start_noop(noop_config: str, replicas: int, args, env) -> Server:
    """serve-noop, with the process-wide settings (env) of ``noop_config``."""
    return Server("serve", [sys.executable, str(ENTRY), "--_noop", str(free_port()), str(replicas),
                            "--num-cpus", str(args.num_cpus)],
                  {**env, **SERVE_CONFIGS[noop_config].get("env", {})})
