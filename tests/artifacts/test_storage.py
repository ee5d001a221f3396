import json

import pytest

from artifacts import publish, storage
from artifacts.configuration import ConfigError, load_config, parse_overrides
from tune.grid import GridConfig


def test_local_roundtrip_and_listing(tmp_path):
    uri = storage.join(str(tmp_path), "a", "b.txt")
    storage.write_text(uri, "hello")
    assert storage.read_text(uri) == "hello" and storage.exists(uri)
    assert storage.list_dir(str(tmp_path / "a")) == ["b.txt"]
    assert storage.list_dir(str(tmp_path / "missing")) == []
    assert not list(tmp_path.glob("a/*.tmp-*"))  # no temporary files left behind
    with pytest.raises(storage.StorageError, match="not found"):
        storage.read_bytes(str(tmp_path / "nope"))


def test_remote_uris_keep_their_scheme():
    assert storage.join("s3://bucket/root", "models", "x") == "s3://bucket/root/models/x"
    assert storage.is_remote("s3://b/k") and not storage.is_remote("/tmp/x")
    with pytest.raises(storage.StorageError, match="unsupported"):
        storage.resolve("gs://bucket/x")


def test_publish_requires_manifest_and_moves_latest(tmp_path):
    kind = str(tmp_path / "models")
    with pytest.raises(publish.NotPublishedError):
        publish.latest_id(kind)
    storage.write_text(storage.join(kind, "m1", "data.bin"), "x")
    with pytest.raises(storage.StorageError, match="manifest.json is missing"):
        publish.publish(kind, "m1", manifest_name="manifest.json")
    storage.write_text(storage.join(kind, "m1", "manifest.json"), "{}")
    publish.publish(kind, "m1", manifest_name="manifest.json")
    assert publish.latest_id(kind) == "m1"
    assert publish.resolve(kind, manifest_name="manifest.json").endswith("m1")
    assert json.loads(storage.read_text(storage.join(kind, "LATEST")))["id"] == "m1"


@pytest.mark.parametrize("bad", ["../x", "a/b", "", ".hidden", "a" * 200])
def test_artifact_ids_cannot_escape(bad):
    with pytest.raises(ValueError):
        publish.check_id(bad)


def test_config_layers_defaults_yaml_flags_overrides(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text("name: g\noptimizers: [adam, sgd]\ntrain: {epochs: 3, augmentation: {enabled: true}}\n")
    cfg = load_config(GridConfig, yaml_path=path, values={"storage": "/x", "address": None},
                      overrides=["train.epochs=5", "learning_rates=[0.1, 0.01]", "resources.gpu=0.5"])
    assert cfg.name == "g" and cfg.optimizers == ("adam", "sgd") and cfg.storage == "/x"
    assert cfg.train.epochs == 5 and cfg.train.augmentation.enabled and cfg.train.batch_size == 128
    assert cfg.learning_rates == (0.1, 0.01) and cfg.resources.gpu == 0.5


def test_config_rejects_unknown_keys_and_bad_types(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'train.epoch'.*valid:.*epochs"):
        load_config(GridConfig, overrides=["train.epoch=3"])
    with pytest.raises(ConfigError, match="expected int"):
        load_config(GridConfig, overrides=["train.epochs=many"])
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["oops"])


def test_transient_storage_errors_are_told_apart_from_bad_objects():
    from artifacts.storage import StorageError, is_transient

    assert is_transient(OSError("AWS Error NETWORK_CONNECTION during GetObject: curlCode: 7, Couldn't connect"))
    assert is_transient(StorageError("cannot read s3://b/k: AWS Error SLOW_DOWN"))
    assert not is_transient(FileNotFoundError("s3://b/missing.png"))
    assert not is_transient(OSError("cannot identify image file"))
    assert not is_transient(ValueError("connect"))  # not a storage error at all
