"""Closed-loop HTTP load on ``POST /v1/search``: the Ray Serve app against the published design
as a single-process server (``benchmarks/baseline_server.py``), in one run, on loopback.

    RAY_AUTH_MODE=disabled TF_CPP_MIN_LOG_LEVEL=2 .venv/bin/python benchmarks/serve_load.py \
        --markdown docs/BENCHMARKS.md          # baseline, then Serve as shipped and with the best settings
    ... benchmarks/serve_load.py --systems baseline,serve,serve-noop \
        --serve-config shipped,fixed-211-throughput@/tmp/patched   # a patched copy of serve/ in /tmp/patched
    ... benchmarks/serve_load.py --sweep --concurrency 1,16,32 --duration 8   # every SERVE_CONFIGS entry

Both systems serve the same artifacts (``$VITRINE_STORAGE``: ``indexes/LATEST`` and the model it
was built with) and get the same queries: real catalogue PNGs, a different one for every
request. One system runs at a time, each in its own process tree (a local Ray with 2 CPUs for
Serve, deployed by ``jobs.serve_app.run`` from ``serve/config.yaml`` with the overrides of
``SERVE_CONFIGS``); it is stopped before the next starts. For each concurrency N, N clients on
keep-alive connections send a request as soon as their previous one is answered, for
``--warmup`` seconds (not counted) and then ``--duration`` seconds; throughput counts the 200s
completed in that window, latency percentiles are over them, anything else is an error. The
generator (``benchmarks/loadgen.py``) runs in this process and shares the 2 cores with the
server, the same for both systems. Reported besides: the server tree's CPU time per request, the
generator's CPU, and the CPU other processes on the machine used during the window (a window
where that exceeds ``--other-max`` is measured again). Before the load, the first
``--check-queries`` answers of each system are kept and compared with the baseline's (same
class, overlap of the result lists).

A latency CDF (``benchmarks/latency_cdf.py``: one panel per concurrency, one line per system,
from every OK request of the window) is written next to the results: ``--cdf PATH``, by default
``<json name>_latency_cdf.png`` beside ``--json``, else ``serve_latency_cdf.png`` beside
``--markdown`` (and linked from the Markdown block).

``serve-noop`` is Ray Serve with nothing to do (a replica returning a canned answer of the same
size): the ceiling any handler code could reach with this stack on this machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from latency_cdf import plot_latency_cdf
from loadgen import build_requests, run_load

SECTION = "## Serving (issue 4)"
BEGIN, END = "<!-- serve_load:begin -->", "<!-- serve_load:end -->"
CLK = os.sysconf("SC_CLK_TCK")


def _fixed(ingress: int = 1, classifier: int = 1, search: int = 1) -> dict:
    def n(k):
        return {"autoscaling_config": {"min_replicas": k, "initial_replicas": k, "max_replicas": k}}
    return {"Ingress": n(ingress), "Classifier": n(classifier), "Search": n(search)}


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _batch(size: int, wait_s: float) -> dict:
    return {"Classifier": {"user_config": {"max_batch_size": size, "batch_wait_timeout_s": wait_s}}}


NO_ACCESS_LOG = {d: {"logging_config": {"enable_access_log": False}} for d in ("Ingress", "Classifier", "Search")}
# Serve deployment settings tried by --sweep: deploy.load_config(deployments=...) overrides of
# serve/config.yaml, plus process-wide settings of the local Ray ("env", "global_logging").
SERVE_CONFIGS: dict[str, dict] = {
    "shipped": {"deployments": {}, "about": "serve/config.yaml as it is (autoscaling, 1 replica each at start)"},
    "fixed-111": {"deployments": _fixed(1, 1, 1), "about": "1 replica each, no autoscaling"},
    "fixed-121": {"deployments": _fixed(1, 2, 1), "about": "2 Classifier replicas"},
    "fixed-111-b32-w2ms": {"deployments": _merge(_fixed(1, 1, 1), _batch(32, 0.002)),
                           "about": "batch up to 32, wait 2 ms"},
    "fixed-111-b16-w10ms": {"deployments": _merge(_fixed(1, 1, 1), _batch(16, 0.010)),
                            "about": "batch up to 16, wait 10 ms"},
    "fixed-111-quiet": {"deployments": _merge(_fixed(1, 1, 1), NO_ACCESS_LOG), "global_logging": True,
                        "about": "no access logs (replicas and proxy)"},
    "fixed-111-sameloop": {"deployments": _fixed(1, 1, 1),
                           "env": {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
                                   "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0"},
                           "about": "user code and router on the replica's own event loop"},
    "fixed-111-throughput": {"deployments": _fixed(1, 1, 1), "env": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"},
                             "about": "RAY_SERVE_THROUGHPUT_OPTIMIZED=1 (Ray's throughput mode: direct ingress, "
                                      "gRPC between replicas, user code and router on the main loop, batched logs)"},
    "fixed-111-throughput-b32-w2ms": {"deployments": _merge(_fixed(1, 1, 1), _batch(32, 0.002)),
                                      "env": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"},
                                      "about": "RAY_SERVE_THROUGHPUT_OPTIMIZED=1, batch up to 32, wait 2 ms"},
    "fixed-211-throughput": {"deployments": _fixed(2, 1, 1), "env": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"},
                             "about": "RAY_SERVE_THROUGHPUT_OPTIMIZED=1, 2 Ingress replicas"},
    "fixed-111-throughput-proxy": {"deployments": _fixed(1, 1, 1),
                                   "env": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
                                           "RAY_SERVE_ENABLE_DIRECT_INGRESS": "0"},
                                   "about": "Ray's throughput mode but through the HTTP proxy (no direct ingress)"},
}


# ----------------------------------------------------------------------------- measurements
def tree_cpu_s(root: int) -> float:
    """User+system CPU seconds of ``root`` and its live descendants (Linux /proc)."""
    from cluster.processes import process_tree

    total = 0.0
    for pid in process_tree(root):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / CLK
        except (OSError, IndexError, ValueError):
            pass
    return total


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine."""
    with open("/proc/stat") as f:
        vals = [int(v) for v in f.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    return sum(vals) - idle, sum(vals)


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def query_images(storage_root: str, n: int, seed: int = 0) -> list[bytes]:
    """``n`` real catalogue PNGs, a random sample across all categories."""
    from artifacts import storage
    from artifacts.catalogue_listing import list_catalogue

    items = list_catalogue(storage.join(storage_root, "catalogues", "fashion-mnist-train")).select(
        ["image_uri"]).column(0).to_pylist()
    picks = random.Random(seed).sample(items, min(n, len(items)))
    return [storage.read_bytes(u) for u in picks]


def is_search_answer(body: bytes) -> bool:
    return b'"results"' in body and b'"item_id"' in body


# ------------------------------------------------------------------------------- the servers
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


def wait_serving(url: str, request: bytes, timeout_s: float = 180.0) -> None:
    """Until one search answers 200 (the Serve app loads model and index on the first request)."""
    import asyncio

    from loadgen import _read_response

    u = urlsplit(url)

    async def once():
        reader, writer = await asyncio.open_connection(u.hostname, u.port)
        try:
            writer.write(request)
            return await asyncio.wait_for(_read_response(reader), 60)
        finally:
            writer.close()

    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            status, body, _ = asyncio.run(once())
            if status == 200 and is_search_answer(body):
                return
            last = f"{status} {body[:200]!r}"
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as exc:
            last = repr(exc)
        time.sleep(1.0)
    raise RuntimeError(f"{url} does not answer searches: {last}")


def other_load(server_pid: int, seconds: float = 2.0) -> float:
    """Cores used by everything except the server under test and this process, over ``seconds``."""
    m0, s0, c0 = machine_cpu(), tree_cpu_s(server_pid), sum(os.times()[:2])
    time.sleep(seconds)
    m1, s1, c1 = machine_cpu(), tree_cpu_s(server_pid), sum(os.times()[:2])
    busy = (m1[0] - m0[0]) / max(1, m1[1] - m0[1]) * (os.cpu_count() or 1)
    return max(0.0, busy - (s1 - s0) / seconds - (c1 - c0) / seconds)


def wait_quiet(server_pid: int, limit: float, max_wait_s: float) -> float:
    """Until the rest of the machine uses less than ``limit`` cores (or ``max_wait_s`` passed)."""
    deadline = time.monotonic() + max_wait_s
    while True:
        other = other_load(server_pid)
        if other < limit or time.monotonic() > deadline:
            return other
        print(f"    waiting: other processes use {other:.2f} cores", flush=True)
        time.sleep(8)


def sample_answers(url: str, requests: list[bytes]) -> list[tuple[str, list[str]]]:
    """(predicted class, result item ids) for each request, one at a time on one connection."""
    import asyncio

    from loadgen import _read_response

    u = urlsplit(url)

    async def run():
        reader, writer = await asyncio.open_connection(u.hostname, u.port)
        out = []
        try:
            for req in requests:
                writer.write(req)
                status, body, _ = await asyncio.wait_for(_read_response(reader), 60)
                d = json.loads(body) if status == 200 else {}
                out.append((d.get("predicted", ""), [r["item_id"] for r in d.get("results", [])]))
        finally:
            writer.close()
        return out

    return asyncio.run(run())


def agreement(answers: list, reference: list) -> dict:
    """How often two systems predicted the same class, and the mean overlap of their result lists."""
    same = [a[0] == b[0] for a, b in zip(answers, reference)]
    overlap = [len(set(a[1]) & set(b[1])) / max(1, len(b[1])) for a, b in zip(answers, reference)]
    return {"n": len(same), "same_class": sum(same) / max(1, len(same)),
            "overlap": sum(overlap) / max(1, len(overlap))}


def measure(server: Server, bodies: list[bytes], concurrencies: list[int], args, label: str) -> list[dict]:
    url = f"{server.url.rstrip('/')}/v1/search?k={args.k}"
    requests = build_requests(url, bodies)
    wait_serving(url, requests[0])
    server.answers = sample_answers(url, requests[:args.check_queries])
    rows = []
    ncpu = os.cpu_count() or 1
    for c in concurrencies:
        for attempt in range(args.retries + 1):
            wait_quiet(server.proc.pid, args.other_max, args.quiet_wait)
            probe = {}

            def on_window(name, probe=probe):
                probe[name] = (time.perf_counter(), tree_cpu_s(server.proc.pid), sum(os.times()[:2]), machine_cpu())

            r = run_load(url, requests, c, duration_s=args.duration, warmup_s=args.warmup, check=is_search_answer,
                         on_window=on_window)
            (t0, s0, c0, m0), (t1, s1, c1, m1) = probe["start"], probe["end"]
            wall = t1 - t0
            row = {"system": label, "concurrency": c, "seconds": round(r.duration_s, 2), "ok": r.ok,
                   "errors": r.errors, "statuses": {str(k): v for k, v in r.statuses.items()},
                   "rps": r.rps, "p50_ms": r.percentile(50), "p95_ms": r.percentile(95), "p99_ms": r.percentile(99),
                   "server_cpu_ms_per_req": (s1 - s0) * 1000 / r.ok if r.ok else float("nan"),
                   "server_cpu_cores": (s1 - s0) / wall, "client_cpu_cores": (c1 - c0) / wall,
                   "machine_busy_cores": (m1[0] - m0[0]) / max(1, m1[1] - m0[1]) * ncpu, "attempt": attempt + 1}
            row["other_cores"] = max(0.0, row["machine_busy_cores"] - row["server_cpu_cores"] - row["client_cpu_cores"])
            row["latencies_ms"] = r.latencies_ms  # for the CDF; main() takes them out before the JSON
            print(f"  {label:>24} c={c:<3} {row['rps']:8.1f} req/s  p50 {row['p50_ms']:7.1f}  p95 {row['p95_ms']:7.1f}"
                  f"  p99 {row['p99_ms']:7.1f} ms  errors {row['errors']}  server {row['server_cpu_cores']:.2f} cores"
                  f" ({row['server_cpu_ms_per_req']:.2f} ms/req)  client {row['client_cpu_cores']:.2f}"
                  f"  other {row['other_cores']:.2f}", flush=True)
            if row["other_cores"] <= args.other_max:
                break
            if attempt < args.retries:
                print(f"    other processes used {row['other_cores']:.2f} cores during the window: measuring again",
                      flush=True)
        rows.append(row)
    return rows


def start_baseline(args, env) -> Server:
    port = free_port()
    cmd = [sys.executable, str(ROOT / "benchmarks" / "baseline_server.py"), "--port", str(port),
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
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_serve", str(path), str(port),
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


def serve_child(config_path: str, port: int, num_cpus: int, quiet_proxy: bool) -> int:
    """Runs in the Serve child: the app via ``jobs.serve_app.run``, until stdin closes."""
    # Our answers go to the parent on the original stdout; everything else (Ray prints worker
    # output on the driver's stdout) goes to stderr, the log file, so the pipe never fills up.
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    from artifacts.logs import setup_logging
    from jobs.serve_app import ServeConfig, run

    setup_logging()
    if quiet_proxy:
        # What `deploy.deploy` would do if it passed the config's logging_config to serve_start:
        # start Serve (controller + proxy) without access logs; deploy() then reuses it.
        from ray.serve._private.api import serve_start

        from artifacts.ray_session import ensure_ray

        ensure_ray("", num_cpus)
        serve_start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="EveryNode",
                    global_logging_config={"enable_access_log": False})
    result = run(ServeConfig(config=config_path, host="127.0.0.1", port=port, num_cpus=num_cpus))
    print(json.dumps({"ready": result.url, "replicas": result.replicas}), file=answers, flush=True)
    from serve import deploy

    return _answer_until_eof(answers, deploy.replica_counts)


def noop_child(port: int, num_cpus: int, replicas: int = 1) -> int:
    """Runs in the child of ``serve-noop``: Ray Serve's own ceiling on this machine. One deployment
    that reads the body and returns a canned answer of the size of a real search answer: the
    HTTP proxy and one replica hop, no decoding, no model, no search."""
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    from ray import serve
    from starlette.responses import Response

    from artifacts.ray_session import ensure_ray

    canned = json.dumps({"model_id": "m" * 32, "index_id": "i" * 60, "predicted": "Sneaker",
                         "classes": [{"name": f"class-{i}", "probability": 0.1} for i in range(10)],
                         "category": "Sneaker", "k": 30,
                         "results": [{"item_id": f"train-{i:06d}", "category": "Sneaker", "distance": 0.123456,
                                      "similarity": 87.65, "image_url": f"/v1/items/train-{i:06d}/image"}
                                     for i in range(30)], "took_ms": 1.0}).encode()

    @serve.deployment(name="Noop", num_replicas=replicas, max_ongoing_requests=64,
                      logging_config={"enable_access_log": False})
    class Noop:
        async def __call__(self, request) -> Response:
            await request.body()
            return Response(canned, media_type="application/json")

    ensure_ray("", num_cpus)
    serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"enable_access_log": False})
    serve.run(Noop.bind(), name="noop", route_prefix="/")
    print(json.dumps({"ready": f"http://127.0.0.1:{port}/", "replicas": {"Noop": replicas}}), file=answers,
          flush=True)
    return _answer_until_eof(answers, lambda: {"Noop": replicas})


