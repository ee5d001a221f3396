"""Atomic publication of artifacts with ``LATEST`` pointers.

An artifact kind (``models``, ``embeddings/<model_id>``, ``indexes``) lives under
``<root>/<kind>/<artifact_id>/``. A writer fills that directory completely, writes the
artifact's manifest file last, and only then moves ``<root>/<kind>/LATEST`` to the new id.
Readers go through ``LATEST`` (or name an id explicitly), so a crashed writer leaves at most an
unreferenced directory, never a half-visible artifact.
"""

from __future__ import annotations

import json
import re
import time

from . import storage

LATEST = "LATEST"
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class NotPublishedError(storage.StorageError):
    """Nothing has been published yet under a kind's directory."""


def check_id(artifact_id: str) -> str:
    """Artifact ids become path components: refuse anything that could escape the directory."""
    if not _ID.match(artifact_id or "") or ".." in artifact_id:
        raise ValueError(f"invalid artifact id {artifact_id!r}: letters, digits, '.', '_', '-' only")
    return artifact_id


def new_id(prefix: str) -> str:
    """A sortable, unique id such as ``vitrine_cnn-20261128T124501-3f9a``."""
    import uuid

    return check_id(f"{prefix}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:4]}")


def artifact_uri(kind_uri: str, artifact_id: str) -> str:
    return storage.join(kind_uri, check_id(artifact_id))


def publish(kind_uri: str, artifact_id: str, *, manifest_name: str) -> str:
    """Point ``LATEST`` at ``artifact_id`` after checking its manifest is in place."""
    uri = artifact_uri(kind_uri, artifact_id)
    if not storage.exists(storage.join(uri, manifest_name)):
        raise storage.StorageError(f"refusing to publish {uri}: its {manifest_name} is missing (incomplete write?)")
    storage.write_text(storage.join(kind_uri, LATEST), json.dumps({"id": artifact_id, "published_at": time.time()}) + "\n")
    return uri


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
