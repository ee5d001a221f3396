"""Which model and index to serve, decided from what is published, and checked before use.

Every request carries the version it was started with, so a replica answering it uses the model
and index of that version even while a newer one is being rolled out: no request ever sees a
model from one version and an index from another.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from artifacts import index_shards, model_artifact, publish, storage
from artifacts.index_manifest import MANIFEST as INDEX_MANIFEST
from artifacts.index_manifest import IndexLoadError, IndexManifest, indexes_root
from artifacts.model_card import CARD_FILE, ModelCard

FOLLOW_INDEX = "index"
FOLLOW_LATEST = "latest"


class VersionRejected(RuntimeError):
    """A published artifact that must not be served (wrong model, wrong dimension, unreadable)."""


class NothingPublished(RuntimeError):
    """No model (or no index) has been published under the storage root yet."""


def is_permanent(exc: BaseException) -> bool:
    """Whether a failure to warm a version says the version itself is bad (refuse it for good):
    our own checks (:class:`VersionRejected`, an index failing its manifest). Anything else, a
    storage error, a timeout, a lost replica, may pass and is worth another try."""
    cause = getattr(exc, "cause", None)  # a RayTaskError carries the replica's exception
    return any(isinstance(e, (VersionRejected, IndexLoadError)) for e in (exc, cause) if e is not None)


@dataclass(frozen=True)
class ServingVersion:
    model_id: str
    model_uri: str
    embedding_dim: int
    class_names: tuple[str, ...]
    preprocessing: dict
    index_id: str | None = None  # None: a model but no index yet (classify works, search does not)
    index_uri: str | None = None
    index_items: int = 0
    categories: tuple[str, ...] = ()  # the index's categories (what ``category=`` may name)
    published_at: float = 0.0  # of the index, from its LATEST pointer (0 when pinned)
    # A sharded index (artifacts/index_shards.py): each shard's categories, which tell the ingress
    # which search slots a query must ask. () = a plain index, one shard holding everything.
    shard_categories: tuple[tuple[str, ...], ...] = ()

    @property
    def shards(self) -> int:
        return max(1, len(self.shard_categories))

    def shards_for(self, category: str | None) -> list[int]:
        """The shards holding items of ``category`` (``None``: all)."""
        if category is None or not self.shard_categories:
            return list(range(self.shards))
        return [s for s, names in enumerate(self.shard_categories) if category in names]

    @property
    def key(self) -> tuple[str, str | None]:
        return self.model_id, self.index_id


def _read_json(uri: str, what: str) -> dict:
    try:
        return json.loads(storage.read_text(uri))
    except (OSError, storage.StorageError, ValueError) as exc:
        raise VersionRejected(f"cannot read {what} at {uri}: {exc}") from None


def _card(models_uri: str, model_id: str) -> tuple[str, ModelCard]:
    uri = publish.artifact_uri(models_uri, model_id)
    try:
        return uri, ModelCard.from_json(json.dumps(_read_json(storage.join(uri, CARD_FILE), "model card")))
    except ValueError as exc:
        raise VersionRejected(f"model {model_id}: {exc}") from None


def _latest(kind_uri: str) -> str | None:
    try:
        return publish.latest_id(kind_uri)
    except publish.NotPublishedError:
        return None


def _published_at(kind_uri: str) -> float:
    try:
        return float(json.loads(storage.read_text(storage.join(kind_uri, publish.LATEST))).get("published_at", 0.0))
    except (OSError, storage.StorageError, ValueError):
        return 0.0


def resolve(root: str, *, model: str = FOLLOW_INDEX, index: str = FOLLOW_LATEST) -> ServingVersion:
    """The version the selectors point at now.

    Raises :class:`NothingPublished` when there is nothing to serve yet and
    :class:`VersionRejected` when what is published must not be served (the caller keeps the
    version it has).
    """
    models_uri = model_artifact.models_root(root)
    indexes_uri = indexes_root(root)
    index_id = _latest(indexes_uri) if index == FOLLOW_LATEST else publish.check_id(index)
    manifest, layout = None, None
    if index_id is not None:
        index_uri = publish.artifact_uri(indexes_uri, index_id)
        document = _read_json(storage.join(index_uri, INDEX_MANIFEST), "index manifest")
        try:
            manifest = IndexManifest.from_json(json.dumps(document))
            layout = index_shards.read_layout(document)
        except (IndexLoadError, KeyError, TypeError, ValueError) as exc:
            raise VersionRejected(f"index {index_id}: {exc}") from None
    if model == FOLLOW_INDEX:
        model_id = manifest.model_id if manifest is not None else _latest(models_uri)
        if not model_id:
            raise NothingPublished(f"nothing to serve under {root}: no index and no model published")
    else:
        model_id = publish.check_id(model)
        if manifest is not None and manifest.model_id != model_id:
            raise VersionRejected(f"index {index_id} was built with model {manifest.model_id!r}, but this app is "
                                  f"pinned to model {model_id!r}")
    model_uri, card = _card(models_uri, model_id)
    if manifest is not None and int(manifest.embedding_dim) != int(card.embedding_dim):
        raise VersionRejected(f"index {index_id} holds {manifest.embedding_dim}-dimensional vectors but model "
                              f"{model_id} produces {card.embedding_dim}")
    return ServingVersion(model_id=model_id, model_uri=model_uri, embedding_dim=int(card.embedding_dim),
                          class_names=tuple(card.class_names), preprocessing=dict(card.preprocessing),
                          index_id=index_id, index_uri=index_uri if index_id else None,
                          index_items=int(manifest.counts.get("items", 0)) if manifest else 0,
                          categories=tuple(sorted(manifest.counts.get("categories", {}))) if manifest else (),
                          published_at=_published_at(indexes_uri) if index == FOLLOW_LATEST and manifest else 0.0,
                          shard_categories=tuple(tuple(layout[0].categories_of(s)) for s in range(layout[0].shards))
                          if layout else ())
