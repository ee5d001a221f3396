"""Helpers the test modules share (fixtures stay in the conftest files): Fashion-MNIST-format data,
a saved untrained model, a small trained one, catalogue edits, real HTTP with multipart bodies, load under a hot swap,
replica processes, job logs, fuzzing strategies."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import strategies as st
from PIL import Image, ImageOps

from artifacts import catalogue, catalogue_manifest, model_artifact, storage
from artifacts.model_card import ModelCard
from artifacts.preprocess import PreprocessSpec
from jobs.build_index import BuildIndexConfig
from jobs.build_index import run as build_index
from jobs.embed_catalogue import EmbedConfig
from jobs.embed_catalogue import run as embed
from jobs.export_catalogue import category_slug
from serve import deploy
from tune.data.fashion_mnist import CLASS_NAMES

# tests.helpers.clustered: 2,000 unit vectors in 32 dims over 10 categories of these sizes.
CLUSTER_SIZES = [300, 280, 260, 240, 220, 200, 180, 170, 110, 40]
# Index build settings of the tests' HNSW indexes: category "c9" (40 items) is small enough
# (< exact_below) to be searched exactly.
HNSW_TEST_PARAMS = dict(M=16, ef_construction=200, ef=64, exact_below=64, seed=7, num_threads=2)

@contextlib.contextmanager
def environ(**values: str | None):
    """Set (a string) or unset (None) environment variables; put back what was there after."""
    def apply(changes: dict) -> None:
        for key, value in changes.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    saved = {k: os.environ.get(k) for k in values}
    try:
        apply(values)
        yield
    finally:
        apply(saved)


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array in the IDX format (magic 0x08 = unsigned byte)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def synthetic_images(labels: np.ndarray, seed: int) -> np.ndarray:
    """28×28 light-on-dark images whose class decides where a bright block sits and how wide it
    is (3 + class pixels, 8 high): learnable in a few steps, so smoke runs show real learning
    without the real dataset. The width matters for the canonical input (artifacts/preprocess.py),
    which crops to the object and so removes its position: the aspect ratio survives the crop."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 40, size=(len(labels), 28, 28)).astype(np.uint8)
    for i, c in enumerate(labels):
        r, col = divmod(int(c), 5)
        images[i, 4 + r * 12: 12 + r * 12, 1 + col * 3: 4 + col * 3 + int(c)] = 220
    return images


def write_fashion_mnist(directory: Path, train_per_class: int = 60, test_per_class: int = 20) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for prefix, per_class, seed in (("train", train_per_class, 1), ("t10k", test_per_class, 2)):
        labels = np.repeat(np.arange(10, dtype=np.uint8), per_class)
        np.random.default_rng(seed).shuffle(labels)
        (directory / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(synthetic_images(labels, seed))))
        (directory / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels)))
    return directory


GARBAGE = b"this is not an image at all"


def save_model(models_uri: str, model_id: str, seed: int = 0) -> str:
    import keras

    from tune.models import EMBEDDING_LAYER, build_model

    keras.utils.set_random_seed(seed)
    model = build_model("cnn_dropout_1")
    spec = PreprocessSpec.for_input_shape(model.input_shape[1:])
    card = ModelCard(model_id=model_id, architecture="cnn_dropout_1", class_names=list(CLASS_NAMES),
                     input_shape=list(spec.input_shape), preprocessing=spec.to_dict(), embedding_layer=EMBEDDING_LAYER,
                     embedding_dim=int(model.get_layer(EMBEDDING_LAYER).output.shape[-1]),
                     params=int(model.count_params()), created_at="2026-11-28T00:00:00Z",
                     framework={"keras": keras.__version__})
    return model_artifact.save(model, card, models_uri)


