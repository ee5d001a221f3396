"""How an embedding run ends: published (its model's ``LATEST`` moved when the run is complete and
newer than the one ``LATEST`` names), or failed with one sentence that names the root cause and
the commonest reasons, which a scheduler's alert can show."""

from __future__ import annotations

import logging
import time

log = logging.getLogger("vitrine.embed")


def publish_if_newer(runs_uri: str, run_id: str, manifest) -> bool:
    """Move LATEST to a complete run unless it covers part of the catalogue only (``--limit``,
    smoke) or is older than the run LATEST names; a re-run finishes a publication a crash
    interrupted. Runs are ordered by when they started (the catalogue snapshot they embed)."""
    import calendar

    from artifacts import embeddings, publish

    limit = int((manifest.config or {}).get("limit") or 0)
    if limit > 0 or (manifest.config or {}).get("smoke_test"):
        log.info("not publishing %s: a partial run (limit %d%s) never moves LATEST", run_id, limit,
                 ", smoke test" if (manifest.config or {}).get("smoke_test") else "")
        return False
    started = None  # manifests without started_at: publish falls back to the id's time or the file's
    if manifest.started_at:
        head, _, frac = manifest.started_at.rstrip("Z").partition(".")
        started = calendar.timegm(time.strptime(head, "%Y-%m-%dT%H:%M:%S")) + float(f"0.{frac or 0}")
    try:
        publish.publish(runs_uri, run_id, manifest_name=embeddings.MANIFEST, created_at=started)
    except publish.StaleArtifactError as exc:
        log.warning("%s", exc)
        return False
    return True

def now_iso() -> str:
    # Milliseconds: publish_if_newer orders runs by started_at.
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"

def latest_run(runs_uri: str) -> str | None:
    from artifacts import publish

    try:
        return publish.latest_id(runs_uri)
    except Exception:  # storage may be the very thing that is down
        return None

def root_cause(exc: BaseException) -> str:
    """The innermost ``SomeError: message`` line: Ray wraps a worker's error in tracebacks."""
    import re

    chain, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        chain.append(exc)
        exc = exc.__cause__ or getattr(exc, "cause", None)
    pattern = re.compile(r"^\s*(?:[\w.]+\.)?(\w*(?:Error|Exception)): (\S.*)$")
    for e in reversed(chain):
        found = [m for m in map(pattern.match, str(e).splitlines()) if m]
        if found:
            return f"{found[-1].group(1)}: {found[-1].group(2)}"[:500]
    return f"{type(chain[-1]).__name__}: {str(chain[-1]).strip()[:400]}"

def top_reasons(errors, k: int = 3) -> str:
    from collections import Counter

    reasons = Counter(r.split(":", 1)[0] for r in errors.column("reason").to_pylist())
    return "; ".join(f"{r} ({n})" for r, n in reasons.most_common(k)) or "none"
