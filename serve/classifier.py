"""Classifier deployment: model inputs → class probabilities and the unit-length embedding.

Concurrent ``/v1/classify`` requests are batched into one forward pass (``@serve.batch``); the
ingress gathers concurrent ``/v1/search`` requests itself and sends their images in one
``predict_many`` call. Each call names the model version it was started with, and the replica
keeps the last few versions loaded.
"""

from __future__ import annotations

import asyncio
import logging
import math

import numpy as np
from ray import serve

from artifacts import model_artifact, publish
from artifacts.logs import setup_logging

from .version_cache import VersionCache

log = logging.getLogger("vitrine.serve")


def _replica_cpus() -> int:
    import ray

    try:
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 0.0)
    except Exception:
        cpus = 0.0
    return max(1, math.ceil(cpus))


@serve.deployment(name="Classifier")
class Classifier:
    def __init__(self, storage_root: str, keep: int = 2, threads: int = 0):
        setup_logging()
        from artifacts.inference import configure_tensorflow

        self.threads = threads or _replica_cpus()
        configure_tensorflow(self.threads)
        self.models_uri = model_artifact.models_root(storage_root)
        self.models: VersionCache = VersionCache(self._load, keep=keep, what="model")
        # Built on the first POST /v1/explain of a version: replicas that never explain never load it.
        self.explainers: VersionCache = VersionCache(self._load_explainer, keep=keep, what="explainer")

    def reconfigure(self, config: dict) -> None:
        """``user_config``: batching knobs, changeable without restarting replicas."""
        if "max_batch_size" in config:
            self._predict_batch.set_max_batch_size(int(config["max_batch_size"]))
        if "batch_wait_timeout_s" in config:
            self._predict_batch.set_batch_wait_timeout_s(float(config["batch_wait_timeout_s"]))

    def _load(self, model_id: str):
        from artifacts.inference import ModelRunner

        runner = ModelRunner(publish.artifact_uri(self.models_uri, model_id))
        log.info("classifier replica loaded model %s (dim %d, %d TF threads)", model_id, runner.dim, self.threads)
        return runner

    def _load_explainer(self, model_id: str):
        from artifacts.explain import load_explainer

        return load_explainer(publish.artifact_uri(self.models_uri, model_id))

    async def explain(self, pixels: np.ndarray, model_id: str, method: str) -> dict:
        """One preprocessed image → ``{"heatmap" (the input's height x width, in [0, 1]),
        "class_index", "probabilities", "layer"}`` for the predicted class (artifacts/explain.py),
        or ``{"error", "status"}``: 422 when the model cannot be explained so, 503 when it cannot load."""
        try:
            explainer = await self.explainers.get(model_id)
        except Exception as exc:
            return {"error": f"model {model_id} unavailable for explanations: {exc}", "status": 503}
        try:
            e = (await asyncio.to_thread(explainer.explain, pixels, method))[0]
        except ValueError as exc:
            return {"error": f"cannot explain with {method}: {exc}", "status": 422}
        return {"heatmap": e.heatmap, "class_index": e.class_index, "probabilities": e.probabilities, "layer": e.layer}

    async def warm(self, model_id: str) -> dict:
        runner = await self.models.get(model_id)
        return {"model_id": runner.model_id, "embedding_dim": runner.dim, "classes": runner.class_names}

    async def predict(self, pixels: np.ndarray, model_id: str) -> dict:
        """One preprocessed image → ``{"probabilities", "embedding", "model_id"}`` (or ``{"error"}``)."""
        return await self._predict_batch(pixels, model_id)

    async def predict_many(self, pixels: np.ndarray, model_id: str) -> dict:
        """A batch of preprocessed images (already one array: the images of one /v1/embed or
        /v1/search/batch request, or the uploads of the /v1/search requests the ingress gathered)
        → ``{"embeddings", "probabilities", "zero"}``, or ``{"error"}`` when the model cannot be
        loaded (the ingress answers 503)."""
        return await self._predict_arrays(pixels, model_id)

    # No wait: calls that arrive while a forward pass runs (the ingress's gathered batches are
    # small when requests trickle in through Serve's proxy) share the next pass.
    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.0)
    async def _predict_arrays(self, arrays: list[np.ndarray], model_ids: list[str]) -> list[dict]:
        results: list[dict] = [{} for _ in arrays]
        for model_id in dict.fromkeys(model_ids):
            rows = [i for i, m in enumerate(model_ids) if m == model_id]
            try:
                runner = await self.models.get(model_id)
                out = await asyncio.to_thread(runner, np.concatenate([arrays[i] for i in rows]))
            except Exception as exc:
                for i in rows:
                    results[i] = {"error": f"model {model_id} unavailable: {exc}"}
                continue
            start = 0
            for i in rows:
                part = slice(start, start + len(arrays[i]))
                start = part.stop
                results[i] = {"embeddings": out.embeddings[part], "probabilities": out.probabilities[part],
                              "zero": out.zero[part]}
        return results

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.004)
    async def _predict_batch(self, pixels: list[np.ndarray], model_ids: list[str]) -> list[dict]:
        results: list[dict] = [{} for _ in pixels]
        for model_id in dict.fromkeys(model_ids):  # normally one; two while a new model rolls out
            rows = [i for i, m in enumerate(model_ids) if m == model_id]
            try:
                runner = await self.models.get(model_id)
                x = np.stack([pixels[i] for i in rows])
                # Off the event loop, so the next batch can gather while this one computes.
                out = await asyncio.to_thread(runner, x)
            except Exception as exc:
                for i in rows:
                    results[i] = {"error": f"model {model_id} unavailable: {exc}"}
                continue
            for j, i in enumerate(rows):
                results[i] = {"model_id": model_id, "probabilities": out.probabilities[j],
                              "embedding": out.embeddings[j], "zero_embedding": bool(out.zero[j])}
        return results
