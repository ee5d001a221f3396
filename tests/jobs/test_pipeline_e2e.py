"""Issue 3's end to end: a catalogue on a real S3-protocol server → embed (three corrupt images)
→ shop edits → incremental run → HNSW index → every catalogue image finds itself first."""

import numpy as np
import pytest

from artifacts import embeddings, publish, storage
from artifacts.hnsw_index import HnswIndex
from jobs.build_index import BuildIndexConfig
from jobs.build_index import run as build_index
from jobs.embed_catalogue import EmbedConfig
from jobs.embed_catalogue import run as embed
from jobs.export_catalogue import ExportConfig
from jobs.export_catalogue import run as export
from tests.helpers import GARBAGE, edit_catalogue, mirrored_png, save_model

pytestmark = pytest.mark.slow


def test_s3_catalogue_to_index_end_to_end(s3_bucket, ray_local, tiny_fashion_mnist, tmp_path):
    root = storage.join(s3_bucket, "vitrine")
    models = storage.join(root, "models")
    save_model(models, "cnn-e2e")
    local = tmp_path / "catalogue"
    export(ExportConfig(split="train", out=str(local), data=str(tiny_fashion_mnist), limit=60))
    ids = [f"train-{i:06d}" for i in range(60)]
    bad = {ids[5]: GARBAGE, ids[10]: lambda raw: raw[: len(raw) // 2], ids[20]: b""}
    edit_catalogue(local, replace=bad)
    cat = storage.join(s3_bucket, "shop")
    storage.upload_dir(local, cat)

    first = embed(EmbedConfig(catalogue=cat, model=models, out=root, local_max_items=0, batch_size=16, max_actors=1,
                              max_failure_share=0.1))
    assert first.published and first.counts["failed"] == 3 and first.counts["embedded"] == 57
    errors = {r["item_id"]: r["reason"] for r in embeddings.read_errors(first.run_uri).to_pylist()}
    assert set(errors) == set(bad) and all(errors.values())

    # The shop changes two photos and removes two items; the broken three stay broken.
    edit_catalogue(local, replace={ids[1]: mirrored_png, ids[2]: mirrored_png}, delete=ids[3:5])
    storage.upload_dir(local, cat)
    second = embed(EmbedConfig(catalogue=cat, model=models, out=root, max_failure_share=0.1))
    c = second.counts
    assert (c["changed"], c["removed"], c["unchanged"], c["failed"]) == (2, 2, 53, 3)
    assert c["new"] == 0 and c["embedded"] == 2  # only the two changed photos went through the model
    runs = embeddings.model_runs_uri(root, "cnn-e2e")
    assert publish.latest_id(runs) == second.run_id

    index = build_index(BuildIndexConfig(embeddings=runs, out=root, storage=root))
    assert index.published and index.items == 55 and index.recall_at_10 >= 0.99
    loaded = HnswIndex.load(storage.join(root, "indexes"))
    table = embeddings.read_table(runs)
    vectors = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    hits = loaded.search(vectors, k=1)
    assert [h[0].item_id for h in hits] == table.column("item_id").to_pylist()
