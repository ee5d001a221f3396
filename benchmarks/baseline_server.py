"""The baseline for ``benchmarks/serve_load.py``: the published visual-search design as one
single-process HTTP server.

    python benchmarks/baseline_server.py --port 8100          # LATEST index of $VITRINE_STORAGE and its model
    curl --data-binary @shoe.png 'http://127.0.0.1:8100/v1/search?k=30'

The published design, per request: decode the upload, run the Keras model on it, take the
predicted class, keep the catalogue vectors of that category, compute the Euclidean distance
from the query to every one of them with numpy, sort, return the top k. Nothing approximate,
no batching, no second process.

To keep it an honest baseline rather than a strawman it gets everything that does not change
that design:
- the same artifacts the Serve app serves: the model the published index was built with
  (``artifacts.model_artifact.load(...).embedding_model()``), and the index's own 60,000
  unit-length vectors and item/category map (``vectors.npy``, ``items.parquet``), so both
  systems rank the same vectors (Euclidean distance between unit vectors ranks exactly as
  cosine similarity does);
- the same decoding and preprocessing (``artifacts.preprocess.preprocess_bytes``);
- TensorFlow threads limited with ``configure_tensorflow`` like the Serve classifier (default:
  every core of the machine, since this process is the whole service);
- the fastest of the three Keras calls on one image (``--infer``, measured at start-up and
  printed; ``predict_on_batch`` wins by far: ``model.predict`` costs ~75-100 ms per call and
  the eager ``model(x)`` ~12 ms, against ~1 ms);
- the catalogue grouped by category once at start-up (a request indexes a ready block instead
  of masking 60,000 rows);
- keep-alive connections (HTTP/1.1) and a thread per connection
  (``http.server.ThreadingHTTPServer``), no access log.

The response has the same shape as the Serve app's ``/v1/search`` (predicted class, class
probabilities, results with item id, category, distance and image URL).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

INFER_MODES = ("predict_on_batch", "call", "predict")


class BaselineSearch:
    """Model + catalogue vectors grouped by category; ``search(png_bytes, k)`` → response dict."""

    def __init__(self, storage_root: str, index: str = "latest", *, tf_threads: int = 0, infer: str = "auto"):
        from artifacts.inference import configure_tensorflow

        self.tf_threads = tf_threads or os.cpu_count() or 1
        configure_tensorflow(self.tf_threads)  # before TensorFlow's runtime starts
        import numpy as np
        import pyarrow.parquet as pq

        from artifacts import model_artifact, publish, storage
        from artifacts.index_manifest import MANIFEST, IndexManifest

        indexes = storage.join(storage_root, "indexes")
        index_uri = publish.resolve(indexes, manifest_name=MANIFEST) if index == "latest" \
            else publish.artifact_uri(indexes, index)
        manifest = IndexManifest.from_json(storage.read_text(storage.join(index_uri, MANIFEST)))
        self.index_id = manifest.index_id
        with storage.local_copy(index_uri) as local:
            vectors = np.load(local / manifest.files["vectors"], allow_pickle=False)
            items = pq.read_table(local / manifest.files["items"])
        ids = np.asarray(items.column("item_id").to_pylist(), dtype=object)
        cats = np.asarray(items.column("category").to_pylist(), dtype=object)
        # Group the catalogue by category once: (ids, vectors) per category name.
        self.blocks = {}
        for name in sorted({c for c in cats if c is not None}):
            rows = np.flatnonzero(cats == name)
            self.blocks[name] = (ids[rows].tolist(), np.ascontiguousarray(vectors[rows]))
        self.all_ids, self.all_vectors = ids.tolist(), vectors

        loaded = model_artifact.load(publish.artifact_uri(model_artifact.models_root(storage_root),
                                                          manifest.model_id))
        self.model_id = loaded.card.model_id
        self.spec = loaded.card.preprocess_spec
        self.class_names = list(loaded.card.class_names)
        self.model = loaded.embedding_model()
        self.np = np
        x = np.zeros((1, *self.spec.input_shape), np.float32)
        self.timings = {m: self._time(m, x) for m in INFER_MODES}
        self.infer = min(self.timings, key=self.timings.get) if infer == "auto" else infer

    # ------------------------------------------------------------------ model
    def _forward(self, x, mode: str):
        if mode == "predict_on_batch":
            emb, probs = self.model.predict_on_batch(x)
        elif mode == "call":
            emb, probs = (t.numpy() for t in self.model(x, training=False))
        elif mode == "predict":
            emb, probs = self.model.predict(x, verbose=0)
        else:
            raise ValueError(f"unknown --infer {mode!r}; one of {', '.join(INFER_MODES)}")
        return emb, probs

    def _time(self, mode: str, x, n: int = 30) -> float:
        """Median ms of one single-image call (after a warm-up, which also builds the function)."""
        for _ in range(3):
            self._forward(x, mode)
        times = []
        for _ in range(n if mode != "predict" else 5):
            t0 = time.perf_counter()
            self._forward(x, mode)
            times.append(time.perf_counter() - t0)
        return float(sorted(times)[len(times) // 2] * 1000)

    # ------------------------------------------------------------------ search
    def search(self, data: bytes, k: int) -> dict:
        from artifacts.preprocess import preprocess_bytes

        np = self.np
        t0 = time.perf_counter()
        x = preprocess_bytes(data, self.spec)[None]
        emb, probs = self._forward(x, self.infer)
        e, p = emb[0], probs[0]
        norm = float(np.linalg.norm(e))
        q = (e / norm if norm > 1e-12 else e).astype(np.float32)
        order = np.argsort(-p, kind="stable")
        predicted = self.class_names[order[0]]
        ids, block = self.blocks.get(predicted, (self.all_ids, self.all_vectors))
        dist = np.sqrt(((block - q) ** 2).sum(axis=1))  # Euclidean distance to every vector
        top = np.argsort(dist, kind="stable")[:k]  # sort, top k
        return {"model_id": self.model_id, "index_id": self.index_id, "predicted": predicted,
                "classes": [{"name": self.class_names[i], "probability": round(float(p[i]), 6)} for i in order],
                "category": predicted if predicted in self.blocks else None, "k": k,
                "results": [{"item_id": ids[i], "category": predicted, "distance": round(float(dist[i]), 6),
                             "image_url": f"/v1/items/{ids[i]}/image"} for i in top],
                "took_ms": round((time.perf_counter() - t0) * 1000, 2)}


def make_handler(engine: BaselineSearch, max_upload: int = 10 * 1024 * 1024, max_k: int = 200):
    from artifacts.preprocess import ImageDecodeError

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the Serve proxy offers
        # Headers and body go out in two writes; with Nagle on, the second waits for the client's
        # delayed ACK (~40 ms a request on Linux). Off, as every production server has it.
        disable_nagle_algorithm = True

        def log_message(self, *args):  # no access log
            pass

        def _send(self, status: int, payload: dict) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if urlsplit(self.path).path == "/healthz":
                self._send(200, {"status": "ok", "model_id": engine.model_id, "index_id": engine.index_id,
                                 "infer": engine.infer})
            else:
                self._send(404, {"error": "not found", "status": 404})

        def do_POST(self):
            url = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            data = self.rfile.read(length) if length else b""
            if url.path != "/v1/search":
                self._send(404, {"error": "not found", "status": 404})
                return
            if length > max_upload:
                self._send(413, {"error": "upload too large", "status": 413})
                return
            try:
                k = int(parse_qs(url.query).get("k", ["30"])[0])
                if not 1 <= k <= max_k:
                    raise ValueError
            except ValueError:
                self._send(400, {"error": f"k must be an integer between 1 and {max_k}", "status": 400})
                return
            try:
                self._send(200, engine.search(data, k))
            except ImageDecodeError as exc:
                self._send(400, {"error": f"not a usable image: {exc.reason}", "status": 400})
            except Exception as exc:  # noqa: BLE001 -- answer 500 and keep serving
                self._send(500, {"error": f"internal error: {type(exc).__name__}: {exc}", "status": 500})

    return Handler


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8100)
    p.add_argument("--storage", default=os.environ.get("VITRINE_STORAGE", str(ROOT / ".vitrine")))
    p.add_argument("--index", default="latest", help='"latest" or an index id')
    p.add_argument("--tf-threads", type=int, default=0, help="TensorFlow intra/inter-op threads (0 = every core)")
    p.add_argument("--infer", default="auto", choices=("auto", *INFER_MODES),
                   help="Keras call per query; auto = the fastest, measured at start-up")
    args = p.parse_args(argv)
    engine = BaselineSearch(args.storage, args.index, tf_threads=args.tf_threads, infer=args.infer)
    server = ThreadingHTTPServer((args.host, args.port), make_handler(engine))
    server.daemon_threads = True
    print(json.dumps({"ready": f"http://{args.host}:{server.server_address[1]}/", "infer": engine.infer,
                      "infer_ms": {k: round(v, 3) for k, v in engine.timings.items()},
                      "tf_threads": engine.tf_threads, "model_id": engine.model_id, "index_id": engine.index_id,
                      "categories": {n: len(b[0]) for n, b in engine.blocks.items()}}), flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
