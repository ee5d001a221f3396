"""The two stages of the embedding job: catalogue rows → decoded model inputs → embeddings.

Plain functions of Arrow tables, so Ray Data's tasks and actors, the job's in-process path for
small increments, and the tests all run exactly the same code.
"""

from __future__ import annotations

import logging
import time

from artifacts.logs import setup_logging

log = logging.getLogger("vitrine.embed")


def decode_batch(batch, *, spec: dict, io_threads: int = 16):
    """Catalogue rows → rows with model-ready ``pixels`` (flat fixed-size float32 lists) and an
    ``error`` (null when the image is usable). Never raises for a bad image."""
    import numpy as np
    import pyarrow as pa

    from artifacts import catalogue
    from artifacts.preprocess import ImageDecodeError, PreprocessSpec, preprocess_bytes

    spec_ = PreprocessSpec.from_dict(spec)
    size = spec_.height * spec_.width * spec_.channels
    uris = batch.column("image_uri").to_pylist()
    hashes = batch.column("content_sha256").to_pylist()
    n = len(uris)
    pixels = np.zeros((n, size), np.float32)
    errors: list[str | None] = [None] * n
    for i, data in enumerate(catalogue.read_many(uris, threads=io_threads)):
        if isinstance(data, Exception):
            errors[i] = f"cannot read image: {data}"
            continue
        digest = catalogue.content_sha256(data)
        if hashes[i] is None:
            hashes[i] = digest
        elif hashes[i] != digest:
            errors[i] = f"content_sha256 mismatch: the catalogue says {hashes[i]}, the file hashes to {digest}"
            continue
        try:
            pixels[i] = preprocess_bytes(data, spec_).reshape(-1)
        except ImageDecodeError as exc:
            errors[i] = exc.reason
        except Exception as exc:  # one odd image must not fail the batch
            errors[i] = f"cannot preprocess image: {type(exc).__name__}: {exc}"
    return pa.table({
        "item_id": batch.column("item_id"),
        "image_uri": batch.column("image_uri"),
        "category": batch.column("category"),
        "content_sha256": pa.array(hashes, pa.string()),
        "pixels": pa.FixedSizeListArray.from_arrays(pa.array(pixels.reshape(-1)), size),
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
        import pyarrow as pa
        import pyarrow.compute as pc

        from artifacts.embeddings import embeddings_schema

        n = batch.num_rows
        error = batch.column("error").combine_chunks()
        ok = np.asarray(pc.is_null(error).to_numpy(zero_copy_only=False), dtype=bool)
        errors = error.to_pylist()
        emb = np.zeros((n, self.dim), np.float32)
        predicted = [""] * n
        confidence = np.zeros(n, np.float32)
        if ok.any():
            flat = batch.column("pixels").combine_chunks().flatten().to_numpy(zero_copy_only=False)
            x = flat.reshape(n, *self.shape)[ok]
            out = self.runner(x)
            probs, zero = out.probabilities, out.zero
            idx = np.flatnonzero(ok)
            emb[idx] = out.embeddings
            top = probs.argmax(axis=1)
            confidence[idx] = probs[np.arange(len(top)), top]
            for j, i in enumerate(idx):
                if zero[j]:
                    errors[i] = "the model's embedding of this image is all zeros (no features to compare)"
                else:
                    predicted[i] = self.class_names[int(top[j])]
        now = np.datetime64(int(time.time() * 1000), "ms")
        schema = embeddings_schema(self.dim)
        return pa.table({
            "item_id": batch.column("item_id"),
            "category": batch.column("category"),
            "image_uri": batch.column("image_uri"),
            "content_sha256": batch.column("content_sha256"),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), self.dim),
            "predicted_category": pa.array(predicted, pa.string()),
            "confidence": pa.array(confidence),
            "model_id": pa.array([self.model_id] * n, pa.string()),
            "embedded_at": pa.array(np.full(n, now)).cast(schema.field("embedded_at").type),
            "error": pa.array(errors, pa.string()),
        })
