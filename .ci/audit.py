"""Vulnerability audit of the resolved environment (``make audit``, called from ``.ci/run``).

    .venv-audit/bin/python .ci/audit.py --venv .venv --ignore .ci/audit-ignore.txt

Runs pip-audit (from its own tool venv, never a project dependency) over the packages installed
in ``--venv``. Exit 1 when a finding is not in the ignore file; exit 0 with the line
``audit skipped: service unreachable`` when the vulnerability service does not answer (no DNS,
refused, or PyPI's JSON API answers for none of the installed versions, as behind a mirror that
only serves the simple index): CI stays green offline, and says so.
"""

from __future__ import annotations

import argparse
import glob
import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

# pip-audit's skip reason when PyPI has no JSON for a name/version (404): what every package
# gets when the version endpoints are unreachable.
NOT_FOUND = "not found on PyPI"
OWN_PACKAGES = {"vitrine"}  # the editable checkout itself is not on PyPI


def read_ignores(path: Path) -> dict[str, str]:
    """``ID  reason`` per line; ``#`` starts a comment. An entry without a reason is refused:
    an accepted finding must say why it is accepted."""
    ignores = {}
    if not path.exists():
        return ignores
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        vuln_id, _, reason = line.partition(" ")
        if not reason.strip():
            raise SystemExit(f"{path}:{n}: {vuln_id} has no reason; write 'ID  why it is accepted'")
        ignores[vuln_id] = reason.strip()
    return ignores


def verdict(report: dict, ignores: dict[str, str]) -> tuple[int, list[str]]:
    """(exit status, lines to print) for a pip-audit JSON report."""
    deps = [d for d in report.get("dependencies", []) if d.get("name", "").lower() not in OWN_PACKAGES]
    audited = [d for d in deps if "skip_reason" not in d]
    skipped = [d for d in deps if "skip_reason" in d]
    if deps and not audited and all(NOT_FOUND in d["skip_reason"] for d in skipped):
        return 0, [f"audit skipped: service unreachable (PyPI's JSON API knew none of the {len(deps)} "
                   "installed versions; the index answers, its vulnerability data does not)"]
    findings, accepted = [], []
    for d in audited:
        for v in d.get("vulns", []):
            ids = [v["id"], *v.get("aliases", [])]
            known = next((i for i in ids if i in ignores), None)
            line = f"{d['name']} {d['version']}: {v['id']} (fixed in {', '.join(v.get('fix_versions') or ['-'])})"
            (accepted if known else findings).append(line + (f" accepted: {ignores[known]}" if known else ""))
    lines = [f"audited {len(audited)} packages, {len(skipped)} skipped, {len(findings)} findings, "
             f"{len(accepted)} accepted"]
    lines += [f"  skipped {d['name']}: {d['skip_reason']}" for d in skipped]
    lines += [f"  accepted {a}" for a in accepted]
    lines += [f"  FINDING {f}" for f in findings]
    return (1 if findings else 0), lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--venv", default=".venv")
    p.add_argument("--ignore", type=Path, default=Path(".ci/audit-ignore.txt"))
    p.add_argument("--timeout", type=int, default=15, help="per request, seconds")
    args = p.parse_args(argv)
    ignores = read_ignores(args.ignore)
    site = glob.glob(f"{args.venv}/lib/python3*/site-packages")
    if not site:
        print(f"audit: no site-packages under {args.venv} (run `make setup`)", file=sys.stderr)
        return 2
    pip_audit = Path(sys.executable).with_name("pip-audit")
    cmd = [str(pip_audit), "--path", site[0], "-f", "json", "--progress-spinner", "off",
           "--timeout", str(args.timeout)]
    print(f"audit {datetime.now(timezone.utc):%Y-%m-%d %H:%M}Z: {' '.join(cmd[1:3])}", flush=True)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=110)
    except subprocess.TimeoutExpired:
        print("audit skipped: service unreachable (pip-audit ran past 110 s)")
        return 0
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        # No report: pip-audit died on the network (DNS, refused, TLS) before it could write one.
        err = proc.stderr.strip().splitlines()
        network = any(w in proc.stderr for w in ("ConnectionError", "NameResolution", "Max retries",
                                                   "getaddrinfo", "Timeout", "SSLError"))
        if network:
            print(f"audit skipped: service unreachable ({err[-1] if err else 'no answer'})")
            return 0
        print(proc.stderr, file=sys.stderr)
        return proc.returncode or 2
    status, lines = verdict(report, ignores)
    print("\n".join(lines))
    return status


if __name__ == "__main__":
    sys.exit(main())
