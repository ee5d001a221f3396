"""A multi-node Ray cluster on this machine: a head and worker nodes, for tests and demos.

    python -m cluster.local_cluster up --workers 2       # starts it, prints its addresses, returns
    vitrine submit --address http://127.0.0.1:<dashboard port> models --json
    python -m cluster.local_cluster status
    python -m cluster.local_cluster down

    from cluster.local_cluster import LocalCluster, LocalClusterConfig
    with LocalCluster(LocalClusterConfig(workers=2)) as cluster:
        cluster.dashboard_url       # Jobs API / state API: http://127.0.0.1:<port>
        cluster.address             # GCS address for `ray.init(address=...)`
        cluster.kill_node(1)        # SIGKILL worker 1 and every process of that node
        cluster.add_worker()

Each node is one ``ray start --block`` process that this module starts in a session of its
own, with a temp dir of its own (nodes sharing one would share the unpacked runtime-env working
dirs, and a worker node releasing a job's working dir deletes it under the driver on the head),
so it owns exactly the processes of its nodes: stopping kills the process trees of those
commands and whatever else names this cluster's temp directory on its command line. It never
runs ``ray stop``, which kills every Ray process on the machine, other people's clusters
included. Every node gets explicit CPUs, memory and object store; without them each node of a
one-machine cluster claims the whole machine. Every process runs with
``RAY_AUTH_MODE=disabled`` (Ray 2.60 turns token auth on by default). Linux only (``/proc``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .processes import cmdline, is_ray_start_of, kill_all, pid_alive, pids_naming, process_tree, wait_gone

# Ray puts Unix sockets under <node temp dir>/session_<date>_<pid>/sockets/ and a socket path must
# stay under 108 bytes: this much is left for the cluster's temp dir (node dirs add 3 to 4 chars).
_MAX_TEMP_DIR_CHARS = 32


@dataclass(frozen=True)
class LocalClusterConfig:
    workers: int = 2
    head_cpus: int = 1
    worker_cpus: int = 1
    worker_gpus: int = 0
    memory_mb: int = 2048  # Ray's logical memory per node (what tasks may reserve), not a limit
    object_store_mb: int = 256  # per node, in /dev/shm
    # Parent of the cluster's own temp dir (one dir per node: logs, sockets, unpacked working
    # dirs); default: the system temp dir. A fresh directory is always made inside it.
    temp_root: str = ""
    keep_temp_dir: bool = False  # keep logs after stop()
    start_timeout_s: float = 120.0
    env: tuple[str, ...] = ()  # extra KEY=VALUE for every node's processes


@dataclass
class LocalNode:
    index: int  # 0 is the head
    name: str
    pid: int  # the `ray start --block` process, leader of the node's session
    num_cpus: int
    resources: dict = field(default_factory=dict)  # custom resources
    log_path: str = ""
    node_id: str = ""
    raylet_pid: int = 0
    alive: bool = True

    @property
    def is_head(self) -> bool:
        return self.index == 0


class LocalCluster:
    """A head and ``config.workers`` worker nodes on this machine; a context manager."""

    def __init__(self, config: LocalClusterConfig | None = None):
        self.config = config or LocalClusterConfig()
        self.nodes: list[LocalNode] = []
        self.temp_dir = ""
        self.gcs_port = 0
        self.dashboard_port = 0
        self._procs: dict[int, subprocess.Popen] = {}
        self._owns_processes = True

    # -- addresses ------------------------------------------------------------------------------

    @property
    def address(self) -> str:
        """The GCS address: ``ray.init(address=...)``, ``ray start --address``."""
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        """The dashboard: Jobs API (``vitrine submit --address``), state API."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> LocalCluster:
        if self.nodes:
            raise RuntimeError("this LocalCluster is already started")
        root = self.config.temp_root or tempfile.gettempdir()
        os.makedirs(root, exist_ok=True)
        self.temp_dir = tempfile.mkdtemp(prefix="vray-", dir=root)
        if len(self.temp_dir) > _MAX_TEMP_DIR_CHARS:
            os.rmdir(self.temp_dir)
            raise ValueError(f"temp dir {self.temp_dir!r} is too long for Ray's Unix sockets "
                             f"(at most {_MAX_TEMP_DIR_CHARS} characters): pass a shorter temp_root")
        self.gcs_port, self.dashboard_port = _free_port(), _free_port()
        try:
            head = self._launch(0, "head", self.config.head_cpus, {}, [
                "--head", f"--port={self.gcs_port}", "--dashboard-host=127.0.0.1",
                f"--dashboard-port={self.dashboard_port}", "--include-dashboard=true",
                f"--ray-client-server-port={_free_port()}", "--num-gpus=0"])
            self._wait_started(head)
            self._wait_dashboard()
            self._wait_alive(head)
            for _ in range(self.config.workers):
                self.add_worker()
        except BaseException:
            self.stop()
            raise
        return self

    def add_worker(self, num_cpus: int | None = None, resources: dict | None = None) -> LocalNode:
        """Start one more worker node (as an autoscaler would) and wait until it is alive."""
        for attempt in (1, 2):
            node = self._launch_worker(num_cpus, resources)
            try:
                self._wait_started(node)
                self._wait_alive(node)
                return node
            except RuntimeError:
                # On a loaded machine a raylet can miss `ray start`'s 30 s registration window
                # (seen on 2 cores); a second start succeeds.
                kill_all(process_tree(node.pid), signal.SIGKILL)
                self._reap(node.index)
                self.nodes.pop()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def kill_node(self, index: int) -> LocalNode:
        """SIGKILL node ``index`` (0 is the head) and every process of it at once: its raylet,
        agents and worker processes, as when a machine disappears. Returns right away; the GCS
        notices within its health-check period (:meth:`wait_for_node_state`)."""
        node = self.nodes[index]
        if not node.alive:
            raise RuntimeError(f"{node.name} is already dead")
        kill_all(process_tree(node.pid), signal.SIGKILL)
        node.alive = False
        self._reap(index)
        return node

    def stop(self) -> None:
        """Kill every process of this cluster (workers first) and remove its temp dir."""
        for node in reversed(self.nodes):
            if node.alive or pid_alive(node.pid):
                if self._owns_processes or is_ray_start_of(node.pid, self.temp_dir):
                    kill_all(process_tree(node.pid), signal.SIGKILL)
                node.alive = False
            self._reap(node.index)
        if self.temp_dir:
            # Workers whose parent died first were re-parented out of the trees above; they
            # still name our (unique) temp dir in their command lines.
            kill_all(pids_naming(self.temp_dir), signal.SIGKILL)
            wait_gone(pids_naming(self.temp_dir), timeout_s=10)
            if not self.config.keep_temp_dir:
                import shutil

                shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- cluster state through the dashboard (no driver needed) --------------------------------

    def node_states(self) -> dict[str, str]:
        """node id → ``ALIVE`` / ``DEAD``, as the GCS sees them."""
        from ray.util.state import list_nodes

        # Ray lets $RAY_ADDRESS override the address it is given: it may name another cluster.
        saved = {k: os.environ.pop(k) for k in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS") if k in os.environ}
        try:
            return {n.node_id: n.state for n in list_nodes(address=self.dashboard_url, limit=1000)}
        finally:
            os.environ.update(saved)

    def wait_for_node_state(self, node_id: str, state: str, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if self.node_states().get(node_id) == state:
                    return
            except Exception:  # noqa: BLE001, S110 - the dashboard is briefly busy right after a node dies
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"node {node_id[:12]} did not become {state} within {timeout_s:.0f} s")
            time.sleep(0.5)

    # -- state file (the CLI's `up` returns while the cluster keeps running) --------------------

    def to_state(self) -> dict:
        return {"address": self.address, "dashboard_url": self.dashboard_url, "gcs_port": self.gcs_port,
                "dashboard_port": self.dashboard_port, "temp_dir": self.temp_dir,
                "config": dataclasses.asdict(self.config), "nodes": [dataclasses.asdict(n) for n in self.nodes]}

    @classmethod
    def from_state(cls, state: dict) -> LocalCluster:
        """A handle on a cluster another process started (for ``down`` and ``status``)."""
        cfg = dict(state["config"])
        cfg["env"] = tuple(cfg.get("env", ()))
        cluster = cls(LocalClusterConfig(**cfg))
        cluster.gcs_port, cluster.dashboard_port = state["gcs_port"], state["dashboard_port"]
        cluster.temp_dir = state["temp_dir"]
        cluster.nodes = [LocalNode(**n) for n in state["nodes"]]
        for node in cluster.nodes:
            node.alive = node.alive and is_ray_start_of(node.pid, cluster.temp_dir)
        # Not our children: before killing a pid, check it is still one of this cluster's nodes.
        cluster._owns_processes = False
        return cluster

    # -- internals ------------------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        # Another cluster's address must not leak into this one's processes.
        for key in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
            env.pop(key, None)
        env["RAY_AUTH_MODE"] = "disabled"
        env["RAY_USAGE_STATS_ENABLED"] = "0"
        # Job entrypoints (`python -m jobs.cli ...`) must find this interpreter, as in an activated venv.
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
        for pair in self.config.env:
            key, _, value = pair.partition("=")
            env[key] = value
        return env

    def _launch_worker(self, num_cpus: int | None = None, resources: dict | None = None) -> LocalNode:
        index = len(self.nodes)
        # Every worker can be targeted as "any worker" or as this one worker.
        res = {"local_worker": 1, f"local_worker_{index}": 1, **(resources or {})}
        cpus = self.config.worker_cpus if num_cpus is None else num_cpus
        return self._launch(index, f"worker-{index}", cpus, res, [
            f"--address={self.address}", f"--resources={json.dumps(res)}", f"--num-gpus={self.config.worker_gpus}"])

    def _launch(self, index: int, name: str, num_cpus: int, resources: dict, args: list[str]) -> LocalNode:
        node_dir = os.path.join(self.temp_dir, f"n{index}")
        os.makedirs(node_dir, exist_ok=True)
        log_path = os.path.join(node_dir, "ray-start.out")
        cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--block", *args,
               f"--num-cpus={num_cpus}", f"--memory={self.config.memory_mb * 2**20}",
               f"--object-store-memory={self.config.object_store_mb * 2**20}", f"--temp-dir={node_dir}",
               f"--dashboard-agent-listen-port={_free_port()}", "--disable-usage-stats"]
        with open(log_path, "wb") as log:
            # A session of its own: Ctrl-C in the terminal that started us does not reach the
            # node, and the node's processes are ours to kill, nobody else's.
            proc = subprocess.Popen(cmd, env=self._env(), stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        node = LocalNode(index=index, name=name, pid=proc.pid, num_cpus=num_cpus, resources=resources,
                         log_path=log_path)
        self._procs[index] = proc
        self.nodes.append(node)
        return node

    def _wait_started(self, node: LocalNode) -> None:
        """Until the node's raylet runs; its command line carries the node id."""
        deadline = time.monotonic() + self.config.start_timeout_s
        while True:
            proc = self._procs[node.index]
            if proc.poll() is not None:
                raise RuntimeError(f"{node.name} exited with {proc.returncode} while starting:\n{_tail(node.log_path)}")
            for pid in process_tree(node.pid):
                args = cmdline(pid)
                if args and os.path.basename(args[0]) == "raylet":
                    node_id = next((a.split("=", 1)[1] for a in args if a.startswith("--node_id=")), "")
                    if node_id:
                        node.node_id, node.raylet_pid = node_id, pid
                        return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{node.name}: no raylet after {self.config.start_timeout_s:.0f} s:\n"
                                   f"{_tail(node.log_path)}")
            time.sleep(0.2)

    def _wait_dashboard(self) -> None:
        import urllib.request

        deadline = time.monotonic() + self.config.start_timeout_s
        while True:
            try:
                with urllib.request.urlopen(f"{self.dashboard_url}/api/version", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            proc = self._procs[0]
            if proc.poll() is not None:
                raise RuntimeError(f"the head exited with {proc.returncode}:\n{_tail(self.nodes[0].log_path)}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the dashboard at {self.dashboard_url} did not answer within "
                                   f"{self.config.start_timeout_s:.0f} s:\n{_tail(self.nodes[0].log_path)}")
            time.sleep(0.3)

    def _wait_alive(self, node: LocalNode) -> None:
        deadline = time.monotonic() + self.config.start_timeout_s
        while True:
            try:
                if self.node_states().get(node.node_id) == "ALIVE":
                    return
            except Exception:  # noqa: BLE001, S110 - the state API answers errors while the head starts up
                pass
            proc = self._procs[node.index]
            if proc.poll() is not None:
                raise RuntimeError(f"{node.name} exited with {proc.returncode}:\n{_tail(node.log_path)}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{node.name} did not register within {self.config.start_timeout_s:.0f} s")
            time.sleep(0.3)

    def _reap(self, index: int) -> None:
        proc = self._procs.pop(index, None)
        if proc is not None:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


# -- helpers --------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _tail(path: str, lines: int = 30) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


if __name__ == "__main__":
    # `python -m cluster.local_cluster up|status|down`: the command line is cluster/local_cluster_cli.py.
    from cluster.local_cluster_cli import main

    sys.exit(main())
