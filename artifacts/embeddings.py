"""The embeddings contract: what the nightly job writes and the index build and serving read.

A run lives under ``<root>/embeddings/<model_id>/<run_id>/``::

    data/part-*.parquet     one row per embedded catalogue item (EMBEDDINGS schema)
    errors/part-*.parquet   one row per rejected item (ERRORS schema)
    manifest.json           written last: counts, model, source; its presence marks a complete run

written by :class:`RunWriter` (one schema, one set of Parquet options), and is published by
moving ``<root>/embeddings/<model_id>/LATEST`` (see :mod:`artifacts.publish`).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

import pyarrow as pa

from . import publish, storage

MANIFEST = "manifest.json"
DATA_DIR = "data"
ERRORS_DIR = "errors"
# Compressing unit vectors saves space (snappy: 40 MB against 72 MB for 60k rows of 256, mostly
# the ReLU zeros) but costs most of the time to write and read them: uncompressed, an incremental
# run that carries 60k rows over writes them in 0.11 s instead of 0.26 s, and every reader (index
# build, the next night) reads them in 0.10 s instead of 0.17 s (benchmarks/embed_parts.py).
# Dictionaries only where values repeat.
PARQUET_OPTIONS = {"compression": {"embedding": "none"},
                   "use_dictionary": ["category", "sub_category", "predicted_category", "model_id"]}
# Rows per row group of a data file (16 MB at 256 dims): the unit a reader (the next run's carry)
# holds at a time, whatever the file's size.
ROW_GROUP_ROWS = 16_384


def embeddings_schema(dim: int) -> pa.Schema:
    """One row per catalogue item; ``embedding`` is L2-normalised float32 of fixed size ``dim``."""
    return pa.schema([
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("category", pa.string()),  # the catalogue's own category, if it has one
        # Nested catalogues' second level (<category>/<sub-category>/<image>, or a manifest column);
        # null otherwise. Runs written before it read back with nulls here.
        pa.field("sub_category", pa.string()),
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


def read_errors_dir(run_uri: str) -> pa.Table:
    """The rejected items under ``<run>/errors/`` as written so far (no manifest needed: the
    job reads them before it publishes)."""
    import pyarrow.parquet as pq

    uri = storage.join(run_uri, ERRORS_DIR)
    if not part_files(run_uri, ERRORS_DIR):
        return ERRORS_SCHEMA.empty_table()
    fs, path = storage.resolve(uri)
    return pq.read_table(path, filesystem=fs, schema=ERRORS_SCHEMA)


def read_errors(run_uri: str) -> pa.Table:
    """The items a complete run rejected, with the reason (ERRORS_SCHEMA)."""
    import pyarrow.parquet as pq

    run_uri = resolve_run(run_uri)
    uri = storage.join(run_uri, ERRORS_DIR)
    if not storage.exists(uri):
        return ERRORS_SCHEMA.empty_table()
    fs, path = storage.resolve(uri)
    return pq.read_table(path, filesystem=fs, schema=ERRORS_SCHEMA)


def write_part(run_uri: str, directory: str, name: str, table: pa.Table) -> str:
    """Write one whole part file, ``<run>/<directory>/<name>``, with the contract's Parquet options;
    returns its URI. Ray Data workers write their blocks with it (the driver only learns the
    file names and counts), so the embeddings never travel through the job's driver."""
    import io

    import pyarrow.parquet as pq

    uri = storage.join(run_uri, directory, name)
    buf = io.BytesIO()  # one PUT (S3) or one rename (local): a reader never sees half a file
    pq.write_table(table, buf, row_group_size=ROW_GROUP_ROWS, **(PARQUET_OPTIONS if directory == DATA_DIR else {}))
    storage.write_bytes(uri, buf.getvalue())
    return uri


def part_files(run_uri: str, directory: str) -> list[str]:
    """The Parquet part files' names under ``<run>/<directory>`` (sorted; empty when absent)."""
    return [n for n in storage.list_dir(storage.join(run_uri, directory)) if n.endswith(".parquet")]


class RunWriter:
    """Streams embedding rows into ``<run>/data/<prefix>NNNNN.parquet`` with the exact schema."""

    def __init__(self, run_uri: str, dim: int, rows_per_file: int, prefix: str = "part-"):
        self.data_uri = storage.join(run_uri, DATA_DIR)
        self.schema = embeddings_schema(dim)
        self.rows_per_file = max(1, rows_per_file)
        self.prefix = prefix
        self.rows = 0
        self._part = 0
        self._in_part = 0
        self._writer = None
        self._stream = None

    def write(self, table) -> None:
        if table is None or table.num_rows == 0:
            return
        table = table.select(self.schema.names).cast(self.schema)
        while table.num_rows:
            if self._writer is None:
                self._open()
            take = min(table.num_rows, self.rows_per_file - self._in_part)
            self._writer.write_table(table.slice(0, take), row_group_size=ROW_GROUP_ROWS)
            table = table.slice(take)
            self._in_part += take
            self.rows += take
            if self._in_part >= self.rows_per_file:
                self._close_part()

    def _open(self) -> None:
        import pyarrow.parquet as pq

        uri = storage.join(self.data_uri, f"{self.prefix}{self._part:05d}.parquet")
        fs, path = storage.resolve(uri)
        if not storage.is_remote(uri):
            os.makedirs(os.path.dirname(path), exist_ok=True)
        self._stream = fs.open_output_stream(path, compression=None)
        self._writer = pq.ParquetWriter(self._stream, self.schema, **PARQUET_OPTIONS)

    def _close_part(self) -> None:
        self._writer.close()
        self._stream.close()
        self._writer = self._stream = None
        self._part += 1
        self._in_part = 0

    def close(self) -> None:
        if self._writer is not None:
            self._close_part()
        if self.rows == 0:  # an empty run still has a readable data table
            self._open()
            self._close_part()