def save_trained_model(models_uri: str, model_id: str, data_dir: str, *, architecture: str = "cnn_dropout_1",
                       epochs: int = 8, learning_rate: float = 3e-3, seed: int = 0, **options) -> str:
    """A small model trained for a few epochs on the synthetic tiles of ``data_dir`` (it learns
    them: the class decides where the bright block is), canonical input, saved without LATEST."""
    import keras

    from artifacts import heads
    from artifacts.preprocess import arrays_to_model_input
    from tune.data import fashion_mnist
    from tune.models import EMBEDDING_LAYER, build_model

    keras.utils.set_random_seed(seed)
    ds = fashion_mnist.load(data_dir)
    spec = PreprocessSpec.canonical()
    model = build_model(architecture, **options)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=heads.loss_for(model))
    model.fit(arrays_to_model_input(ds.train_images, spec), ds.train_labels.astype(int), epochs=epochs,
              batch_size=32, verbose=0)
    card = ModelCard(model_id=model_id, architecture=architecture, class_names=list(CLASS_NAMES),
                     input_shape=list(spec.input_shape), preprocessing=spec.to_dict(), embedding_layer=EMBEDDING_LAYER,
                     embedding_dim=int(model.get_layer(EMBEDDING_LAYER).output.shape[-1]),
                     params=int(model.count_params()), framework={"keras": keras.__version__})
    return model_artifact.save(model, card, models_uri, make_latest=False)


def by_id(table: pa.Table) -> dict[str, dict]:
    return {r["item_id"]: r for r in table.to_pylist()}


def mirrored_png(raw: bytes) -> bytes:
    """Other content for the same item (not inverted: preprocessing undoes an inversion)."""
    buf = io.BytesIO()
    ImageOps.mirror(Image.open(io.BytesIO(raw))).save(buf, format="PNG")
    return buf.getvalue()


def edit_catalogue(cat: Path, *, replace: dict | None = None, delete=(), add: dict | None = None) -> None:
    """Change images the way a shop would, keeping the manifest's hashes true."""
    manifest = pq.read_table(cat / "manifest.parquet")
    rows = []
    for r in manifest.to_pylist():
        path = cat / r["image_uri"]
        if r["item_id"] in delete:
            path.unlink()
            continue
        if r["item_id"] in (replace or {}):
            data = replace[r["item_id"]]
            path.write_bytes(data(path.read_bytes()) if callable(data) else data)
            r["content_sha256"] = catalogue.content_sha256(path.read_bytes())
        rows.append(r)
    for item_id, (category, data) in (add or {}).items():
        rel = f"{category_slug(category)}/{item_id}.png"
        (cat / rel).write_bytes(data)
        rows.append({"item_id": item_id, "image_uri": rel, "category": category, "label": CLASS_NAMES.index(category),
                     "content_sha256": catalogue.content_sha256(data)})
    catalogue_manifest.write_manifest(pa.Table.from_pylist(rows, schema=manifest.schema), str(cat / "manifest.parquet"))


def publish_version(root: str, model_id: str, *, seed: int = 0) -> str:
    """Save a model, embed the store's catalogue with it and publish the index; returns its id."""
    models = storage.join(root, "models")
    save_model(models, model_id, seed=seed)
    run = embed(EmbedConfig(catalogue=storage.join(root, "catalogue"), model=storage.join(models, model_id),
                            out=root, local_max_items=10_000, full=True))
    assert run.published
    result = build_index(BuildIndexConfig(embeddings=run.run_uri, out=root, storage=root, recall_queries=100))
    assert result.published
    return result.index_id


@dataclass
class Response:
    status: int
    body: bytes
    headers: dict

    def json(self):
        return json.loads(self.body)


def http(url: str, data: bytes | None = None, *, method: str | None = None, headers: dict | None = None,
         timeout: float = 30.0) -> Response:
    """A real HTTP request; error statuses come back as responses, not exceptions."""
    req = urllib.request.Request(url, data=data, headers=headers or {},
                                 method=method or ("POST" if data is not None else "GET"))
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return Response(resp.status, resp.read(), dict(resp.headers))
    except urllib.error.HTTPError as exc:
        return Response(exc.code, exc.read(), dict(exc.headers))


