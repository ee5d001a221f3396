"""A cheap closed-loop HTTP load generator for ``benchmarks/serve_load.py``.

N clients, each on its own keep-alive connection, each sending its next request as soon as
the previous answer is in (closed loop). HTTP/1.1 is spoken directly over asyncio streams
(uvloop when installed): no HTTP client library, so on a 2-core machine the generator takes
as little CPU as possible away from the server it measures. The same code drives both systems.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class Sample:
    start: float
    end: float
    status: int  # 0 = connection error or timeout


@dataclass
class LoadResult:
    concurrency: int
    duration_s: float
    ok: int
    errors: int
    statuses: dict
    latencies_ms: list = field(repr=False)  # of the OK requests completed in the window

    @property
    def rps(self) -> float:
        return self.ok / self.duration_s if self.duration_s else 0.0

    def percentile(self, p: float) -> float:
        import numpy as np

        return float(np.percentile(self.latencies_ms, p)) if self.latencies_ms else float("nan")


class HttpError(Exception):
    pass


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/"):
        raise HttpError(f"bad status line {lines[0]!r}")
    status = int(parts[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    close = headers.get("connection", "").lower() == "close" or parts[0] == "HTTP/1.0" and \
        headers.get("connection", "").lower() != "keep-alive"
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)
        body = b"".join(chunks)
    else:
        body = await reader.read()
        close = True
    return status, body, close


def build_requests(url: str, bodies: list[bytes], content_type: str = "image/png") -> list[bytes]:
    """Ready-to-send POST requests, one per body."""
    u = urlsplit(url)
    target = u.path + (f"?{u.query}" if u.query else "")
    host = u.netloc
    return [(f"POST {target} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
             f"Content-Length: {len(b)}\r\nConnection: keep-alive\r\n\r\n").encode("latin-1") + b for b in bodies]


async def _closed_loop(url: str, requests: list[bytes], concurrency: int, seconds: float,
                       timeout_s: float, check=None) -> list[Sample]:
    u = urlsplit(url)
    host, port = u.hostname, u.port or 80
    counter = itertools.count()
    n = len(requests)
    samples: list[Sample] = []
    deadline = time.perf_counter() + seconds

    async def client(i: int):
        reader = writer = None
        while time.perf_counter() < deadline:
            req = requests[next(counter) % n]
            t0 = time.perf_counter()
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(host, port)
                writer.write(req)
                status, body, close = await asyncio.wait_for(_read_response(reader), timeout_s)
                if status == 200 and check is not None and not check(body):
                    status = -200  # a 200 whose body is not a search answer
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError,
                    HttpError, ValueError):
                status, close = 0, True
            samples.append(Sample(t0, time.perf_counter(), status))
            if close and writer is not None:
                writer.close()
                reader = writer = None
        if writer is not None:
            writer.close()

    await asyncio.gather(*(client(i) for i in range(concurrency)))
    return samples


def run_steps(url: str, requests: list[bytes], steps: list[tuple[int, float]], *, timeout_s: float = 60.0,
              check=None) -> tuple[list[Sample], list[float]]:
    """Closed-loop load in steps, one after the other in one event loop: ``steps`` is
    ``[(concurrency, seconds), ...]``. Every sample comes back (``perf_counter`` times), with each
    step's start time. A step's clients finish the request they are in before the next step's
    clients start, so no request is cut off at a step's edge."""
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run

    starts: list[float] = []

    async def main():
        samples: list[Sample] = []
        for concurrency, seconds in steps:
            starts.append(time.perf_counter())
            samples += await _closed_loop(url, requests, concurrency, seconds, timeout_s, check)
        return samples

    return runner(main()), starts


def run_load(url: str, requests: list[bytes], concurrency: int, *, duration_s: float, warmup_s: float,
             timeout_s: float = 60.0, check=None, on_window=None) -> LoadResult:
    """Closed-loop load for ``warmup_s + duration_s``; only requests that complete inside the last
    ``duration_s`` count. ``on_window(start|end)`` is called at the window's edges (CPU probes)."""
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run

    marks = {}

    async def main():
        loop = asyncio.get_running_loop()
        t_start = time.perf_counter()

        def mark(name):
            marks[name] = time.perf_counter()
            if on_window:
                on_window(name)

        loop.call_later(warmup_s, mark, "start")
        loop.call_later(warmup_s + duration_s, mark, "end")
        samples = await _closed_loop(url, requests, concurrency, warmup_s + duration_s, timeout_s, check)
        marks.setdefault("start", t_start + warmup_s)
        marks.setdefault("end", t_start + warmup_s + duration_s)
        return samples

    samples = runner(main())
    lo, hi = marks["start"], marks["end"]
    window = [s for s in samples if lo <= s.end <= hi]
    statuses: dict = {}
    for s in window:
        statuses[s.status] = statuses.get(s.status, 0) + 1
    ok = [s for s in window if s.status == 200]
    return LoadResult(concurrency=concurrency, duration_s=hi - lo, ok=len(ok), errors=len(window) - len(ok),
                      statuses=statuses, latencies_ms=[(s.end - s.start) * 1000 for s in ok])
