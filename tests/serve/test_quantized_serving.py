"""A quantized variant served by config: the app pinned to an int8 variant's id serves it with the
index of its own embeddings, over real HTTP, and refuses an index built with the float model."""

import shutil

import pytest

from artifacts import model_artifact, publish, storage
from jobs.build_index import BuildIndexConfig
from jobs.build_index import run as build_index
from jobs.embed_catalogue import EmbedConfig
from jobs.embed_catalogue import run as embed
from jobs.quantize_model import QuantizeConfig
from jobs.quantize_model import run as quantize
from tests.helpers import http, publish_version, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def store(serving_store, tmp_path_factory) -> tuple[str, str]:
    """A copy of the serving store (these tests publish into it) with an int8 variant of its model,
    whose embeddings and index are published (indexes/LATEST is the variant's): ``(root, variant id)``."""
    root = str(tmp_path_factory.mktemp("quantized") / "store")
    shutil.copytree(serving_store, root)
    models = model_artifact.models_root(root)
    variant = quantize(QuantizeConfig(model=publish.artifact_uri(models, "cnn-serve-a"), variant="int8", evaluate=False))
    run = embed(EmbedConfig(catalogue=storage.join(root, "catalogue"), model=variant.model_uri, out=root,
                            local_max_items=10_000))
    assert run.published and run.counts["new"] == 600
    assert build_index(BuildIndexConfig(embeddings=run.run_uri, out=root, storage=root, recall_queries=100)).published
    return root, variant.model_id


def test_a_pinned_int8_variant_serves_its_own_index_and_refuses_the_float_ones(deploy_app, store):
    root, variant_id = store
    url = deploy_app(root, model=variant_id)
    info = http(url + "/v1/info").json()
    assert info["model_id"] == variant_id and info["index_id"].startswith(f"hnsw-{variant_id}-")
    catalogue = storage.join(root, "catalogue", "trouser")
    name = next(p for p in sorted(storage.list_dir(catalogue)) if p.endswith(".png"))
    r = http(url + "/v1/search?k=5&category=all", storage.read_bytes(storage.join(catalogue, name)),
             headers={"Content-Type": "image/png"})
    assert r.status == 200, r.body
    out = r.json()
    # The upload is embedded by the same variant (batch 1) as the catalogue was (one batch of 600):
    # the item itself comes back at 100%.
    assert out["model_id"] == variant_id and len(out["results"]) == 5
    assert out["results"][0]["similarity"] == pytest.approx(100.0, abs=0.01)
    # A newer index built with a float model: the app pinned to the variant refuses it and keeps serving.
    other = publish_version(root, "cnn-serve-float", seed=3)
    wait_until(lambda: any(other in r for r in http(url + "/v1/info").json()["refused"]), 30,
               "the float model's index refused")
    info = http(url + "/v1/info").json()
    assert info["model_id"] == variant_id and info["index_id"].startswith(f"hnsw-{variant_id}-")
    assert any(f"built with model 'cnn-serve-float', but this app is pinned to model '{variant_id}'" in r
               for r in info["refused"]), info["refused"]
