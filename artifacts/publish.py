"""Atomic publication of artifacts with ``LATEST`` pointers that only move forward.

An artifact kind (``models``, ``embeddings/<model_id>``, ``indexes``) lives under
``<root>/<kind>/<artifact_id>/``. A writer fills that directory completely, writes the
artifact's manifest file last, and only then moves ``<root>/<kind>/LATEST`` to the new id.
Readers go through ``LATEST`` (or name an id explicitly), so a crashed writer leaves at most an
unreferenced directory, never a half-visible artifact.

Ordering. Every artifact has a creation time, recorded in the ``LATEST`` pointer as
``created_at`` (seconds since the epoch). It is, first match wins: the ``created_at`` the writer
passes to :func:`publish`; the timestamp :func:`new_id` put into the id; the modification time of
the artifact's manifest (for ids chosen by hand, e.g. ``--run-id nightly-1``). The id's timestamp
is preferred over file times because it survives copies between buckets and clock-skewed
writers stamp it once, at creation. :func:`publish` refuses (:class:`StaleArtifactError`) to
point ``LATEST`` at an artifact created before the one it names, so a slow run that started
first cannot roll back a newer one; equal times are allowed (ids have one-second resolution).
``force=True`` skips that check for a deliberate rollback.

History. Each pointer carries the ones before it (``previous``: id, created_at, published_at,
newest first, the last :data:`HISTORY_LENGTH`), and :func:`rollback` moves ``LATEST`` back to
the first of them. The history lives inside the pointer rather than in a separate
``HISTORY.jsonl`` because then it is written in the same atomic write, under the same lock and
generation check, as the pointer it describes: the two can never disagree, S3 needs no append
(which it lacks), and listings of a kind still show artifacts only. Deriving "the previous
model" from the listed directories ordered by creation time would be wrong: exported models
that failed the gate or came from smoke runs were never published. Pointers written before the
history was kept have none; rollback then refuses and says to publish an id with ``force``.

Concurrency. The check and the write are a read-compare-write with a generation check: the
pointer is read, compared, re-read just before writing and the write is abandoned if it changed.
Locally the whole sequence also holds an exclusive ``flock`` (a lock file in the temp directory
keyed by the kind's real path, so one host's publishers are serialised), and the
pointer is written through a temporary file and a rename (:func:`storage.write_bytes_if`). On S3
there is no lock; instead the pointer is read together with its ETag (one boto3 GET) and written
with a conditional PUT (``If-Match: <etag>``, or ``If-None-Match: *`` for the first pointer), so
of two publishers racing from the same pointer exactly one wins and the other gets
:class:`StaleArtifactError`. Verified against the moto S3 server the tests use (moto 5.2.5,
botocore 1.44): it answers a stale ``If-Match`` and an ``If-None-Match: *`` on an existing key
with 412 PreconditionFailed, and of eight writers racing from one ETag exactly one lands
(``tests/artifacts/test_publish.py``). AWS S3 has honoured both
since 2024; a store that answers 501 NotImplemented gets a plain PUT (the old, narrow race: two
publishers within milliseconds, the later PUT wins, never a half-written pointer). A store that
silently ignores the headers cannot be told apart from here.
"""

from __future__ import annotations

import calendar
import contextlib
import json
import os
import re
import time

from . import storage

LATEST = "LATEST"
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# The timestamp new_id writes into every id: the writer's own record of when it made the artifact.
_ID_TIME = re.compile(r"-(\d{8}T\d{6})-[0-9a-f]{4}$")
# Earlier pointers kept inside LATEST itself, for rollback; bounded so the pointer stays small.
HISTORY_LENGTH = 50
_ANY = object()  # publish(expect_latest=...) not given


class NotPublishedError(storage.StorageError):
    """Nothing has been published yet under a kind's directory."""


class StaleArtifactError(RuntimeError):
    """``publish`` refused to move ``LATEST`` to an artifact older than the one it names."""


def check_id(artifact_id: str) -> str:
    """Artifact ids become path components: refuse anything that could escape the directory."""
    if not _ID.match(artifact_id or "") or ".." in artifact_id:
        raise ValueError(f"invalid artifact id {artifact_id!r}: letters, digits, '.', '_', '-' only")
    return artifact_id