def multipart_files(files: list[tuple[str, bytes]], field: str = "file",
                    content_type: str = "image/png") -> tuple[bytes, str]:
    """A multipart/form-data body with one ``field`` part per ``(filename, data)``, and its type."""
    boundary = "vitrine-test-boundary-7f3a"
    body = b"".join((f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
                     f"Content-Type: {content_type}\r\n\r\n").encode() + data + b"\r\n" for filename, data in files)
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def multipart(field: str, filename: str, data: bytes, content_type: str = "image/png") -> tuple[bytes, str]:
    return multipart_files([(filename, data)], field, content_type)


# API keys of the test deployments (serve/auth.py): one per scope.
EMBED_KEY = "test-embed-key-7f3a-0123456789abcdef"


SEARCH_KEY = "test-search-key-7f3a-0123456789abcdef"


EMBED_AUTH = {"Authorization": f"Bearer {EMBED_KEY}"}


class Load:
    """Closed-loop search requests from a few threads, recording every answer."""

    def __init__(self, url: str, image: bytes, threads: int = 3):
        self.url, self.image = url, image
        self.answers: list[tuple[int, str | None, str | None]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(threads)]

    def _loop(self):
        while not self._stop.is_set():
            r = http(self.url + "/v1/search?k=5&category=all", self.image, timeout=60)
            body = r.json() if r.status == 200 else {}
            self.answers.append((r.status, body.get("model_id"), body.get("index_id")))

    def __enter__(self):
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for t in self._threads:
            t.join(90)

    def served(self) -> list[tuple[str, str]]:
        """The (model, index) pairs seen, in order of first appearance."""
        return list(dict.fromkeys((m, i) for s, m, i in self.answers if s == 200))


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def replica_pids(deployment: str) -> set[int]:
    """PIDs of this app's live replica processes of a deployment (Ray titles them by name)."""
    tag = f"ServeReplica:{deploy.APP_NAME}:{deployment}".encode()
    pids = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if tag in (proc / "cmdline").read_bytes():
                    pids.add(int(proc.name))
            except OSError:
                pass
    return pids


def last_json(logs: str):
    """The JSON document a job printed last (`--json`), among the other lines of its logs."""
    decoder = json.JSONDecoder()
    for start in reversed([i for i, c in enumerate(logs) if c in "[{" and (i == 0 or logs[i - 1] == "\n")]):
        try:
            return decoder.raw_decode(logs, start)[0]
        except json.JSONDecodeError:
            continue
    raise AssertionError(f"no JSON in the job's logs:\n{logs[-3000:]}")


FORMATS = ["PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF"]
# Modes each format can write (Pillow converts or refuses the others).
MODES = {"PNG": ["1", "L", "LA", "P", "RGB", "RGBA", "I;16"], "JPEG": ["L", "RGB", "CMYK"],
         "GIF": ["L", "P"], "WEBP": ["RGB", "RGBA"], "BMP": ["1", "L", "P", "RGB"],
         "TIFF": ["1", "L", "P", "RGB", "RGBA", "CMYK", "I;16", "F"]}


@st.composite
def encoded_images(draw) -> bytes:
    """A small valid image file: random pixels, any mode its format writes, sometimes animated."""
    fmt = draw(st.sampled_from(FORMATS))
    mode = draw(st.sampled_from(MODES[fmt]))
    w, h = draw(st.integers(1, 48)), draw(st.integers(1, 48))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    base = Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8), "RGB")
    img = base.convert("RGBA").convert(mode) if mode in ("LA", "RGBA") else base.convert(mode)
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65536, size=(h, w), dtype=np.uint16))
    if mode == "F":
        img = Image.fromarray(rng.normal(100, 80, size=(h, w)).astype(np.float32))
    buf = io.BytesIO()
    kwargs = {}
    if fmt in ("GIF", "WEBP", "PNG") and draw(st.booleans()):
        kwargs = {"save_all": True, "append_images": [img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]}
    if fmt == "JPEG":
        kwargs["quality"] = draw(st.integers(5, 95))
        kwargs["progressive"] = draw(st.booleans())
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


