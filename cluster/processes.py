"""This machine's process tree, read from /proc (Linux): which processes the local cluster must
stop, and whose CPU and memory the benchmarks add up."""

from __future__ import annotations

import os
import time


def parents() -> dict[int, int]:
    """pid → parent pid of every process (zombies included)."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
            # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
            out[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):  # gone meanwhile, or not readable
            continue
    return out


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants, parents first."""
    children: dict[int, list[int]] = {}
    for child, parent in parents().items():
        children.setdefault(parent, []).append(child)
    tree, todo = [], [pid]
    while todo:
        p = todo.pop(0)
        tree.append(p)
        todo.extend(children.get(p, []))
    return tree


def cmdline(pid: int) -> list[str]:
    """The command line of ``pid``; empty when it is gone or not readable."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def pids_naming(text: str) -> list[int]:
    """Every process but this one whose command line holds ``text`` in one of its arguments."""
    me = os.getpid()
    return [pid for pid in parents() if pid != me and any(text in a for a in cmdline(pid))]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_ray_start_of(pid: int, temp_dir: str) -> bool:
    """Still the `ray start` of the cluster whose temp dir is ``temp_dir``, not a reused pid."""
    args = cmdline(pid)
    return "start" in args and any(a.startswith(f"--temp-dir={temp_dir}{os.sep}") for a in args)


def kill_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def wait_gone(pids: list[int], timeout_s: float) -> None:
    """Until every one of ``pids`` has exited (zombies count as gone), at most ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        alive = [p for p in pids if pid_alive(p) and not is_zombie(p)]
        if not alive:
            return
        time.sleep(0.1)


def is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().decode(errors="replace").rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
