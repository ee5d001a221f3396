"""An embedding run against the previous one: what to embed, what to carry over, and the carrying.

The decision reads only the previous run's ``item_id``, ``image_uri`` and ``content_sha256``
columns, and the carried rows then move from the previous run's files to the new run's as Arrow
batches, one batch at a time: the job's memory does not hold the previous run's embeddings, so
it stays flat as the catalogue grows (benchmarks/scale.py measures it).
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

KEY_COLUMNS = ["item_id", "image_uri", "content_sha256"]
CARRY_BATCH_ROWS = 65_536  # ~64 MB of 256-d rows in flight while carrying


@dataclass
class Plan:
    todo: pa.Table  # catalogue rows to embed
    carried_ids: pa.Array  # item ids whose previous row is kept (with the catalogue's current category)
    removed: int  # previous rows whose item is gone from the catalogue

    @property
    def carried(self) -> int:
        return len(self.carried_ids)


def previous_keys(run_uri: str) -> pa.Table:
    """The previous run's ids, URIs and hashes: everything the plan needs from it."""
    from artifacts import embeddings

    return embeddings.read_table(run_uri, columns=KEY_COLUMNS)


def plan(items: pa.Table, previous: pa.Table | None, listed: pa.Array | None = None) -> Plan:
    """Split the catalogue against the previous run: same item id, same content hash and same
    image URI → carry the previous row over; otherwise embed. A URI that moved is read again:
    the manifest's hash is a claim, and carrying it to a new location unread would vouch for
    bytes nobody looked at. ``listed``: every item id of the catalogue, refused ones included
    (they are failures, not removals)."""
    if previous is None or previous.num_rows == 0:
        return Plan(todo=items, carried_ids=pa.array([], pa.string()), removed=0)
    pos = pc.index_in(items.column("item_id"), value_set=previous.column("item_id"))
    same = pc.and_(
        pc.fill_null(pc.equal(items.column("content_sha256"), pc.take(previous.column("content_sha256"), pos)), False),
        pc.fill_null(pc.equal(items.column("image_uri"), pc.take(previous.column("image_uri"), pos)), False))
    kept = pc.is_in(previous.column("item_id"), value_set=items.column("item_id") if listed is None else listed)
    removed = previous.num_rows - (pc.sum(kept.cast(pa.int64())).as_py() or 0)
    return Plan(todo=items.filter(pc.invert(same)),
                carried_ids=items.filter(same).column("item_id").combine_chunks(), removed=removed)


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


def carry(previous_run: str, kept: Plan, items: pa.Table, writer) -> int:
    """Copy the previous run's rows of ``kept.carried_ids`` into ``writer`` (a
    :class:`artifacts.embeddings.RunWriter`), batch by batch, with the catalogue's current
    ``category`` and ``sub_category`` (metadata follows the catalogue; the embedding is kept).
    Returns the rows written."""
    import pyarrow.dataset as pads

    from artifacts import embeddings, storage

    if not kept.carried:
        return 0
    manifest = embeddings.read_manifest(previous_run)
    schema = embeddings.embeddings_schema(manifest.embedding_dim)
    fs, path = storage.resolve(storage.join(previous_run, embeddings.DATA_DIR))
    # Runs written before sub_category existed read back with nulls there (the explicit schema).
    source = pads.dataset(path, filesystem=fs, format="parquet", schema=schema)
    current_ids = items.column("item_id")
    metadata = {name: items.column(name) for name in ("category", "sub_category")}
    written = 0
    for batch in source.to_batches(filter=pc.field("item_id").isin(kept.carried_ids),
                                   batch_size=CARRY_BATCH_ROWS, use_threads=True):
        if not batch.num_rows:
            continue
        table = pa.Table.from_batches([batch])
        pos = pc.index_in(table.column("item_id"), value_set=current_ids)
        for name, column in metadata.items():
            i = table.schema.get_field_index(name)
            table = table.set_column(i, table.schema.field(name), pc.take(column, pos).cast(pa.string()))
        writer.write(table)
        written += table.num_rows
    if written != kept.carried:
        raise RuntimeError(f"carried {written} rows from {previous_run}, expected {kept.carried}: "
                           "its files changed while this run read them?")
    return written
