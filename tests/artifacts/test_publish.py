"""LATEST only moves forward: an older artifact cannot replace a newer one unless forced."""

import json
import os
import time

import pytest

from artifacts import publish, storage

MANIFEST = "manifest.json"


def make(kind: str, artifact_id: str) -> str:
    storage.write_text(storage.join(kind, artifact_id, MANIFEST), "{}")
    return artifact_id


def test_id_timestamp_round_trips_new_id():
    before = int(time.time())
    ts = publish.id_timestamp(publish.new_id("vitrine_cnn"))
    assert before <= ts <= time.time() + 1
    assert publish.id_timestamp("run-a") is None


def test_an_older_artifact_cannot_replace_a_newer_latest(tmp_path):
    kind = str(tmp_path / "models")
    old = make(kind, "cnn-20261201T100000-aaaa")
    new = make(kind, "cnn-20261201T110000-bbbb")
    publish.publish(kind, new, manifest_name=MANIFEST)
    with pytest.raises(publish.StaleArtifactError, match="force=True"):
        publish.publish(kind, old, manifest_name=MANIFEST)
    assert publish.latest_id(kind) == new
    # Moving forward and re-publishing the same id are fine.
    newer = make(kind, "cnn-20261201T120000-cccc")
    publish.publish(kind, newer, manifest_name=MANIFEST)
    publish.publish(kind, newer, manifest_name=MANIFEST)
    assert publish.latest_id(kind) == newer


def test_force_rolls_back_deliberately(tmp_path):
    kind = str(tmp_path / "models")
    old = make(kind, "cnn-20261201T100000-aaaa")
    new = make(kind, "cnn-20261201T110000-bbbb")
    publish.publish(kind, new, manifest_name=MANIFEST)
    publish.publish(kind, old, manifest_name=MANIFEST, force=True)
    pointer = json.loads(storage.read_text(storage.join(kind, publish.LATEST)))
    assert pointer["id"] == old and pointer["forced"] is True
    assert pointer["created_at"] == publish.id_timestamp(old)


def test_writer_created_at_wins_over_the_id(tmp_path):
    kind = str(tmp_path / "runs")
    a, b = make(kind, "run-a"), make(kind, "run-b")
    publish.publish(kind, b, manifest_name=MANIFEST, created_at=2000.0)
    with pytest.raises(publish.StaleArtifactError):
        publish.publish(kind, a, manifest_name=MANIFEST, created_at=1000.0)
    publish.publish(kind, a, manifest_name=MANIFEST, created_at=3000.0)
    assert publish.latest_id(kind) == a


def test_hand_named_ids_fall_back_to_the_manifest_time(tmp_path):
    kind = str(tmp_path / "runs")
    a, b = make(kind, "nightly-1"), make(kind, "nightly-2")
    os.utime(storage.join(kind, a, MANIFEST), (1000, 1000))
    publish.publish(kind, b, manifest_name=MANIFEST)
    with pytest.raises(publish.StaleArtifactError):
        publish.publish(kind, a, manifest_name=MANIFEST)


def test_a_pointer_without_created_at_is_still_compared(tmp_path):
    kind = str(tmp_path / "models")
    old = make(kind, "cnn-20261201T100000-aaaa")
    new = make(kind, "cnn-20261201T110000-bbbb")
    # LATEST as written before created_at was recorded.
    storage.write_text(storage.join(kind, publish.LATEST), json.dumps({"id": new, "published_at": 1.0}))
    with pytest.raises(publish.StaleArtifactError):
        publish.publish(kind, old, manifest_name=MANIFEST)


def test_missing_manifest_is_refused_and_no_lock_file_in_the_kind(tmp_path):
    kind = str(tmp_path / "models")
    storage.write_text(storage.join(kind, "cnn-20261201T100000-aaaa", "model.keras"), "x")
    with pytest.raises(storage.StorageError, match="missing"):
        publish.publish(kind, "cnn-20261201T100000-aaaa", manifest_name=MANIFEST)
    publish.publish(kind, make(kind, "cnn-20261201T110000-bbbb"), manifest_name=MANIFEST)
    assert sorted(os.listdir(kind)) == ["LATEST", "cnn-20261201T100000-aaaa", "cnn-20261201T110000-bbbb"]


def test_older_artifact_refused_on_s3(s3_bucket):
    kind = f"{s3_bucket}/models"
    old = make(kind, "cnn-20261201T100000-aaaa")
    new = make(kind, "cnn-20261201T110000-bbbb")
    publish.publish(kind, new, manifest_name=MANIFEST)
    with pytest.raises(publish.StaleArtifactError):
        publish.publish(kind, old, manifest_name=MANIFEST)
    assert publish.latest_id(kind) == new


def test_s3_pointer_writes_are_compare_and_swap(s3_bucket):
    """The conditional PUT publish relies on, against the real S3-protocol server."""
    import threading

    pointer = storage.join(s3_bucket, "models", publish.LATEST)
    assert storage.read_tagged(pointer) == (None, None)
    storage.write_bytes_if(pointer, b"first", tag=None)  # If-None-Match: * on a new key
    with pytest.raises(storage.PreconditionFailed):
        storage.write_bytes_if(pointer, b"again", tag=None)  # ... refused once it exists
    data, tag = storage.read_tagged(pointer)
    assert data == b"first" and tag
    storage.write_text(pointer, "someone else")  # another writer, unconditional
    with pytest.raises(storage.PreconditionFailed):
        storage.write_bytes_if(pointer, b"stale", tag=tag)
    assert storage.read_text(pointer) == "someone else"

    # Eight publishers that all read the same pointer: exactly one write lands.
    _, tag = storage.read_tagged(pointer)
    barrier, outcomes = threading.Barrier(8), []

    def writer(i: int) -> None:
        barrier.wait()
        try:
            storage.write_bytes_if(pointer, f"writer {i}".encode(), tag=tag)
            outcomes.append(("won", i))
        except storage.PreconditionFailed:
            outcomes.append(("lost", i))

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for outcome, i in outcomes if outcome == "won"]
    assert len(outcomes) == 8 and len(winners) == 1
    assert storage.read_text(pointer) == f"writer {winners[0]}"


def test_s3_publish_history_and_rollback_survive_the_conditional_write(s3_bucket):
    kind = f"{s3_bucket}/models"
    ids = [make(kind, f"cnn-20261201T1{i}0000-aaaa") for i in range(3)]
    for i in ids:
        publish.publish(kind, i, manifest_name=MANIFEST)
    assert [p["id"] for p in publish.history(kind)] == [ids[1], ids[0]]
    assert publish.rollback(kind, manifest_name=MANIFEST) == (ids[2], ids[1])
    with pytest.raises(publish.StaleArtifactError, match="force=True"):
        publish.publish(kind, ids[0], manifest_name=MANIFEST)
    assert publish.latest_id(kind) == ids[1]
