"""An embedding run against the previous one: what to embed, what to carry over, and the carrying.

The decision reads only the previous run's ``item_id``, ``image_uri``, ``content_sha256`` and
category columns, file by file, so each previous row's file and position are known. Carrying
then needs no lookup by id: a file whose every row is kept, in the same categories, is copied
whole (a server-side copy on S3, no bytes through the job); any other file with kept rows is read
row group by row group, filtered by position, given the catalogue's current categories and
written. The job's memory holds a bounded number of row groups at a time (``CARRY_ROWS_IN_FLIGHT``),
never the previous run's embeddings or a whole file of them, so it stays flat as the catalogue
grows, and no hash set over the catalogue's ids is built per batch (benchmarks/scale.py measures
both).
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
# Rows the carry reads ahead of its writer. By files it was unbounded in bytes: after one
# increment the previous run is 250k-row files, and 8-16 of them in flight held the driver at
# ~4 GB at 1M items (docs/BENCHMARKS.md, Scale). 128k rows are ~130 MB at 256 dims.
CARRY_ROWS_IN_FLIGHT = 131_072
COPIED_PREFIX = "part-c-"  # a previous run's file copied whole


@dataclass
class PreviousRun:
    """The previous run's keys and categories, in file order, and its part files' row counts."""

    uri: str
    keys: pa.Table  # KEY_COLUMNS + META_COLUMNS, the files' rows one after another
    files: list[tuple[str, int]]  # (name under data/, rows), in the order of ``keys``
    row_groups: list[tuple[int, ...]] | None = None  # each file's row-group sizes (its footer)

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

    def read(name: str) -> tuple[pa.Table, tuple[int, ...]]:
        fs, path = storage.resolve(storage.join(run_uri, embeddings.DATA_DIR, name))
        (fragment,) = pads.dataset(path, filesystem=fs, format="parquet", schema=schema).get_fragments()
        groups = tuple(g.num_rows for g in fragment.row_groups)
        return fragment.to_table(schema=schema, columns=KEY_COLUMNS + META_COLUMNS), groups

    with ThreadPoolExecutor(max_workers=READ_THREADS) as pool:
        read_back = list(pool.map(read, names))
    tables = [t for t, _ in read_back]
    keys = pa.concat_tables(tables) if tables else schema.empty_table().select(KEY_COLUMNS + META_COLUMNS)
    return PreviousRun(uri=run_uri, keys=keys, files=[(n, t.num_rows) for n, t in zip(names, tables)],
                       row_groups=[g for _, g in read_back])


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


@dataclass
class _Unit:
    """One piece of the carry: a previous file copied whole, or one of its row groups filtered."""

    name: str
    rows: int  # the previous rows this unit covers
    whole: bool = False
    group: int = 0
    keep: np.ndarray | None = None  # which of the group's rows stay
    meta: dict | None = None  # the kept rows' current categories


def _units(previous: PreviousRun, kept: Plan, items: pa.Table) -> list[_Unit]:
    metadata = {name: items.column(name).combine_chunks().cast(pa.string()) for name in META_COLUMNS}
    previous_meta = {name: previous.keys.column(name).combine_chunks().cast(pa.string()) for name in META_COLUMNS}
    units, start = [], 0
    for (name, n), groups in zip(previous.files, previous.row_groups or [None] * len(previous.files)):
        rows = kept.carry_from[start:start + n]
        keep = rows >= 0
        if keep.all() and all(pc.take(metadata[k], pa.array(rows)).equals(previous_meta[k].slice(start, n))
                              for k in META_COLUMNS):
            units.append(_Unit(name, n, whole=True))
        elif keep.any():
            offset = 0
            for g, size in enumerate(groups or (n,)):
                part = keep[offset:offset + size]
                if part.any():
                    src = pa.array(rows[offset:offset + size][part])
                    units.append(_Unit(name, size, group=g if groups else -1, keep=part,
                                       meta={k: pc.take(v, src) for k, v in metadata.items()}))
                offset += size
        start += n
    return units


def carry(previous: PreviousRun, kept: Plan, items: pa.Table, writer) -> int:
    """Move the previous run's kept rows into the new run (``writer``, an
    :class:`artifacts.embeddings.RunWriter`, writes the filtered ones; whole files are copied
    beside them), with the catalogue's current ``category`` and ``sub_category`` (metadata
    follows the catalogue; the embedding is kept). Returns the rows carried."""
    from collections import deque

    from artifacts import embeddings, storage

    if not kept.carried:
        return 0
    units = _units(previous, kept, items)

    def read(unit: _Unit):
        source = storage.join(previous.uri, embeddings.DATA_DIR, unit.name)
        if unit.whole:
            storage.copy_file(source, storage.join(writer.data_uri, f"{COPIED_PREFIX}{uuid.uuid4().hex}.parquet"))
            return None
        table = _read_part(source, writer.schema, unit.group)
        if table.num_rows != unit.rows:
            raise RuntimeError(f"{source} holds {table.num_rows} rows where this run planned {unit.rows}: "
                               "its files changed while this run read them?")
        table = table.filter(pa.array(unit.keep))
        for column, values in unit.meta.items():
            i = table.schema.get_field_index(column)
            table = table.set_column(i, table.schema.field(column), values)
        return table

    # Reads (and whole-file copies) run ahead of the writer, which keeps their order, up to
    # CARRY_ROWS_IN_FLIGHT rows read but not yet written (copies hold no rows here).
    written, ahead, queue, todo = 0, 0, deque(), iter(units)
    with ThreadPoolExecutor(max_workers=READ_THREADS) as pool:
        for unit in todo:
            cost = 0 if unit.whole else unit.rows
            while queue and (ahead + cost > CARRY_ROWS_IN_FLIGHT or len(queue) >= 2 * READ_THREADS):
                written, ahead = _write_next(queue, writer, written, ahead)
            queue.append((unit, cost, pool.submit(read, unit)))
            ahead += cost
        while queue:
            written, ahead = _write_next(queue, writer, written, ahead)
    if written != kept.carried:
        raise RuntimeError(f"carried {written} rows from {previous.uri}, expected {kept.carried}: "
                           "its files changed while this run read them?")
    return written


def _write_next(queue, writer, written: int, ahead: int) -> tuple[int, int]:
    unit, cost, future = queue.popleft()
    table = future.result()
    if table is None:
        written += unit.rows
    else:
        writer.write(table)
        written += table.num_rows
    return written, ahead - cost


def _read_part(uri: str, schema: pa.Schema, group: int = -1) -> pa.Table:
    """One part file (``group`` -1) or one of its row groups, read with the run's schema."""
    import pyarrow.dataset as pads

    from artifacts import storage

    fs, path = storage.resolve(uri)
    dataset = pads.dataset(path, filesystem=fs, format="parquet", schema=schema)
    if group < 0:
        return dataset.to_table()
    (fragment,) = dataset.get_fragments()
    return fragment.subset(row_group_ids=[group]).to_table(schema=schema)
