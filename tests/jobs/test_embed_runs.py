"""The embedding job's runs end to end on a real local Ray and a real S3-protocol server: corrupt
images, incremental carry-over, the failure limit, crashed runs, atomic publication, another
model and the CLI, a folder catalogue on S3, sub-categories into the rows and the search hits.
What the job reads and whom it trusts: tests/jobs/test_embed_inputs.py."""

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from artifacts import catalogue, catalogue_listing, catalogue_manifest, embeddings, publish, storage
from embedding import run_rows
from jobs import cli
from jobs.embed_catalogue import EmbedConfig, EmbedFailedError, run
from jobs.export_catalogue import ExportConfig
from jobs.export_catalogue import run as export
from tune.data.fashion_mnist import CLASS_NAMES
from tests.helpers import GARBAGE, by_id, edit_catalogue, mirrored_png, save_model

pytestmark = pytest.mark.slow


def test_full_run_with_corrupt_images_then_incremental_run(tmp_path, ray_local, tiny_fashion_mnist, models_dir,
                                                           monkeypatch):
    # One scenario, not four tests (over 60 lines on purpose): the incremental run, the failure
    # limit and the redone run id each start from the store the step before left.
    cat = tmp_path / "catalogue"
    export(ExportConfig(split="train", out=str(cat), data=str(tiny_fashion_mnist), limit=64))
    ids = [f"train-{i:06d}" for i in range(64)]
    corrupt = {ids[5]: GARBAGE, ids[10]: lambda raw: raw[: len(raw) // 2], ids[20]: b""}
    edit_catalogue(cat, replace=corrupt)
    root = str(tmp_path / "store")
    config = EmbedConfig(catalogue=str(cat), model=models_dir, out=root, run_id="run-1", local_max_items=0,
                         batch_size=16, min_actors=1, max_actors=1)

    first = run(config)

    assert first.timings["mode"] == "ray-data" and first.published and not first.reused
    assert first.counts == {"total": 64, "new": 64, "changed": 0, "unchanged": 0, "retried": 0, "removed": 0,
                            "failed": 3, "embedded": 61}
    runs = embeddings.model_runs_uri(root, "cnn-test-a")
    assert first.run_uri == storage.join(runs, "run-1") and publish.latest_id(runs) == "run-1"
    errors = {r["item_id"]: r["reason"] for r in embeddings.read_errors(runs).to_pylist()}
    assert errors.keys() == {ids[5], ids[10], ids[20]}
    assert "not a recognised image format" in errors[ids[5]]
    assert "truncated or corrupt" in errors[ids[10]]
    assert errors[ids[20]] == "empty file"

    parts = sorted((Path(first.run_uri) / "data").glob("*.parquet"))
    assert parts and all(pq.read_schema(p).equals(embeddings.embeddings_schema(128), check_metadata=False)
                         for p in parts)
    t1 = embeddings.read_table(runs)
    assert t1.num_rows == 61 and set(t1.column("item_id").to_pylist()) == set(ids) - errors.keys()
    vectors = np.stack(t1.column("embedding").to_numpy(zero_copy_only=False))
    assert vectors.dtype == np.float32 and vectors.shape == (61, 128)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    manifest = by_id(pq.read_table(cat / "manifest.parquet"))
    for item_id, row in by_id(t1).items():
        assert row["category"] == manifest[item_id]["category"] and row["model_id"] == "cnn-test-a"
        assert row["content_sha256"] == manifest[item_id]["content_sha256"]
        assert row["predicted_category"] in CLASS_NAMES and 0.0 < row["confidence"] <= 1.0
    run_manifest = embeddings.read_manifest(first.run_uri)
    assert run_manifest.counts == first.counts and run_manifest.config["batch_size"] == 16

    # Change 2, delete 2, add 1; the 3 rejected images stay as they were.
    changed, deleted, added = ids[1:3], ids[3:5], "extra-000001"
    edit_catalogue(cat, replace={i: mirrored_png for i in changed}, delete=deleted,
                   add={added: ("Bag", mirrored_png((cat / manifest[ids[0]]["image_uri"]).read_bytes()))})
    decoded, embedded = [], []
    real_decode, real_call = run_rows.decode_batch, run_rows.Embedder.__call__

    def spy_decode(batch, **kw):
        decoded.extend(batch.column("item_id").to_pylist())
        return real_decode(batch, **kw)

    def spy_call(self, batch):
        embedded.extend(batch.column("item_id").to_pylist())
        return real_call(self, batch)

    monkeypatch.setattr(run_rows, "decode_batch", spy_decode)
    monkeypatch.setattr(run_rows.Embedder, "__call__", spy_call)

    second = run(dataclasses.replace(config, run_id="run-2", local_max_items=256))

    assert second.timings["mode"] == "in-process"
    assert second.counts == {"total": 63, "new": 1, "changed": 2, "unchanged": 57, "retried": 3, "removed": 2,
                             "failed": 3, "embedded": 3}
    todo = {*changed, added, *errors}
    assert sorted(decoded) == sorted(embedded) == sorted(todo)  # nothing carried over was decoded or embedded
    assert publish.latest_id(runs) == "run-2" and second.previous_run == "run-1"
    rows1, rows2 = by_id(t1), by_id(embeddings.read_table(runs))
    assert rows2.keys() == (rows1.keys() - set(deleted)) | {added}
    for item_id in rows2.keys() - todo:
        assert rows2[item_id] == rows1[item_id]  # byte-identical, same embedded_at
    newest_before = max(r["embedded_at"] for r in rows1.values())
    assert {i for i, r in rows2.items() if r["embedded_at"] > newest_before} == {*changed, added}
    for item_id in changed:
        assert rows2[item_id]["content_sha256"] != rows1[item_id]["content_sha256"]
        assert rows2[item_id]["embedding"] != rows1[item_id]["embedding"]
    assert rows2[added]["category"] == "Bag"

    # Over the failure limit: a clear error, nothing published, the partial run invisible.
    more_bad = ids[30:34]
    edit_catalogue(cat, replace={i: GARBAGE for i in more_bad})
    with pytest.raises(EmbedFailedError, match=r"7 of 63 items \(11\.1%\) .*max_failure_share=5\.0%.*run-3 was NOT "
                                               r"published \(LATEST unchanged\).*not a recognised image format \(5\)"):
        run(dataclasses.replace(config, run_id="run-3", local_max_items=256))
    assert publish.latest_id(runs) == "run-2"
    partial = storage.join(runs, "run-3")
    assert storage.exists(storage.join(partial, "data")) and not storage.exists(storage.join(partial, "manifest.json"))
    assert embeddings.resolve_run(runs).endswith("run-2") and embeddings.read_table(runs).num_rows == 60
    with pytest.raises(publish.NotPublishedError):
        embeddings.read_table(storage.join(runs, "run-3"))

    # The same run id again, with a higher limit: the partial directory is redone and published.
    third = run(dataclasses.replace(config, run_id="run-3", local_max_items=256, max_failure_share=0.2))
    assert third.counts["failed"] == 7 and third.counts["changed"] == 4 and third.counts["unchanged"] == 56
    assert publish.latest_id(runs) == "run-3"


def test_a_crashed_run_is_invisible_and_the_same_run_id_completes_it(tmp_path, tiny_fashion_mnist, models_dir):
    cat = tmp_path / "catalogue"
    export(ExportConfig(split="test", out=str(cat), data=str(tiny_fashion_mnist), limit=20))
    root = str(tmp_path / "store")
    config = EmbedConfig(catalogue=str(cat), model=models_dir, out=root)
    done = run(dataclasses.replace(config, run_id="run-a"))
    runs = embeddings.model_runs_uri(root, "cnn-test-a")

    crashed = Path(runs) / "run-b"
    (crashed / "data").mkdir(parents=True)
    (crashed / "data" / "part-00000.parquet").write_bytes(b"PAR1 half a file")
    assert publish.latest_id(runs) == "run-a" and embeddings.read_table(runs).num_rows == 20
    with pytest.raises(publish.NotPublishedError):
        embeddings.read_table(str(crashed))

    redone = run(dataclasses.replace(config, run_id="run-b"))
    assert redone.counts["unchanged"] == 20 and redone.counts["embedded"] == 0 and publish.latest_id(runs) == "run-b"
    assert embeddings.read_table(runs).equals(embeddings.read_table(done.run_uri))

    files = {p: p.stat().st_mtime_ns for p in crashed.rglob("*")}
    again = run(dataclasses.replace(config, run_id="run-b"))
    assert again.reused and again.counts == redone.counts and again.published
    assert {p: p.stat().st_mtime_ns for p in crashed.rglob("*")} == files

    # Re-running an older complete run never moves LATEST back.
    old = run(dataclasses.replace(config, run_id="run-a"))
    assert old.reused and not old.published and publish.latest_id(runs) == "run-b"

    # A new category for the same bytes: carried over (no inference), with the catalogue's category.
    manifest = pq.read_table(cat / "manifest.parquet").to_pylist()
    manifest[0]["category"] = "Renamed"
    catalogue_manifest.write_manifest(pa.Table.from_pylist(manifest), str(cat / "manifest.parquet"))
    renamed = run(dataclasses.replace(config, run_id="run-c"))
    assert renamed.counts["unchanged"] == 20 and renamed.counts["embedded"] == 0
    before, after = by_id(embeddings.read_table(redone.run_uri)), by_id(embeddings.read_table(runs))
    item = manifest[0]["item_id"]
    assert after[item] == {**before[item], "category": "Renamed"}

    # A --limit run covers part of the catalogue: written, never published, not the next baseline.
    partial = run(dataclasses.replace(config, run_id="run-d", limit=5))
    assert not partial.published and partial.counts["total"] == 5 and publish.latest_id(runs) == "run-c"
    assert not run(dataclasses.replace(config, run_id="run-d", limit=5)).published  # nor when re-run
    after_partial = run(dataclasses.replace(config, run_id="run-e"))
    assert after_partial.previous_run == "run-c" and after_partial.counts["unchanged"] == 20


def test_another_model_or_full_embeds_everything_and_the_cli(tmp_path, tiny_fashion_mnist, models_dir, capsys):
    cat = tmp_path / "catalogue"
    export(ExportConfig(split="test", out=str(cat), data=str(tiny_fashion_mnist), limit=12))
    root = str(tmp_path / "store")
    (tmp_path / "embed.yaml").write_text("batch_size: 7\nmax_failure_share: 0.1\n")
    assert cli.main(["embed", "--catalogue", str(cat), "--model", models_dir, "--storage", root, "--run-id", "r1",
                     "--config", str(tmp_path / "embed.yaml"), "--set", "max_failure_share=0.2", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["counts"]["new"] == 12 and printed["run_uri"].endswith("/embeddings/cnn-test-a/r1")
    saved = embeddings.read_manifest(printed["run_uri"]).config  # the resolved config travels with the run
    assert (saved["batch_size"], saved["max_failure_share"], saved["model"]) == (7, 0.2, f"{models_dir}/cnn-test-a")

    assert cli.main(["embed", "--catalogue", str(cat), "--model", models_dir, "--storage", root, "--run-id", "r2",
                     "--full", "--set", "batch_size=5"]) == 0
    assert "total 12, new 12, changed 0, unchanged 0" in capsys.readouterr().out
    runs_a = embeddings.model_runs_uri(root, "cnn-test-a")
    assert embeddings.read_manifest(storage.join(runs_a, "r2")).previous_run is None

    other = str(tmp_path / "models-b")
    save_model(other, "cnn-test-b", seed=1)
    result = run(EmbedConfig(catalogue=str(cat), model=other, out=root, run_id="r1"))
    assert result.previous_run is None and result.counts["new"] == 12 and result.model_id == "cnn-test-b"
    assert publish.latest_id(runs_a) == "r2"  # runs of one model never touch another's
    t_a, t_b = embeddings.read_table(runs_a), embeddings.read_table(embeddings.model_runs_uri(root, "cnn-test-b"))
    assert t_a.column("embedding").to_pylist() != t_b.column("embedding").to_pylist()

    edit_catalogue(cat, replace={f"test-{i:06d}": GARBAGE for i in range(3)})
    assert cli.main(["embed", "--catalogue", str(cat), "--model", models_dir, "--storage", root]) == 1
    assert "3 of 12 items (25.0%) could not be embedded" in capsys.readouterr().err
    assert publish.latest_id(runs_a) == "r2"


def test_folder_catalogue_model_and_embeddings_on_s3(s3_bucket, ray_local, tmp_path, tiny_fashion_mnist, models_dir):
    local = tmp_path / "catalogue"
    export(ExportConfig(split="test", out=str(local), data=str(tiny_fashion_mnist), limit=24))
    os.remove(local / "manifest.parquet")  # image folders only: the job hashes the bytes itself
    cat = storage.join(s3_bucket, "catalogues", "fm")
    storage.upload_dir(local, cat)
    models = storage.join(s3_bucket, "vitrine", "models")
    storage.upload_dir(models_dir, models)
    root = storage.join(s3_bucket, "vitrine")

    first = run(EmbedConfig(catalogue=cat, model=models, out=root, smoke_test=True, batch_size=8, max_actors=1))

    assert first.timings["mode"] == "ray-data"
    assert first.counts["new"] == 24 and first.counts["embedded"] == 24 and first.counts["failed"] == 0
    runs = embeddings.model_runs_uri(root, "cnn-test-a")
    assert first.run_uri.startswith(runs + "/run-")
    # A smoke run writes its run but never moves LATEST; publish it by hand for the incremental step.
    assert not first.published
    with pytest.raises(publish.NotPublishedError):
        publish.latest_id(runs)
    publish.publish(runs, first.run_id, manifest_name=embeddings.MANIFEST)
    t = embeddings.read_table(runs)
    listing = catalogue_listing.list_catalogue(cat)
    expected = dict(zip(listing.column("item_id").to_pylist(), listing.column("image_uri").to_pylist()))
    rows = by_id(t)
    assert rows.keys() == expected.keys()
    for item_id, row in rows.items():
        assert row["image_uri"] == expected[item_id] and row["category"] == row["image_uri"].split("/")[-2]
        assert row["content_sha256"] == catalogue.content_sha256(storage.read_bytes(expected[item_id]))

    item = sorted(rows)[0]
    storage.write_bytes(expected[item], mirrored_png(storage.read_bytes(expected[item])))
    second = run(EmbedConfig(catalogue=cat, model=models, out=root))
    assert second.timings["mode"] == "in-process" and "hash_s" in second.timings
    assert (second.counts["changed"], second.counts["unchanged"], second.counts["new"]) == (1, 23, 0)
    assert second.previous_run == first.run_id and publish.latest_id(runs) == second.run_id


def test_sub_categories_of_a_nested_catalogue_travel_into_the_rows_and_the_search_hits(tmp_path, tiny_fashion_mnist,
                                                                                       models_dir, capsys):
    from jobs import build_index
    from jobs.build_index import BuildIndexConfig
    from serve.searcher import CatalogueSearcher

    cat = tmp_path / "nested"
    export(ExportConfig(style="photo", layout="nested", size=48, split="test", out=str(cat),
                        data=str(tiny_fashion_mnist), limit=40))
    expected = {r["item_id"]: r["sub_category"] for r in pq.read_table(cat / "manifest.parquet").to_pylist()}
    assert len(set(expected.values())) >= 3
    root = str(tmp_path / "store")
    first = run(EmbedConfig(catalogue=str(cat), model=models_dir, out=root, run_id="m1"))  # the manifest's column
    rows = embeddings.read_table(first.run_uri)
    assert dict(zip(rows.column("item_id").to_pylist(), rows.column("sub_category").to_pylist())) == expected

    (cat / "manifest.parquet").unlink()  # the folders alone, read with --category-level 2
    assert cli.main(["embed", "--catalogue", str(cat), "--model", models_dir, "--storage", root, "--run-id", "f1",
                     "--category-level", "2", "--full"]) == 0
    capsys.readouterr()
    rows = embeddings.read_table(storage.join(embeddings.model_runs_uri(root, "cnn-test-a"), "f1"))
    assert dict(zip(rows.column("item_id").to_pylist(), rows.column("sub_category").to_pylist())) == expected
    again = run(EmbedConfig(catalogue=str(cat), model=models_dir, out=root, run_id="f2", category_level=2))
    assert again.counts["unchanged"] == 40  # carried over, sub-categories with them
    rows = embeddings.read_table(again.run_uri)
    assert dict(zip(rows.column("item_id").to_pylist(), rows.column("sub_category").to_pylist())) == expected

    index = build_index.run(BuildIndexConfig(embeddings=again.run_uri, out=root, recall_queries=20, min_recall=0.0))
    searcher = CatalogueSearcher(index.index_uri)
    vector = np.asarray(rows.column("embedding").to_pylist()[0], np.float32)
    hits = searcher.search(vector, k=5)
    assert len(hits) == 5 and all(h["sub_category"] == expected[h["item_id"]] for h in hits)
