"""``POST /v1/explain`` in the ingress: the upload read into the model input and the region of the
image that input shows (the one preprocessing function), the heatmap asked of the Classifier
(which holds the model and takes the gradients), and the heatmap drawn over the upload.

Reading and drawing run off the event loop, as the other routes' image work does."""

from __future__ import annotations

import base64
from typing import Annotated, Literal

import numpy as np
from fastapi import Query
from starlette.concurrency import run_in_threadpool

from artifacts import explain
from artifacts.preprocess import PreprocessSpec

from . import versions
from .errors import ApiError
from .fanout import call

# The overlay is drawn at the upload's size up to this longer side: enough for a page, and a
# phone photo's heatmap does not become megabytes of base64.
OVERLAY_MAX_SIDE = 512
EXPLAIN_METHOD = Annotated[Literal["gradcam", "saliency"], Query(
    description="`gradcam` (the last convolutional layer's Grad-CAM) or `saliency` (input gradients).")]


def _b64_png(pixels: np.ndarray) -> str:
    return base64.b64encode(explain.png_bytes(pixels)).decode("ascii")


def _draw(upload: explain.Upload, heatmap: np.ndarray) -> dict:
    shown = explain.upload_overlay(upload, heatmap, OVERLAY_MAX_SIDE)
    return {"overlay_png": _b64_png(shown), "overlay_size": [shown.shape[1], shown.shape[0]],
            "heatmap_png": _b64_png(np.rint(heatmap * 255).astype(np.uint8))}


async def explain_upload(classifier, data: bytes, v: versions.ServingVersion, method: str, max_pixels: int,
                         classes) -> dict:
    """The body of an answer (:class:`serve.schemas.ExplainResponse` but ``took_ms``); ``classes``
    ranks the probabilities as every route does. Unusable images raise ImageDecodeError (400/413)."""
    spec = PreprocessSpec.from_dict(v.preprocessing)
    upload = await run_in_threadpool(explain.read_upload, data, spec, max_pixels=max_pixels)
    out = await call(classifier.explain, upload.pixels, v.model_id, method)
    if "error" in out:
        raise ApiError(out.get("status", 503), out["error"])
    drawn = await run_in_threadpool(_draw, upload, out["heatmap"])
    i, probs = out["class_index"], out["probabilities"]
    return {"model_id": v.model_id, "predicted": v.class_names[i], "probability": round(float(probs[i]), 6),
            "classes": classes(v, probs), "method": method, "layer": out["layer"], "empty": not out["heatmap"].any(),
            "heatmap_shape": list(out["heatmap"].shape), "input_box": [round(float(b), 2) for b in upload.box],
            "input_angle": round(float(upload.turn[0]), 2), **drawn}
