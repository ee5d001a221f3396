"""Object storage unreachable in the middle of an embedding run: the run either retries through
it or fails with a clear error, and readers never see half a run (LATEST keeps its complete run).

The outage is real at the network level: every S3 call goes through a TCP proxy in front of the
S3-protocol server, and the proxy resets its open connections and refuses new ones for a while.
"""

import socket
import threading
import time

import pytest

from artifacts import embeddings, publish, storage
from jobs.embed_catalogue import EmbedConfig, EmbedFailedError
from jobs.embed_catalogue import run as embed
from jobs.export_catalogue import ExportConfig
from jobs.export_catalogue import run as export
from tests.helpers import save_model

pytestmark = [pytest.mark.slow, pytest.mark.fault]


class FlakyProxy:
    """A TCP proxy to ``target`` that can go down (reset + refuse) and come back."""

    def __init__(self, target_port: int):
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.down = threading.Event()
        self.refused = self.forwarded = 0
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.down.is_set():
                self._reset(client)
                self.refused += 1
                continue
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                self._reset(client)
                continue
            with self._lock:
                self._open |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src, dst):
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
                self.forwarded += len(chunk)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with self._lock:
                    self._open.discard(s)
                try:
                    s.close()
                except OSError:
                    pass

    @staticmethod
    def _reset(s: socket.socket):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST on close
        s.close()

    def outage(self):
        self.down.set()
        with self._lock:
            victims, self._open = list(self._open), set()
        for s in victims:
            try:
                self._reset(s)
            except OSError:
                pass

    def restore(self):
        self.down.clear()

    def close(self):
        self.listener.close()


def test_storage_outage_mid_run_never_half_publishes(s3_bucket, s3_server, ray_local, tiny_fashion_mnist,
                                                       tmp_path, monkeypatch):
    root = storage.join(s3_bucket, "vitrine")
    models = storage.join(root, "models")
    save_model(models, "cnn-outage")
    local = tmp_path / "catalogue"
    export(ExportConfig(split="train", out=str(local), data=str(tiny_fashion_mnist)))
    cat = storage.join(s3_bucket, "shop")
    storage.upload_dir(local, cat)
    runs = embeddings.model_runs_uri(root, "cnn-outage")
    first = embed(EmbedConfig(catalogue=cat, model=models, out=root))
    assert first.published and first.counts["total"] == 600

    proxy = FlakyProxy(int(s3_server.rsplit(":", 1)[1]))
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{proxy.port}")  # the driver and the workers
    outcome: dict = {}

    def second_run():
        try:
            outcome["result"] = embed(EmbedConfig(catalogue=cat, model=models, out=root, full=True,
                                                  local_max_items=0, batch_size=8, max_actors=1))
        except Exception as exc:  # what a scheduler would see
            outcome["error"] = exc

    worker = threading.Thread(target=second_run)
    worker.start()
    deadline = time.monotonic() + 120
    while proxy.forwarded < 200_000 and worker.is_alive():  # well into reading the catalogue
        assert time.monotonic() < deadline, "the run never got going"
        time.sleep(0.05)
    assert worker.is_alive(), f"the run finished before the outage: {outcome}"
    proxy.outage()
    time.sleep(8)
    proxy.restore()
    worker.join(300)
    proxy.close()
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)  # check directly against the server
    assert not worker.is_alive()
    assert proxy.refused > 0, "nothing tried to reach storage during the outage"

    latest = publish.latest_id(runs)
    if "error" in outcome:  # failed: clearly, and the complete previous run stays the published one
        message = str(outcome["error"])
        assert isinstance(outcome["error"], EmbedFailedError), message
        assert "NOT published" in message and first.run_id in message and "connect" in message.lower(), message
        assert latest == first.run_id
    else:  # retried through it: the new run is complete, every item exactly once
        result = outcome["result"]
        assert result.published and latest == result.run_id and result.counts["failed"] == 0
    table = embeddings.read_table(publish.artifact_uri(runs, latest), columns=["item_id"])
    ids = table.column("item_id").to_pylist()
    assert len(ids) == len(set(ids)) == 600
    # Whatever the run left behind, only runs with a manifest are complete; LATEST points at one.
    assert storage.exists(storage.join(publish.artifact_uri(runs, latest), embeddings.MANIFEST))
    print("outcome:", "error: " + str(outcome.get("error"))[:300] if "error" in outcome else "retried and published",
          f"; refused {proxy.refused} connections during the outage")
