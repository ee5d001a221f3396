"""The jobs on a Ray cluster: list them, show one's status, print or follow its logs, stop it.

    vitrine jobs list [--json] [--address http://HEAD:8265]
    vitrine jobs status vitrine-tune-20261128-020000-1a2b3c [--json]
    vitrine jobs logs vitrine-tune-20261128-020000-1a2b3c [--follow]
    vitrine jobs stop vitrine-tune-20261128-020000-1a2b3c

IDs are submission ids (``vitrine submit`` prints them). The address is ``--address``, else
``$RAY_ADDRESS``, else ``http://127.0.0.1:8265``. ``status`` exits 1 when the job FAILED or was
STOPPED, 0 otherwise; ``logs --follow`` exits like ``vitrine submit``. ``list`` and ``status``
(table and ``--json``) print every job through ``artifacts.secrets.redact``: a job submitted by
other means can still hold a secret in its runtime_env, metadata or entrypoint, and it shows as
``***``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from artifacts.secrets import redact

from .submit import TERMINAL, connect, follow
from jobs import flags


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vitrine jobs", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="action", required=True)
    for name, help_ in (("list", "every job the cluster knows, oldest first"), ("status", "one job's status"),
                        ("logs", "one job's logs"), ("stop", "ask one job to stop")):
        s = sub.add_parser(name, help=help_)
        s.add_argument("--address", help="Ray dashboard URL or GCS address (default $RAY_ADDRESS)")
        if name != "list":
            s.add_argument("id", help="submission id")
        if name in ("list", "status"):
            flags.add_json(s)
        if name == "logs":
            s.add_argument("--follow", action="store_true", help="stream until the job ends")
        if name == "stop":
            s.add_argument("--no-wait", action="store_true", help="return without waiting for STOPPED")
    return p


def job_rows(client) -> list[dict]:
    """Every job as a plain dict, secrets redacted (``submission_id`` is None for drivers started
    outside the Jobs API)."""
    jobs = [redact(j.model_dump(mode="json")) for j in client.list_jobs()]
    return sorted(jobs, key=lambda j: j.get("start_time") or 0)


def job_info(client, submission_id: str) -> dict:
    """One job as a plain dict, secrets redacted."""
    return redact(client.get_job_info(submission_id).model_dump(mode="json"))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    client = connect(args.address or "")
    if args.action == "list":
        rows = job_rows(client)
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        print(f"{'id':<44} {'status':<10} {'started (UTC)':<20} {'took':>7}  entrypoint")
        for j in rows:
            print(f"{j.get('submission_id') or j.get('job_id') or '?':<44} {j['status']:<10} "
                  f"{_time(j.get('start_time')):<20} {_took(j):>7}  {j['entrypoint'][:80]}")
        return 0
    if args.action == "status":
        info = job_info(client, args.id)
        if args.json:
            print(json.dumps(info, indent=2))
        else:
            note = (info.get("message") or "").strip().splitlines()[:1]
            print(f"{args.id}: {info['status']}" + (f" ({note[0].rstrip(':')})" if note else ""))
        return 1 if info["status"] in ("FAILED", "STOPPED") else 0
    if args.action == "logs":
        if args.follow:
            return 0 if follow(client, args.id, sys.stdout) == "SUCCEEDED" else 1
        sys.stdout.write(redact(client.get_job_logs(args.id)))  # a job may print its own environment
        return 0
    stopped = client.stop_job(args.id)
    if not stopped:
        print(f"{args.id}: already finished ({client.get_job_status(args.id)})")
        return 0
    while not args.no_wait and str(client.get_job_status(args.id)) not in TERMINAL:
        time.sleep(0.5)
    print(f"{args.id}: {client.get_job_status(args.id)}")
    return 0


def _time(ms) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms / 1000)) if ms else "-"


def _took(job: dict) -> str:
    start, end = job.get("start_time"), job.get("end_time")
    if not start:
        return "-"
    seconds = ((end or time.time() * 1000) - start) / 1000
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


if __name__ == "__main__":
    sys.exit(main())
