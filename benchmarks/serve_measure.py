"""The measurement of one system in ``benchmarks/serve_load.py``: the query images, waiting for
the first answer, the answers kept for comparison with the baseline's, and a closed-loop window
per concurrency with the CPU each side used (measured again when other load disturbed it)."""

from __future__ import annotations

import json
import os
import random
import time
from urllib.parse import urlsplit

from cpu_usage import machine_cpu, tree_cpu_s, wait_quiet
from loadgen import build_requests, run_load


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


def measure(server, bodies: list[bytes], concurrencies: list[int], args, label: str) -> list[dict]:
    """One row per concurrency for ``server`` (a ``serve_systems.Server``); keeps its first
    ``--check-queries`` answers on ``server.answers``."""
    url = f"{server.url.rstrip('/')}/v1/search?k={args.k}"
    requests = build_requests(url, bodies)
    wait_serving(url, requests[0])
    server.answers = sample_answers(url, requests[:args.check_queries])
    rows = []
    for c in concurrencies:
        for attempt in range(args.retries + 1):
            wait_quiet(server.proc.pid, args.other_max, args.quiet_wait)
            probe = {}

            def on_window(name, probe=probe):
                probe[name] = (time.perf_counter(), tree_cpu_s(server.proc.pid), sum(os.times()[:2]), machine_cpu())

            r = run_load(url, requests, c, duration_s=args.duration, warmup_s=args.warmup, check=is_search_answer,
                         on_window=on_window)
            row = window_row(label, c, r, probe, attempt)
            print_row(row)
            if row["other_cores"] <= args.other_max:
                break
            if attempt < args.retries:
                print(f"    other processes used {row['other_cores']:.2f} cores during the window: measuring again",
                      flush=True)
        rows.append(row)
    return rows


def window_row(label: str, c: int, r, probe: dict, attempt: int) -> dict:
    """A window's row from the load result ``r`` and the CPU ``probe`` taken at its start and end."""
    (t0, s0, c0, m0), (t1, s1, c1, m1) = probe["start"], probe["end"]
    wall = t1 - t0
    ncpu = os.cpu_count() or 1
    row = {"system": label, "concurrency": c, "seconds": round(r.duration_s, 2), "ok": r.ok,
           "errors": r.errors, "statuses": {str(k): v for k, v in r.statuses.items()},
           "rps": r.rps, "p50_ms": r.percentile(50), "p95_ms": r.percentile(95), "p99_ms": r.percentile(99),
           "server_cpu_ms_per_req": (s1 - s0) * 1000 / r.ok if r.ok else float("nan"),
           "server_cpu_cores": (s1 - s0) / wall, "client_cpu_cores": (c1 - c0) / wall,
           "machine_busy_cores": (m1[0] - m0[0]) / max(1, m1[1] - m0[1]) * ncpu, "attempt": attempt + 1}
    row["other_cores"] = max(0.0, row["machine_busy_cores"] - row["server_cpu_cores"] - row["client_cpu_cores"])
    row["latencies_ms"] = r.latencies_ms  # for the CDF; main() takes them out before the JSON
    return row


def print_row(row: dict) -> None:
    print(f"  {row['system']:>24} c={row['concurrency']:<3} {row['rps']:8.1f} req/s  p50 {row['p50_ms']:7.1f}  "
          f"p95 {row['p95_ms']:7.1f}  p99 {row['p99_ms']:7.1f} ms  errors {row['errors']}  "
          f"server {row['server_cpu_cores']:.2f} cores ({row['server_cpu_ms_per_req']:.2f} ms/req)  "
          f"client {row['client_cpu_cores']:.2f}  other {row['other_cores']:.2f}", flush=True)
