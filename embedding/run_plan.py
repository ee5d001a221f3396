"""An embedding run against the previous one: what to embed, what to carry over, and the carrying.

The decision reads only the previous run's ``item_id``, ``image_uri``, ``content_sha256`` and
category columns, file by file, so each previous row's file and position are known. Carrying
then needs no lookup by id: a file whose every row is kept, in the same categories, is copied
whole (a server-side copy on S3, no bytes through the job); any other file with kept rows is read
once, filtered by position, given the catalogue's current categories and written. The job's
memory holds one file's rows at a time, never the previous run's embeddings, so it stays flat as
the catalogue grows, and no hash set over the catalogue's ids is built per batch
(benchmarks/scale.py measures both).
"""

from __future__ import annotations

import logging
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

log = logging.getLogger("vitrine.embed")

KEY_COLUMNS = ["item_id", "image_uri", "content_sha256"]
META_COLUMNS = ["category", "sub_category"]  # follow the catalogue; carried rows get its current values
READ_THREADS = 8  # previous part files read at once (object storage latency)
COPIED_PREFIX = "part-c-"  # a previous run's file copied whole


@dataclass
class PreviousRun:
    """The previous run's keys and categories, in file order, and its part files' row counts."""

    uri: str
    keys: pa.Table  # KEY_COLUMNS + META_COLUMNS, the files' rows one after another
    files: list[tuple[str, int]]  # (name under data/, rows), in the order of ``keys``

    @property
    def item_ids(self) -> pa.ChunkedArray:
        return self.keys.column("item_id")


@dataclass
class Plan:
    todo: pa.Table  # catalogue rows to embed
    carried: int  # previous rows kept (with the catalogue's current category)
    removed: int  # previous rows whose item is gone from the catalogue
    # For each previous row (file order): the catalogue row that keeps it, or -1.
    carry_from: np.ndarray | None = None
    previous: PreviousRun | None = None  # what is carried from; dropped once carried (run_rows)


def previous_keys(run_uri: str) -> PreviousRun:
    """Read the previous run's ids, URIs, hashes and categories, file by file: everything the
    plan and the carry need from it, never an embedding."""
    import pyarrow.dataset as pads

    from artifacts import embeddings, storage

    manifest = embeddings.read_manifest(run_uri)
    # Runs written before sub_category existed read back with nulls there (the explicit schema).
    schema = embeddings.embeddings_schema(manifest.embedding_dim)
    names = embeddings.part_files(run_uri, embeddings.DATA_DIR)

    def read(name: str) -> pa.Table:
        fs, path = storage.resolve(storage.join(run_uri, embeddings.DATA_DIR, name))
        return pads.dataset(path, filesystem=fs, format="parquet", schema=schema).to_table(
            columns=KEY_COLUMNS + META_COLUMNS)

    with ThreadPoolExecutor(max_workers=READ_THREADS) as pool:
        tables = list(pool.map(read, names))
    keys = pa.concat_tables(tables) if tables else schema.empty_table().select(KEY_COLUMNS + META_COLUMNS)
    return PreviousRun(uri=run_uri, keys=keys, files=[(n, t.num_rows) for n, t in zip(names, tables)])


def previous_run(runs_uri: str, card):
    """``(run_id, its PreviousRun, rejected item ids)`` of the model's LATEST run, or
    ``(None, None, None)`` when there is none or another model made it."""
    from artifacts import embeddings, publish

    try:
        run_id = publish.latest_id(runs_uri)
    except publish.NotPublishedError:
        return None, None, None
    uri = publish.artifact_uri(runs_uri, run_id)
    manifest = embeddings.read_manifest(uri)
    if manifest.model_id != card.model_id or manifest.embedding_dim != card.embedding_dim:
        log.warning("LATEST run %s was made by %s (dim %d), not %s (dim %d): embedding everything",
                    run_id, manifest.model_id, manifest.embedding_dim, card.model_id, card.embedding_dim)
        return None, None, None
    rejected = embeddings.read_errors(uri).column("item_id").combine_chunks()
    return run_id, previous_keys(uri), rejected