@st.composite
def mutated(draw, source) -> bytes:
    """``source`` bytes after a few byte flips, truncations, insertions, deletions and
    duplications: the damage a bad network, a bad client or an attacker does."""
    data = bytearray(draw(source))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete", "duplicate"]))
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":  # header fields: sizes to 0 or 0xff.., counts, offsets
            data[i] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, 0x01]))
        elif op == "truncate":
            del data[i:]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=64))
        elif op == "delete":
            del data[i:i + draw(st.integers(1, 64))]
        else:
            j = draw(st.integers(i, min(len(data), i + 256)))
            data[j:j] = data[i:j]
    return bytes(data)


def clustered(seed: int = 0, dim: int = 32):
    """Ten categories (``CLUSTER_SIZES``), each a cloud of three sub-clusters: ids, categories and
    unit vectors."""
    from artifacts.vector_search import l2_normalise

    n = sum(CLUSTER_SIZES)
    rng = np.random.default_rng(seed)
    cats = np.repeat(np.arange(10), CLUSTER_SIZES)
    centres = rng.normal(size=(10, dim)) * 1.5
    sub = rng.normal(size=(10, 3, dim))
    vectors = centres[cats] + sub[cats, rng.integers(0, 3, n)] + 0.8 * rng.normal(size=(n, dim))
    perm = rng.permutation(n)
    ids = [f"item-{i:05d}" for i in range(n)]
    return ids, [f"c{c}" for c in cats[perm]], l2_normalise(vectors[perm])


def perturbed(vectors, seed=1, scale=0.3):
    """Unit vectors near ``vectors``: queries that are not catalogue items."""
    from artifacts.vector_search import l2_normalise

    rng = np.random.default_rng(seed)
    return l2_normalise(vectors + scale * rng.normal(size=vectors.shape) / np.sqrt(vectors.shape[1]) * 3)


def write_run(root: str, model_id: str, run_id: str, ids, cats, vectors, *, make_latest: bool = True,
              hashes=None) -> str:
    """An embeddings run in the contract's layout: data/part-0.parquet, manifest.json last, LATEST."""
    from datetime import datetime, timezone

    from artifacts import embeddings, publish

    dim = vectors.shape[1]
    n = len(ids)
    table = pa.table({
        "item_id": pa.array(ids, pa.string()),
        "category": pa.array(cats, pa.string()),
        "sub_category": pa.nulls(n, pa.string()),
        "image_uri": pa.array([f"catalogue/{c}/{i}.png" for i, c in zip(ids, cats)], pa.string()),
        "content_sha256": pa.array(list(hashes) if hashes is not None else ["0" * 64] * n, pa.string()),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.astype(np.float32).ravel(), pa.float32()), dim),
        "predicted_category": pa.array(cats, pa.string()),
        "confidence": pa.array(np.ones(n, np.float32)),
        "model_id": pa.array([model_id] * n, pa.string()),
        "embedded_at": pa.array([datetime.now(timezone.utc)] * n, pa.timestamp("ms", tz="UTC")),
    }, schema=embeddings.embeddings_schema(dim))
    runs = embeddings.model_runs_uri(root, model_id)
    run_uri = publish.artifact_uri(runs, run_id)
    fs, path = storage.resolve(storage.join(run_uri, embeddings.DATA_DIR, "part-0.parquet"))
    if not storage.is_remote(run_uri):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(table, path, filesystem=fs)
    manifest = embeddings.RunManifest(run_id=run_id, model_id=model_id, catalogue="catalogue", embedding_dim=dim,
                                      counts={"total": n})
    storage.write_text(storage.join(run_uri, embeddings.MANIFEST), manifest.to_json())
    if make_latest:
        publish.publish(runs, run_id, manifest_name=embeddings.MANIFEST)
    return run_uri
