"""The index directory's contract: its file names, its manifest (written last, so its presence
marks a complete index) and the errors that building, loading or searching an index raises.
:mod:`artifacts.hnsw_index` is the index itself, :mod:`artifacts.index_files` writes and reads it."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

INDEXES_DIR = "indexes"  # under the storage root: one directory per index, and LATEST
MANIFEST = "index_manifest.json"
INDEX_FILE = "index.bin"
ITEMS_FILE = "items.parquet"
VECTORS_FILE = "vectors.npy"
CATEGORY_DIR = "categories"
FORMAT_VERSION = 2  # 2: tombstones (items.deleted, counts.positions/deleted), content hashes
SPACE = "ip"


class IndexBuildError(ValueError):
    """An index cannot be built from the given items; the message says why."""


class IndexLoadError(ValueError):
    """A stored index is missing, incomplete or inconsistent; the message names it."""


class UnknownCategoryError(KeyError):
    """A search asked for a category the index does not hold."""

    def __str__(self) -> str:  # KeyError quotes its message; a sentence reads better
        return str(self.args[0]) if self.args else ""


@dataclass
class IndexManifest:
    """What an index directory holds and where it came from; written last."""

    index_id: str
    model_id: str
    source_embeddings: str
    embeddings_run_id: str
    embedding_dim: int
    counts: dict  # {"items": live N, "positions": rows, "deleted": tombstones, "categories": {name: n}, "uncategorised": n}
    params: dict  # M, ef_construction, ef, exact_below, seed, space, filter_strategy
    recall_at_10: float | None
    recall: dict = field(default_factory=dict)  # how recall was measured, and filtered recall
    build_seconds: float = 0.0
    created_at: str = ""
    files: dict = field(default_factory=dict)  # index, items, vectors, categories: {name: file}
    config: dict = field(default_factory=dict)  # the resolved build config
    # Where the items' images may be read (artifacts.image_roots.catalogue_roots of the embedded
    # catalogue); the item-image route opens nothing outside them. Empty (older indexes): nothing.
    catalogue_roots: list = field(default_factory=list)
    # How it was made: {"mode": "full"|"incremental", "reason", "previous_index", "added", "deleted", ...}.
    update: dict = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "IndexManifest":
        data = json.loads(text)
        if data.get("format_version", 0) > FORMAT_VERSION:
            raise IndexLoadError(f"index format {data['format_version']} is newer than this code understands "
                                 f"({FORMAT_VERSION})")
        missing = [k for k in ("index_id", "embedding_dim", "counts", "params", "files") if k not in data]
        if missing:
            raise IndexLoadError(f"index manifest lacks {', '.join(missing)}")
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def indexes_root(storage_root: str) -> str:
    """Where a storage root keeps its indexes (and the ``LATEST`` pointer search follows)."""
    from . import storage

    return storage.join(storage_root, INDEXES_DIR)