def _answer_until_eof(answers, replica_counts) -> int:
    """A child's loop: answer "replicas" on stdin until the parent closes it, then stop Serve and Ray."""
    import ray
    from ray import serve

    try:
        for line in sys.stdin:
            if line.strip() == "replicas":
                print(json.dumps(replica_counts()), file=answers, flush=True)
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
    return 0


# ---------------------------------------------------------------------------------- report
def _fmt(v, nd=1):
    return "–" if v is None or math.isnan(v) else f"{v:,.{nd}f}"


def table(rows: list[dict]) -> list[str]:
    out = [("| system | clients | requests/s | p50 ms | p95 ms | p99 ms | errors | server CPU ms/request | "
           "CPU cores: server / load generator / other processes |"), "|:--|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in rows:
        out.append(f"| {r['system']} | {r['concurrency']} | {_fmt(r['rps'])} | {_fmt(r['p50_ms'])} | "
                   f"{_fmt(r['p95_ms'])} | {_fmt(r['p99_ms'])} | {r['errors']} | {_fmt(r['server_cpu_ms_per_req'], 2)} | "
                   f"{r['server_cpu_cores']:.2f} / {r['client_cpu_cores']:.2f} / {r['other_cores']:.2f} |")
    return out


def comparison(base: list[dict], serve: list[dict], label: str) -> list[str]:
    by_c = {r["concurrency"]: r for r in base}
    out = [f"| clients | {label} ÷ baseline throughput | p99 {label} / baseline (ms) | target (≥ 3×, p99 ≤ baseline) |",
           "|--:|--:|--:|:--|"]
    for r in serve:
        b = by_c.get(r["concurrency"])
        if not b or not b["rps"]:
            continue
        ratio = r["rps"] / b["rps"]
        met = ratio >= 3.0 and r["p99_ms"] <= b["p99_ms"]
        out.append(f"| {r['concurrency']} | {ratio:.2f}× | {_fmt(r['p99_ms'])} / {_fmt(b['p99_ms'])} | "
                   f"{'met' if met else 'missed'} |")
    return out


def write_markdown(path: str, text: str, begin: str = BEGIN, end: str = END) -> None:
    """Replace the block between the markers in ``path`` (or add it, under SECTION)."""
    p = Path(path)
    doc = p.read_text() if p.exists() else ""
    block = f"{begin}\n{text.rstrip()}\n{end}"
    if begin in doc and end in doc:
        head, rest = doc.split(begin, 1)
        doc = head + block + rest.split(end, 1)[1]
    else:
        if SECTION not in doc:
            doc = doc.rstrip() + f"\n\n{SECTION}\n"
        doc = doc.rstrip() + "\n\n" + block + "\n"
    p.write_text(doc)


# ----------------------------------------------------------------------------------- driver
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--storage", default=os.environ.get("VITRINE_STORAGE", str(ROOT / ".vitrine")))
    p.add_argument("--concurrency", default="1,4,16,32", help="comma-separated client counts")
    p.add_argument("--duration", type=float, default=20.0, help="measured seconds per concurrency")
    p.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds before each window")
    p.add_argument("--k", type=int, default=30, help="results per search (the app's default_k)")
    p.add_argument("--queries", type=int, default=2000, help="distinct catalogue PNGs to cycle through")
    p.add_argument("--systems", default="baseline,serve")
    p.add_argument("--serve-config", default="shipped,fixed-111-throughput",
                   help="comma-separated Serve settings to measure, names from SERVE_CONFIGS: "
                        f"{', '.join(SERVE_CONFIGS)}; NAME@DIR deploys a modified `serve` package from DIR "
                        "(a patched copy, to measure a proposed change to serve/)")
    p.add_argument("--noop-config", default="", help="process-wide settings for serve-noop (default: the first "
                                                      "--serve-config)")
    p.add_argument("--check-queries", type=int, default=100,
                   help="answers compared with the baseline's (class and result overlap)")
    p.add_argument("--sweep", action="store_true", help="measure every entry of SERVE_CONFIGS (Serve only)")
    p.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray")
    p.add_argument("--baseline-infer", default="auto")
    p.add_argument("--baseline-tf-threads", type=int, default=0)
    p.add_argument("--other-max", type=float, default=0.25,
                   help="a window during which other processes used more cores than this is measured again")
    p.add_argument("--retries", type=int, default=2, help="re-measurements of a window disturbed by other load")
    p.add_argument("--quiet-wait", type=float, default=120.0,
                   help="seconds to wait, before each window, for other load to drop below --other-max")
    p.add_argument("--json", help="write every row to this JSON file")
    p.add_argument("--markdown", help="write the results into this file's '## Serving (issue 4)' section")
    p.add_argument("--cdf", help="latency CDF PNG (default: next to --json as <name>_latency_cdf.png, else "
                                 "serve_latency_cdf.png next to --markdown, else none)")
    p.add_argument("--_serve", nargs=2, help=argparse.SUPPRESS)
    p.add_argument("--_noop", type=int, nargs=2, help=argparse.SUPPRESS)
    p.add_argument("--_quiet-proxy", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._noop:
        return noop_child(args._noop[0], args.num_cpus, args._noop[1])
    if args._serve:
        return serve_child(args._serve[0], int(args._serve[1]), args.num_cpus, args._quiet_proxy)

    env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled"),
           "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
           "VITRINE_STORAGE": args.storage, "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)  # always a private local Ray, never someone's running cluster
    concurrencies = [int(c) for c in args.concurrency.split(",") if c.strip()]
    systems = ["serve"] if args.sweep else [s.strip() for s in args.systems.split(",") if s.strip()]
    serve_configs = list(SERVE_CONFIGS) if args.sweep else [c.strip() for c in args.serve_config.split(",") if c.strip()]
    for c in serve_configs:
        if c.split("@")[0] not in SERVE_CONFIGS:
            p.error(f"unknown --serve-config {c!r}; one of {', '.join(SERVE_CONFIGS)}")
    noop_config = args.noop_config or serve_configs[0].split("@")[0]
    # As many no-op replicas as the Ingress has in that setting.
    noop_replicas = int(SERVE_CONFIGS[noop_config].get("deployments", {}).get("Ingress", {}).get(
        "autoscaling_config", {}).get("max_replicas", 1))
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load_before = load_average()
    print(f"load average before: {load_before}; {os.cpu_count()} CPUs; loading {args.queries} query images",
          flush=True)
    bodies = query_images(args.storage, args.queries)
    rows, meta, answers = [], {"baseline": {}, "serve": {}}, {}
    for system in systems:
        for name in (serve_configs if system == "serve" else [None]):
            name, _, code = (name or "").partition("@")
            label = {"baseline": "baseline", "serve-noop": "serve-noop"}.get(
                system, f"serve ({name}{', code ' + Path(code).name if code else ''})")
            print(f"{label}: starting ...", flush=True)
            t0 = time.monotonic()
            if system == "baseline":
                server = start_baseline(args, env)
            elif system == "serve-noop":  # with the process-wide settings of --serve-config
                server = Server("serve", [sys.executable, str(Path(__file__).resolve()), "--_noop", str(free_port()),
                                          str(noop_replicas), "--num-cpus", str(args.num_cpus)],
                                {**env, **SERVE_CONFIGS[noop_config].get("env", {})})
            else:
                server = start_serve(name, code, args, env)
            try:
                info = dict(server.info, startup_s=round(time.monotonic() - t0, 1))
                rows_here = measure(server, bodies, concurrencies, args, label)
                answers[label] = server.answers
                if system == "serve":
                    info["replicas_after"] = server.ask("replicas")
                rows += rows_here
                meta.setdefault(system, {})[label] = info
                print(f"{label}: {json.dumps(info)}", flush=True)
            finally:
                server.stop()
    load_after = load_average()
    latencies = [(r["system"], r["concurrency"], r.pop("latencies_ms")) for r in rows]

    base = [r for r in rows if r["system"] == "baseline"]
    lines = [(f"{started}; {os.cpu_count()} CPUs; load average (1/5/15 min) before {load_before}, after {load_after}; "
             f"{len(bodies)} distinct catalogue PNGs as queries, k={args.k}; {args.warmup:g} s warm-up + "
             f"{args.duration:g} s measured per row."), ""]
    if meta.get("baseline"):
        b = meta["baseline"]["baseline"]
        lines.append(f"Baseline: `{b['infer']}` per query (single-image times at start-up, ms: "
                     f"{', '.join(f'{k} {v}' for k, v in b['infer_ms'].items())}), {b['tf_threads']} TF threads.")
    for label, info in meta["serve"].items():
        name = label[len("serve ("):-1].split(", code ")[0]
        lines.append(f"`{label}`: {SERVE_CONFIGS[name]['about']}; replicas after the run: "
                     f"{json.dumps(info.get('replicas_after', {}))}.")
    lines += [""] + table(rows)
    if meta.get("serve-noop"):
        lines.append(f"`serve-noop`: Ray Serve's ceiling here: the same HTTP proxy and {noop_replicas} replica(s) that "
                     "read the body and return a canned answer of the same size (no decoding, model or search); "
                     f"process-wide settings (env) of `{noop_config}`: "
                     f"`{json.dumps(SERVE_CONFIGS[noop_config].get('env', {}))}`.")
    if "baseline" in answers:
        lines.append("")
        for label in meta["serve"]:
            a = agreement(answers[label], answers["baseline"])
            lines.append(f"Same answers? `{label}` vs baseline on the first {a['n']} queries: same predicted class "
                         f"{a['same_class']:.0%}, top-{args.k} results in common {a['overlap']:.1%} (HNSW vs exact).")
    for label in [*meta["serve"], *meta.get("serve-noop", {})]:
        if base:
            lines += [""] + comparison(base, [r for r in rows if r["system"] == label], label)
    peak = {}
    for r in rows:
        if r["rps"] > peak.get(r["system"], {"rps": -1})["rps"]:
            peak[r["system"]] = r
    if "baseline" in peak:
        b = peak["baseline"]
        lines += ["", f"Peak throughput: baseline {b['rps']:.1f} requests/s ({b['concurrency']} clients, p99 "
                      f"{b['p99_ms']:.1f} ms); " + "; ".join(
                          f"{k} {r['rps']:.1f} ({r['concurrency']} clients, p99 {r['p99_ms']:.1f} ms) = "
                          f"{r['rps'] / b['rps']:.2f}× the baseline" for k, r in peak.items() if k != "baseline") + "."]
    cdf = args.cdf or (str(Path(args.json).with_name(Path(args.json).stem + "_latency_cdf.png")) if args.json else
                       str(Path(args.markdown).with_name("serve_latency_cdf.png")) if args.markdown else "")
    if cdf:
        plot_latency_cdf(cdf, latencies)
        if args.markdown:
            link = os.path.relpath(Path(cdf).resolve(), Path(args.markdown).resolve().parent)
            lines += ["", f"![latency CDF]({link})", "",
                      "Latency CDF of each row's OK requests (one panel per client count, one line per system)."]
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "meta": meta, "load": [load_before, load_after]},
                                              indent=1))
    if args.markdown:
        write_markdown(args.markdown, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