def new_id(prefix: str) -> str:
    """A sortable, unique id such as ``vitrine_cnn-20261128T124501-3f9a``."""
    import uuid

    return check_id(f"{prefix}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:4]}")


def id_timestamp(artifact_id: str) -> float | None:
    """Seconds since the epoch that :func:`new_id` encoded in an id; None for other ids."""
    m = _ID_TIME.search(artifact_id or "")
    if not m:
        return None
    return float(calendar.timegm(time.strptime(m.group(1), "%Y%m%dT%H%M%S")))


def artifact_uri(kind_uri: str, artifact_id: str) -> str:
    return storage.join(kind_uri, check_id(artifact_id))


def _created_at(kind_uri: str, artifact_id: str, manifest_name: str) -> float:
    ts = id_timestamp(artifact_id)
    if ts is not None:
        return ts
    fs, path = storage.resolve(storage.join(artifact_uri(kind_uri, artifact_id), manifest_name))
    info = fs.get_file_info(path)
    if info.mtime is None:
        raise storage.StorageError(f"cannot order {artifact_id!r}: no timestamp in its id and no mtime on "
                                   f"its {manifest_name}; pass created_at")
    return info.mtime.timestamp()


def _read_pointer(kind_uri: str) -> dict | None:
    return _read_pointer_tagged(kind_uri)[0]


def _read_pointer_tagged(kind_uri: str) -> tuple[dict | None, str | None]:
    """The pointer and the tag a conditional write of it must match (S3's ETag; None locally)."""
    data, tag = storage.read_tagged(storage.join(kind_uri, LATEST))
    return (json.loads(data) if data is not None else None), tag


