"""Resident memory of process trees, from /proc (Linux): what the benchmarks report as peak RSS."""

from __future__ import annotations

import threading
import time


def rss_bytes(pid: int) -> int:
    """``pid``'s resident set now (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def tree_rss(*roots: int) -> int:
    """Resident bytes of each root and all its descendants, added up (each process once)."""
    from cluster.processes import process_tree

    pids = {pid for root in roots for pid in process_tree(root)}
    return sum(rss_bytes(pid) for pid in pids)


class TreeMemory:
    """Peak resident memory of process trees (added up), sampled every ``every_s`` seconds."""

    def __init__(self, *roots: int, every_s: float = 0.2):
        self.roots = roots
        self.every_s = every_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss(*self.roots))
            time.sleep(self.every_s)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