def plan(items: pa.Table, previous: PreviousRun | None, listed: pa.Array | None = None) -> Plan:
    """Split the catalogue against the previous run: same item id, same content hash and same
    image URI → carry the previous row over; otherwise embed. A URI that moved is read again:
    the manifest's hash is a claim, and carrying it to a new location unread would vouch for
    bytes nobody looked at. ``listed``: every item id of the catalogue, refused ones included
    (they are failures, not removals)."""
    if previous is None or previous.keys.num_rows == 0:
        return Plan(todo=items, carried=0, removed=0)
    keys = previous.keys
    pos = pc.index_in(items.column("item_id"), value_set=keys.column("item_id"))
    same = pc.and_(
        pc.fill_null(pc.equal(items.column("content_sha256"), pc.take(keys.column("content_sha256"), pos)), False),
        pc.fill_null(pc.equal(items.column("image_uri"), pc.take(keys.column("image_uri"), pos)), False))
    kept = pc.is_in(keys.column("item_id"), value_set=items.column("item_id") if listed is None else listed)
    removed = keys.num_rows - (pc.sum(kept.cast(pa.int64())).as_py() or 0)
    same_np = same.to_numpy(zero_copy_only=False) if isinstance(same, pa.Array) else np.concatenate(
        [c.to_numpy(zero_copy_only=False) for c in same.chunks] or [np.zeros(0, bool)])
    item_rows = np.flatnonzero(same_np)
    prev_rows = pc.take(pos, pa.array(item_rows)).to_numpy(zero_copy_only=False).astype(np.int64)
    carry_from = np.full(keys.num_rows, -1, np.int64)
    carry_from[prev_rows] = item_rows
    return Plan(todo=items.filter(pc.invert(same)), carried=len(item_rows), removed=removed, carry_from=carry_from,
                previous=previous)


def kinds(ids: pa.Array, previous_ids: pa.Array | None, rejected_ids: pa.Array | None) -> dict:
    """How many of ``ids`` (items not carried over) are ``changed`` (the previous run embedded
    other content under the id), ``retried`` (the previous run rejected it: rejections may be
    transient, e.g. a read timeout, and cost one decode to confirm) or ``new``."""
    ids = pa.chunked_array([ids]) if isinstance(ids, pa.Array) else ids
    empty = pa.array([], pa.string())
    changed = pc.is_in(ids, value_set=empty if previous_ids is None else previous_ids)
    retried = pc.and_(pc.invert(changed), pc.is_in(ids, value_set=empty if rejected_ids is None else rejected_ids))
    n_changed, n_retried = (int(pc.sum(m.cast(pa.int64())).as_py() or 0) for m in (changed, retried))
    return {"changed": n_changed, "retried": n_retried, "new": len(ids) - n_changed - n_retried}


def carry(previous: PreviousRun, kept: Plan, items: pa.Table, writer) -> int:
    """Move the previous run's kept rows into the new run (``writer``, an
    :class:`artifacts.embeddings.RunWriter`, writes the filtered ones; whole files are copied
    beside them), with the catalogue's current ``category`` and ``sub_category`` (metadata
    follows the catalogue; the embedding is kept). Returns the rows carried."""
    from artifacts import embeddings, storage

    if not kept.carried:
        return 0
    metadata = {name: items.column(name).combine_chunks().cast(pa.string()) for name in META_COLUMNS}
    previous_meta = {name: previous.keys.column(name).combine_chunks().cast(pa.string()) for name in META_COLUMNS}
    work, start = [], 0
    for name, n in previous.files:
        rows = kept.carry_from[start:start + n]
        keep = rows >= 0
        if keep.any():
            src = pa.array(rows[keep])
            new_meta = {k: pc.take(v, src) for k, v in metadata.items()}
            whole = bool(keep.all()) and all(
                new_meta[k].equals(previous_meta[k].slice(start, n)) for k in META_COLUMNS)
            work.append((name, n, keep, new_meta, whole))
        start += n
    data_dir = writer.data_uri
    written = 0

    def read(job):
        name, n, keep, new_meta, whole = job
        source = storage.join(previous.uri, embeddings.DATA_DIR, name)
        if whole:
            storage.copy_file(source, storage.join(data_dir, f"{COPIED_PREFIX}{uuid.uuid4().hex}.parquet"))
            return None
        table = _read_part(source, writer.schema)
        if table.num_rows != n:
            raise RuntimeError(f"{source} holds {table.num_rows} rows, {n} when this run planned: "
                               "its files changed while this run read them?")
        table = table.filter(pa.array(keep))
        for column, values in new_meta.items():
            i = table.schema.get_field_index(column)
            table = table.set_column(i, table.schema.field(column), values)
        return table

    # Reads (and whole-file copies) run a few files ahead of the writer, which keeps file order.
    with ThreadPoolExecutor(max_workers=READ_THREADS) as pool:
        window = READ_THREADS * 2
        futures = [pool.submit(read, job) for job in work[:window]]
        for i in range(len(work)):
            table = futures[i].result()
            if i + window < len(work):
                futures.append(pool.submit(read, work[i + window]))
            futures[i] = None  # let the table go once written
            if table is None:
                written += work[i][1]
            else:
                writer.write(table)
                written += table.num_rows
    if written != kept.carried:
        raise RuntimeError(f"carried {written} rows from {previous.uri}, expected {kept.carried}: "
                           "its files changed while this run read them?")
    return written


def _read_part(uri: str, schema: pa.Schema) -> pa.Table:
    import pyarrow.dataset as pads

    from artifacts import storage

    fs, path = storage.resolve(uri)
    return pads.dataset(path, filesystem=fs, format="parquet", schema=schema).to_table()
