"""The stages of the embedding job: catalogue rows → verified bytes → model inputs → embeddings.

Plain functions of Arrow tables, so Ray Data's tasks and actors, the job's in-process path for
small increments, the path through a running service (:mod:`embedding.service_client`) and the tests
all run exactly the same code.
"""

from __future__ import annotations

import logging
import time

from artifacts.logs import setup_logging

log = logging.getLogger("vitrine.embed")
ZERO_EMBEDDING = "the model's embedding of this image is all zeros (no features to compare)"


def read_verified(batch, *, io_threads: int = 16):
    """The bytes of each row's image, checked against its ``content_sha256``.

    Returns ``(datas, hashes, errors)``: ``datas[i]`` is None where ``errors[i]`` says why; a
    missing hash is filled in from the bytes. Never raises for a bad item.
    """
    from artifacts import catalogue

    uris = batch.column("image_uri").to_pylist()
    hashes = batch.column("content_sha256").to_pylist()
    datas: list[bytes | None] = [None] * len(uris)
    errors: list[str | None] = [None] * len(uris)
    for i, data in enumerate(_read_through_outages(uris, io_threads)):
        if isinstance(data, Exception):
            errors[i] = f"cannot read image: {data}"
            continue
        digest = catalogue.content_sha256(data)
        if hashes[i] is None:
            hashes[i] = digest
        elif hashes[i] != digest:
            errors[i] = f"content_sha256 mismatch: the catalogue says {hashes[i]}, the file hashes to {digest}"
            continue
        datas[i] = data
    return datas, hashes, errors


def _read_through_outages(uris: list[str], io_threads: int, waits=(1, 2, 4, 8, 15)) -> list:
    """``image_bytes.read_many``, with the reads that failed because storage was unreachable tried
    again (30 s in all): an outage must not turn good items into failed rows of a published run.
    Still unreachable after that: raise, so the run fails and publishes nothing."""
    import time

    from artifacts import image_bytes, storage

    out = image_bytes.read_many(uris, threads=io_threads)
    for wait in waits:
        again = [i for i, d in enumerate(out) if isinstance(d, Exception) and storage.is_transient(d)]
        if not again:
            return out
        time.sleep(wait)
        for i, d in zip(again, image_bytes.read_many([uris[i] for i in again], threads=io_threads)):
            out[i] = d
    still = [d for d in out if isinstance(d, Exception) and storage.is_transient(d)]
    if still:
        raise storage.StorageError(f"storage unreachable: {len(still)} image reads still failing after "
                                   f"{sum(waits)} s of retries: {still[0]}")
    return out


def _item_columns(batch, hashes) -> dict:
    """The catalogue columns every stage passes on, with the hashes as verified."""
    import pyarrow as pa

    sub = (batch.column("sub_category") if "sub_category" in batch.column_names
           else pa.nulls(batch.num_rows, pa.string()))
    return {"item_id": batch.column("item_id"), "category": batch.column("category"), "sub_category": sub,
            "image_uri": batch.column("image_uri"), "content_sha256": pa.array(hashes, pa.string())}


def decode_batch(batch, *, spec: dict, io_threads: int = 16):
    """Catalogue rows → rows with model-ready ``pixels`` (flat fixed-size float32 lists) and an
    ``error`` (null when the image is usable). Never raises for a bad image."""
    import pyarrow as pa

    from artifacts.preprocess import PreprocessSpec, preprocess_many

    spec_ = PreprocessSpec.from_dict(spec)
    size = spec_.height * spec_.width * spec_.channels
    datas, hashes, errors = read_verified(batch, io_threads=io_threads)
    inputs, reasons = preprocess_many(datas, spec_)
    pixels = inputs.reshape(len(datas), size)
    errors = [e if e is not None else r for e, r in zip(errors, reasons)]
    return pa.table({
        **_item_columns(batch, hashes),
        "pixels": pa.FixedSizeListArray.from_arrays(pa.array(pixels.reshape(-1)), size),
        "error": pa.array(errors, pa.string()),
    })


def embedded_rows(batch, hashes, errors, done, embeddings, probabilities, zero, *, model_id: str,
                  class_names, dim: int):
    """The job's output rows: ``batch``'s catalogue columns plus, for the rows ``done`` (indices,
    in order of ``embeddings``/``probabilities``/``zero``), the model's results; every other row
    keeps its ``errors`` entry. A row whose embedding is all zeros becomes an error."""
    import numpy as np
    import pyarrow as pa

    from artifacts.embeddings import embeddings_schema

    n = batch.num_rows
    errors = list(errors)
    emb = np.zeros((n, dim), np.float32)
    predicted = [""] * n
    confidence = np.zeros(n, np.float32)
    done = np.asarray(done, dtype=np.int64)
    if len(done):
        emb[done] = embeddings
        top = probabilities.argmax(axis=1)
        confidence[done] = probabilities[np.arange(len(top)), top]
        for j, i in enumerate(done):
            if zero[j]:
                errors[i] = ZERO_EMBEDDING
            else:
                predicted[i] = class_names[int(top[j])]
    now = np.datetime64(int(time.time() * 1000), "ms")
    schema = embeddings_schema(dim)
    return pa.table({
        **_item_columns(batch, hashes),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), dim),
        "predicted_category": pa.array(predicted, pa.string()),
        "confidence": pa.array(confidence),
        "model_id": pa.array([model_id] * n, pa.string()),
        "embedded_at": pa.array(np.full(n, now)).cast(schema.field("embedded_at").type),
        "error": pa.array(errors, pa.string()),
    })


class Embedder:
    """The model, loaded once per actor: decoded rows → L2-normalised embeddings, predicted
    category and confidence (rows that arrive with an error pass through with it)."""

    def __init__(self, model_uri: str, threads: int = 1):
        setup_logging()
        from artifacts.inference import ModelRunner, configure_tensorflow

        configure_tensorflow(threads)
        self.runner = ModelRunner(model_uri)
        self.card = self.runner.card
        self.model_id = self.runner.model_id
        self.dim = self.runner.dim
        self.shape = self.runner.shape
        self.class_names = self.runner.class_names
        log.info("embedder ready: model %s (dim %d) from %s, %s TF threads", self.model_id, self.dim,
                 model_uri, threads or "default")

    def __call__(self, batch):
        import numpy as np
        import pyarrow.compute as pc

        n = batch.num_rows
        error = batch.column("error").combine_chunks()
        ok = np.asarray(pc.is_null(error).to_numpy(zero_copy_only=False), dtype=bool)
        done = np.flatnonzero(ok)
        emb = probs = zero = None
        if len(done):
            flat = batch.column("pixels").combine_chunks().flatten().to_numpy(zero_copy_only=False)
            out = self.runner(flat.reshape(n, *self.shape)[ok])
            emb, probs, zero = out.embeddings, out.probabilities, out.zero
        return embedded_rows(batch, batch.column("content_sha256").to_pylist(), error.to_pylist(), done, emb, probs,
                             zero, model_id=self.model_id, class_names=self.class_names, dim=self.dim)
