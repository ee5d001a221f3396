"""The embeddings contract: what the nightly job writes and the index build and serving read.

A run lives under ``<root>/embeddings/<model_id>/<run_id>/``::

    data/part-*.parquet     one row per embedded catalogue item (EMBEDDINGS schema)
    errors/part-*.parquet   one row per rejected item (ERRORS schema)
    manifest.json           written last: counts, model, source; its presence marks a complete run

and is published by moving ``<root>/embeddings/<model_id>/LATEST`` (see :mod:`artifacts.publish`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import pyarrow as pa

from . import publish, storage

MANIFEST = "manifest.json"
DATA_DIR = "data"
ERRORS_DIR = "errors"


def embeddings_schema(dim: int) -> pa.Schema:
    """One row per catalogue item; ``embedding`` is L2-normalised float32 of fixed size ``dim``."""
    return pa.schema([
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("category", pa.string()),  # the catalogue's own category, if it has one
        pa.field("image_uri", pa.string(), nullable=False),
        pa.field("content_sha256", pa.string(), nullable=False),
        pa.field("embedding", pa.list_(pa.float32(), dim), nullable=False),
        pa.field("predicted_category", pa.string(), nullable=False),
        pa.field("confidence", pa.float32(), nullable=False),
        pa.field("model_id", pa.string(), nullable=False),
        pa.field("embedded_at", pa.timestamp("ms", tz="UTC"), nullable=False),
    ])


ERRORS_SCHEMA = pa.schema([
    pa.field("item_id", pa.string(), nullable=False),
    pa.field("image_uri", pa.string(), nullable=False),
    pa.field("reason", pa.string(), nullable=False),
])


@dataclass
class RunManifest:
    run_id: str
    model_id: str
    catalogue: str
    embedding_dim: int
    counts: dict = field(default_factory=dict)  # total, new, changed, unchanged, removed, failed
    previous_run: str | None = None
    started_at: str = ""
    finished_at: str = ""
    config: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "RunManifest":
        data = json.loads(text)
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def model_runs_uri(root: str, model_id: str) -> str:
    return storage.join(root, "embeddings", publish.check_id(model_id))


def read_manifest(run_uri: str) -> RunManifest:
    return RunManifest.from_json(storage.read_text(storage.join(run_uri, MANIFEST)))


def resolve_run(uri: str) -> str:
    """A run directory, or ``<root>/embeddings/<model_id>`` (its ``LATEST`` run)."""
    return publish.resolve(uri, manifest_name=MANIFEST)


def read_table(run_uri: str, columns: list[str] | None = None) -> pa.Table:
    """The embeddings of a complete run (refuses a run without its manifest)."""
    import pyarrow.parquet as pq

    run_uri = resolve_run(run_uri)
    fs, path = storage.resolve(storage.join(run_uri, DATA_DIR))
    manifest = read_manifest(run_uri)
    if not storage.exists(storage.join(run_uri, DATA_DIR)):
        return embeddings_schema(manifest.embedding_dim).empty_table()
    return pq.read_table(path, filesystem=fs, columns=columns, schema=embeddings_schema(manifest.embedding_dim))


def read_errors(run_uri: str) -> pa.Table:
    """The items a complete run rejected, with the reason (ERRORS_SCHEMA)."""
    import pyarrow.parquet as pq

    run_uri = resolve_run(run_uri)
    uri = storage.join(run_uri, ERRORS_DIR)
    if not storage.exists(uri):
        return ERRORS_SCHEMA.empty_table()
    fs, path = storage.resolve(uri)
    return pq.read_table(path, filesystem=fs, schema=ERRORS_SCHEMA)
