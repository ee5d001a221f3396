"""benchmarks/stepped_load.py's parts that need no cluster: the stepped closed loop of
benchmarks/loadgen.py against a small local HTTP server, and what benchmarks/stepped_report.py
makes of samples and polled replica counts (when a replica was added and removed, per step)."""

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from benchmarks import loadgen, stepped_report
from benchmarks.loadgen import Sample


class _Answer(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the generator expects

    def do_POST(self):  # noqa: N802 - the http.server name
        self.rfile.read(int(self.headers["Content-Length"]))
        body = b'{"results": [{"item_id": "a"}]}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1/search"
    server.shutdown()
    server.server_close()


def test_run_steps_runs_each_step_in_turn_with_its_clients(server_url):
    requests = loadgen.build_requests(server_url, [b"png-1", b"png-2"])
    samples, starts = loadgen.run_steps(server_url, requests, [(1, 0.4), (3, 0.4)],
                                        check=lambda body: b'"item_id"' in body)
    assert len(starts) == 2 and starts[0] < starts[1]
    assert samples and all(s.status == 200 for s in samples)
    first = [s for s in samples if s.start < starts[1]]
    second = [s for s in samples if s.start >= starts[1]]
    assert first and second
    # One client in the first step: its requests never overlap; three in the second do.
    assert all(a.end <= b.start for a, b in zip(first, first[1:]))
    assert any(b.start < a.end for a, b in zip(second, second[1:]))


def _history(changes: dict[str, list[tuple[float, int, int]]], until: float) -> list[tuple[float, dict]]:
    """A poll every half second: each deployment's (running, target) from its last change."""
    out, t = [], 0.0
    while t <= until:
        state = {}
        for name, points in changes.items():
            _, running, target = [p for p in points if p[0] <= t][-1]
            state[name] = {"running": running, "replicas": running, "target": target}
        out.append((t, state))
        t += 0.5
    return out


def test_analyse_times_the_added_and_removed_replica_from_the_steps():
    steps, starts, end = [(2, 10.0), (32, 20.0), (2, 30.0)], [0.0, 10.0, 30.0], 60.0
    samples = [Sample(t / 10, t / 10 + 0.05, 200) for t in range(600)] + [Sample(15.0, 15.2, 503)]
    history = _history({"Classifier": [(0, 1, 1), (13.0, 1, 2), (22.0, 2, 2), (41.0, 2, 1), (42.0, 1, 1)],
                        "Search": [(0, 1, 1)]}, end)
    result = stepped_report.analyse(samples, starts, end, steps, history, bucket_s=5.0)
    assert result["high_step"] == 2 and result["high_s"] == 10.0 and result["fall_s"] == 30.0
    c = result["scaling"]["Classifier"]
    assert (c["base"], c["max"]) == (1, 2)
    assert (c["decided_after_s"], c["running_after_s"]) == (3.0, 12.0)
    assert (c["target_down_after_s"], c["back_after_s"]) == (11.0, 12.0)
    s = result["scaling"]["Search"]
    assert s["max"] == 1 and s["running_after_s"] is None and s["back_after_s"] is None
    assert result["failed"] == 1 and [r["failed"] for r in result["steps"]] == [0, 1, 0]
    assert [r["requests"] for r in result["steps"]] == [100, 201, 300]
    assert len(result["buckets"]) == 12 and sum(b["failed"] for b in result["buckets"]) == 1


def test_a_replica_removed_under_the_high_load_is_back_before_the_load_fell():
    steps, starts, end = [(2, 10.0), (32, 20.0), (2, 10.0)], [0.0, 10.0, 30.0], 40.0
    history = _history({"Search": [(0, 1, 1), (12.0, 1, 2), (14.0, 2, 2), (25.0, 2, 1), (25.5, 1, 1)]}, end)
    result = stepped_report.analyse([Sample(1.0, 1.1, 200)], starts, end, steps, history, bucket_s=5.0)
    search = result["scaling"]["Search"]
    assert (search["running_after_s"], search["target_down_after_s"], search["back_after_s"]) == (4.0, -5.0, -4.5)


def test_a_replica_still_up_when_the_run_ends_is_never_back():
    steps, starts, end = [(2, 10.0), (32, 10.0), (2, 10.0)], [0.0, 10.0, 20.0], 30.0
    history = _history({"Ingress": [(0, 1, 1), (12.0, 1, 2), (16.0, 2, 2)]}, end)
    result = stepped_report.analyse([Sample(1.0, 1.1, 200)], starts, end, steps, history, bucket_s=5.0)
    ingress = result["scaling"]["Ingress"]
    assert ingress["running_after_s"] == 6.0 and ingress["back_after_s"] is None
    lines = stepped_report.report_lines({**result, "started": "now", "cpus": 2, "nodes": 3, "cpus_per_node": 2,
                                         "proxy": "haproxy", "load_before": "1.0 1.0 1.0", "load_after": "2.0 1.0 1.0",
                                         "queries": 1, "deployed_s": 1.0, "deployments": {}},
                                        plot_path=None, markdown=None, command="benchmarks/stepped_load.py")
    assert any(line.startswith("| Ingress | 1 | 2 | 2.0 s | 6.0 s | never | never |") for line in lines)