@contextlib.contextmanager
def _local_lock(kind_uri: str):
    if storage.is_remote(kind_uri):
        yield
        return
    import fcntl
    import hashlib
    import tempfile

    # In the temp directory, not the kind's: listings of models/ or indexes/ must show artifacts only.
    _, path = storage.resolve(kind_uri)
    key = hashlib.sha256(os.path.realpath(path).encode()).hexdigest()[:16]
    with open(os.path.join(tempfile.gettempdir(), f"vitrine-publish-{key}.lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def publish(kind_uri: str, artifact_id: str, *, manifest_name: str, created_at: float | None = None,
            force: bool = False, expect_latest: str | None | object = _ANY) -> str:
    """Point ``LATEST`` at ``artifact_id`` after checking its manifest is in place; returns its URI.

    Raises :class:`StaleArtifactError` when ``LATEST`` names an artifact created after this one
    (see the module docstring for how creation times are found), unless ``force`` is set; and,
    when ``expect_latest`` is given (an id, or None for "nothing published"), when ``LATEST``
    no longer names it: a caller that judged the artifact against the current one (the model
    gate) must not publish over a different one that arrived meanwhile. ``force`` does not lift
    that check.
    """
    uri = artifact_uri(kind_uri, artifact_id)
    if not storage.exists(storage.join(uri, manifest_name)):
        raise storage.StorageError(f"refusing to publish {uri}: its {manifest_name} is missing (incomplete write?)")
    created = float(created_at) if created_at is not None else _created_at(kind_uri, artifact_id, manifest_name)
    return _move(kind_uri, artifact_id, manifest_name=manifest_name, created=created, force=force,
                 expect_latest=expect_latest)


def _move(kind_uri: str, artifact_id: str, *, manifest_name: str, created: float, force: bool,
          expect_latest: str | None | object = _ANY, rollback: bool = False) -> str:
    uri = artifact_uri(kind_uri, artifact_id)
    with _local_lock(kind_uri):
        current, tag = _read_pointer_tagged(kind_uri)
        cur_name = current.get("id") if current else None
        if expect_latest is not _ANY and cur_name != expect_latest:
            raise StaleArtifactError(f"not publishing {artifact_id} under {kind_uri}: {LATEST} names {cur_name}, "
                                     f"not {expect_latest} as when it was checked; re-run to check against it")
        if current is not None and not force and current.get("id") != artifact_id:
            cur_id = check_id(current["id"])
            cur_created = current.get("created_at")
            if cur_created is None:  # a pointer written before created_at was recorded
                try:
                    cur_created = _created_at(kind_uri, cur_id, manifest_name)
                except storage.StorageError:
                    cur_created = None
            if cur_created is not None and created < float(cur_created):
                raise StaleArtifactError(
                    f"not publishing {artifact_id} under {kind_uri}: {LATEST} names {cur_id}, created "
                    f"{_iso(float(cur_created))}, after {artifact_id} ({_iso(created)}); "
                    f"use force=True (vitrine models rollback) to move it back deliberately")
        # Generation check: someone else moved the pointer while we compared; let them win.
        if _read_pointer(kind_uri) != current:
            raise StaleArtifactError(f"not publishing {artifact_id} under {kind_uri}: {LATEST} changed while "
                                     f"publishing; re-run to compare against the new one")
        history = _history(current)
        if rollback:
            history = history[1:]
        elif current is not None and cur_name != artifact_id:
            history = [{k: current[k] for k in ("id", "created_at", "published_at") if k in current}, *history]
        pointer = json.dumps({"id": artifact_id, "published_at": time.time(), "created_at": created,
                              **({"forced": True} if force else {}),
                              **({"rolled_back_from": cur_name} if rollback else {}),
                              "previous": history[:HISTORY_LENGTH]}) + "\n"
        try:
            # On S3 a compare-and-swap against the pointer read above: closes the race between
            # the generation check and the PUT. Locally the lock already excludes it.
            storage.write_bytes_if(storage.join(kind_uri, LATEST), pointer.encode("utf-8"), tag=tag)
        except storage.PreconditionFailed as exc:
            raise StaleArtifactError(f"not publishing {artifact_id} under {kind_uri}: {LATEST} changed while "
                                     f"publishing ({exc}); re-run to compare against the new one") from exc
    return uri


def _history(pointer: dict | None) -> list[dict]:
    return [p for p in (pointer or {}).get("previous") or [] if isinstance(p, dict) and p.get("id")]


def history(kind_uri: str) -> list[dict]:
    """What ``LATEST`` named before, newest first: ``[{"id", "created_at", "published_at"}, ...]``."""
    return _history(_read_pointer(kind_uri))


def rollback(kind_uri: str, *, manifest_name: str) -> tuple[str, str]:
    """Point ``LATEST`` back at the artifact it named before the current one; ``(from_id, to_id)``.

    The target comes from the history kept in the pointer (see the module docstring) and is
    dropped from it, so a second rollback goes one further back. A forced move (it skips the
    forward-only check by design) that still holds the lock and the generation check.
    """
    current = _read_pointer(kind_uri)
    if current is None:
        raise NotPublishedError(f"nothing published under {kind_uri} (no {LATEST} pointer): nothing to roll back")
    previous = _history(current)
    if not previous:
        raise NotPublishedError(f"{LATEST} under {kind_uri} ({current.get('id')}) records no earlier artifact to "
                                f"roll back to (pointers written before history was kept have none); publish one "
                                f"by id with force=True instead")
    target = check_id(previous[0]["id"])
    if not storage.exists(storage.join(artifact_uri(kind_uri, target), manifest_name)):
        raise storage.StorageError(f"cannot roll back to {target}: its {manifest_name} is gone")
    created = previous[0].get("created_at")
    created = float(created) if created is not None else _created_at(kind_uri, target, manifest_name)
    _move(kind_uri, target, manifest_name=manifest_name, created=created, force=True,
          expect_latest=current.get("id"), rollback=True)
    return current["id"], target


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def latest_id(kind_uri: str) -> str:
    pointer = storage.join(kind_uri, LATEST)
    if not storage.exists(pointer):
        raise NotPublishedError(f"nothing published under {kind_uri} (no {LATEST} pointer)")
    return check_id(json.loads(storage.read_text(pointer))["id"])


def resolve(uri: str, *, manifest_name: str) -> str:
    """Accept either an artifact directory or a kind directory with a ``LATEST`` pointer."""
    if storage.exists(storage.join(uri, manifest_name)):
        return uri
    if storage.exists(storage.join(uri, LATEST)):
        return artifact_uri(uri, latest_id(uri))
    raise NotPublishedError(f"{uri} holds neither a {manifest_name} nor a {LATEST} pointer")
