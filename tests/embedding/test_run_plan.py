"""The run plan (what to embed, what to carry) and the streaming carry of unchanged rows."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from artifacts import embeddings
from embedding import ray_pipeline, run_plan

DIM = 4


def _rows(ids, category="Bag", seed=0):
    rng = np.random.default_rng(seed)
    vecs = rng.normal(size=(len(ids), DIM)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    schema = embeddings.embeddings_schema(DIM)
    n = len(ids)
    return pa.table({
        "item_id": ids, "category": [category] * n, "sub_category": [None] * n,
        "image_uri": [f"/cat/{i}.png" for i in ids], "content_sha256": [f"h-{i}" for i in ids],
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1)), DIM),
        "predicted_category": [category] * n, "confidence": pa.array([0.9] * n, pa.float32()),
        "model_id": ["m"] * n, "embedded_at": pa.array([0] * n, pa.timestamp("ms", tz="UTC")),
    }, schema=schema)


def _published_run(tmp_path, rows, rows_per_file=7):
    run = str(tmp_path / "run-1")
    writer = embeddings.RunWriter(run, DIM, rows_per_file)
    writer.write(rows)
    writer.close()
    manifest = embeddings.RunManifest(run_id="run-1", model_id="m", catalogue="/cat", embedding_dim=DIM,
                                      counts={"total": rows.num_rows, "failed": 0})
    (tmp_path / "run-1" / embeddings.MANIFEST).write_text(manifest.to_json())
    return run


def _items(ids, hashes=None, uris=None, category="Bag"):
    return pa.table({"item_id": ids, "image_uri": uris or [f"/cat/{i}.png" for i in ids],
                     "category": [category] * len(ids), "sub_category": pa.nulls(len(ids), pa.string()),
                     "content_sha256": hashes or [f"h-{i}" for i in ids]})


def test_the_plan_reads_ids_uris_and_hashes_only_and_carries_what_is_the_same(tmp_path):
    previous_rows = _rows([f"i{k}" for k in range(20)])
    run = _published_run(tmp_path, previous_rows)
    previous = run_plan.previous_keys(run)
    keys = previous.keys
    assert keys.column_names == run_plan.KEY_COLUMNS + run_plan.META_COLUMNS  # never the embeddings
    assert [n for _, n in previous.files] == [7, 7, 6]  # file by file, in the order of the keys

    ids = [f"i{k}" for k in range(2, 20)] + ["new1"]  # i0, i1 removed; new1 added
    hashes = [f"h-{i}" for i in ids]
    hashes[0] = "other"  # i2 changed content
    uris = [f"/cat/{i}.png" for i in ids]
    uris[1] = "/cat/moved.png"  # i3 moved: read again, never carried to a new location unread
    items = _items(ids, hashes, uris)
    plan = run_plan.plan(items, previous)
    assert sorted(plan.todo.column("item_id").to_pylist()) == ["i2", "i3", "new1"]
    assert plan.carried == 16 and plan.removed == 2
    counts = run_plan.kinds(plan.todo.column("item_id").combine_chunks(), keys.column("item_id"),
                            pa.array(["new1"]))
    assert counts == {"changed": 2, "retried": 1, "new": 0}


def test_carrying_streams_the_kept_rows_with_the_catalogue_s_current_category(tmp_path):
    previous_rows = _rows([f"i{k}" for k in range(30)], category="Bag")
    run = _published_run(tmp_path, previous_rows)
    ids = [f"i{k}" for k in range(30) if k % 3]
    items = _items(ids, category="Sandal")  # the catalogue moved every item to another category
    plan = run_plan.plan(items, run_plan.previous_keys(run))
    out = str(tmp_path / "run-2")
    writer = embeddings.RunWriter(out, DIM, 1000)
    assert run_plan.carry(run_plan.previous_keys(run), plan, items, writer) == len(ids)
    writer.close()
    got = pq.read_table(str(tmp_path / "run-2" / "data"))
    assert sorted(got.column("item_id").to_pylist()) == sorted(ids)
    assert set(got.column("category").to_pylist()) == {"Sandal"}
    before = {r["item_id"]: r["embedding"] for r in previous_rows.to_pylist()}
    for row in got.to_pylist():  # the embedding itself is carried unchanged
        assert row["embedding"] == pytest.approx(before[row["item_id"]])


def test_untouched_files_are_copied_whole_and_touched_ones_filtered_by_position(tmp_path):
    previous_rows = _rows([f"i{k:02d}" for k in range(21)])  # files of 7: i00-i06, i07-i13, i14-i20
    run = _published_run(tmp_path, previous_rows)
    names = embeddings.part_files(run, embeddings.DATA_DIR)
    ids = [f"i{k:02d}" for k in range(21) if k != 9]  # the second file loses a row
    categories = ["Bag"] * 13 + ["Boot"] + ["Bag"] * 6  # and the third file has one item recategorised
    items = _items(ids)
    items = items.set_column(items.schema.get_field_index("category"), "category", pa.array(categories))
    previous = run_plan.previous_keys(run)
    plan = run_plan.plan(items, previous)
    assert plan.carried == 20 and plan.removed == 1 and plan.todo.num_rows == 0
    out = str(tmp_path / "run-2")
    writer = embeddings.RunWriter(out, DIM, 1000, prefix="part-d-")
    assert run_plan.carry(previous, plan, items, writer) == 20
    writer.close()
    files = embeddings.part_files(out, embeddings.DATA_DIR)
    copies = [n for n in files if n.startswith(run_plan.COPIED_PREFIX)]
    assert len(copies) == 1 and len(files) == 2  # the first file whole, the other two through the writer
    data = tmp_path / "run-2" / "data"
    assert (data / copies[0]).read_bytes() == (tmp_path / "run-1" / "data" / names[0]).read_bytes()
    got = {r["item_id"]: r for r in pq.read_table(str(data)).to_pylist()}
    assert sorted(got) == sorted(ids) and got["i14"]["category"] == "Boot" and got["i15"]["category"] == "Bag"
    before = {r["item_id"]: r["embedding"] for r in previous_rows.to_pylist()}
    assert all(got[i]["embedding"] == pytest.approx(before[i]) for i in ids)


def test_a_previous_file_that_changed_after_the_plan_fails_the_carry(tmp_path):
    run = _published_run(tmp_path, _rows([f"i{k:02d}" for k in range(14)]))
    items = _items([f"i{k:02d}" for k in range(1, 14)])
    previous = run_plan.previous_keys(run)
    plan = run_plan.plan(items, previous)
    first = embeddings.part_files(run, embeddings.DATA_DIR)[0]
    pq.write_table(_rows(["x", "y"]), str(tmp_path / "run-1" / "data" / first))  # rewritten under the job
    writer = embeddings.RunWriter(str(tmp_path / "run-2"), DIM, 1000)
    with pytest.raises(RuntimeError, match="changed while this run read them"):
        run_plan.carry(previous, plan, items, writer)


def test_the_workers_block_writer_and_the_removal_of_files_no_report_names(tmp_path):
    run = str(tmp_path / "run")
    rows = _rows(["a", "b", "c"])
    out = rows.append_column("error", pa.array([None, "cannot decode image: truncated", None], pa.string()))
    report = ray_pipeline.write_block(out, run_uri=run, dim=DIM)
    row = report.to_pylist()[0]
    assert row["rows"] == 2 and row["failed"] == 1
    data = pq.read_table(str(tmp_path / "run" / "data" / row["data_file"]))
    assert data.column("item_id").to_pylist() == ["a", "c"] and data.schema == embeddings.embeddings_schema(DIM)
    errors = embeddings.read_errors_dir(run)
    assert errors.column("item_id").to_pylist() == ["b"] and "truncated" in errors.column("reason")[0].as_py()

    stray = ray_pipeline.write_block(out, run_uri=run, dim=DIM).to_pylist()[0]  # a retried task's output
    reported = {embeddings.DATA_DIR: {row["data_file"]}, embeddings.ERRORS_DIR: {row["errors_file"]}}
    assert ray_pipeline.remove_unreported(run, reported) == 2
    assert embeddings.part_files(run, embeddings.DATA_DIR) == [row["data_file"]]
    assert stray["data_file"] not in embeddings.part_files(run, embeddings.DATA_DIR)
    assert embeddings.read_errors_dir(run).num_rows == 1


def test_a_file_of_many_row_groups_is_carried_group_by_group_within_the_read_ahead_bound(tmp_path, monkeypatch):
    # Files of 40 rows in row groups of 8; read-ahead bounded to 16 rows: the carry must never
    # hold a whole file, and must still keep every kept row, in order, with its category.
    monkeypatch.setattr(embeddings, "ROW_GROUP_ROWS", 8)
    monkeypatch.setattr(run_plan, "CARRY_ROWS_IN_FLIGHT", 16)
    previous_rows = _rows([f"i{k:02d}" for k in range(80)])
    run = _published_run(tmp_path, previous_rows, rows_per_file=40)
    previous = run_plan.previous_keys(run)
    assert previous.row_groups == [(8,) * 5, (8,) * 5]
    dropped = {3, 17, 18, 41, 79}  # rows of groups 0 and 2 of the first file, 0 and 4 of the second
    ids = [f"i{k:02d}" for k in range(80) if k not in dropped]
    items = _items(ids, category="Coat")
    plan = run_plan.plan(items, previous)
    read_rows = []
    real_read = run_plan._read_part

    def counting_read(uri, schema, group=-1):
        table = real_read(uri, schema, group)
        read_rows.append(table.num_rows)
        return table

    monkeypatch.setattr(run_plan, "_read_part", counting_read)
    out = str(tmp_path / "run-2")
    writer = embeddings.RunWriter(out, DIM, 1000)
    assert run_plan.carry(previous, plan, items, writer) == len(ids)
    writer.close()
    assert read_rows and max(read_rows) == 8  # one row group per read, never a file of 40
    got = pq.read_table(str(tmp_path / "run-2" / "data"))
    assert got.column("item_id").to_pylist() == ids  # previous file order kept
    assert set(got.column("category").to_pylist()) == {"Coat"}
    assert pq.ParquetFile(str(tmp_path / "run-2" / "data" / "part-00000.parquet")).metadata.num_row_groups == 10
