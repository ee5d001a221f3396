"""CPU accounting from /proc (Linux) for the serving benchmark: a process tree's CPU time, the
whole machine's, the load average, and how much the rest of the machine uses (so a window
disturbed by someone else's work is measured again)."""

from __future__ import annotations

import os
import time
from pathlib import Path

CLK = os.sysconf("SC_CLK_TCK")


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
