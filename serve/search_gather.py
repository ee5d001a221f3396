"""Concurrent ``POST /v1/search`` requests answered together.

Every hop to another deployment costs more CPU than the work it carries (docs/BENCHMARKS.md,
"Serving"), so the ingress gathers the uploads of the requests in flight (``@serve.batch`` on
``Ingress._gathered``) and answers them with one preprocessing call in a worker thread, one
Classifier call and one call per Search slot, whatever the number of requests. Each request keeps
the version it arrived with (requests of two versions in one batch are answered per version) and
its own outcome: an unusable upload, a blank image or a failed group is that request's error,
never its neighbours'.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from starlette.concurrency import run_in_threadpool

from artifacts.preprocess import ImageDecodeError, PreprocessSpec, preprocess_many

from . import versions
from .errors import ApiError
from .fanout import SearchSlots, call

BLANK = "the model sees no features in this image (blank?), nothing to compare"


@dataclass(frozen=True)
class SearchQuery:
    data: bytes  # the upload's image bytes, as received
    version: versions.ServingVersion  # the version the request arrived with
    k: int
    wanted: str  # "auto", "all" or a category name, already checked against the version


@dataclass
class SearchAnswer:
    probabilities: np.ndarray | None = None
    category: str | None = None  # the category searched (None: all)
    predicted: str = ""
    hits: list[dict] | None = None
    error: BaseException | None = None  # raised by the request that sent this query


def category_for(v: versions.ServingVersion, wanted: str, predicted: str | None) -> str | None:
    """What ``category=`` names: ``auto`` → the predicted class (when the index has it), ``all`` → None."""
    if wanted == "auto":
        return predicted if predicted in v.categories else None
    return None if wanted == "all" else wanted


def _decode_error(reason: str) -> ImageDecodeError:
    # preprocess_many keeps decode_image's reasons; its size refusals are the ones that read so.
    return ImageDecodeError(reason, too_large=reason.startswith("image too large"))


async def answer_all(queries: list[SearchQuery], classifier, slots: SearchSlots, max_pixels: int
                     ) -> list[SearchAnswer]:
    """One :class:`SearchAnswer` per query, in order."""
    answers = [SearchAnswer() for _ in queries]
    groups: dict[tuple, list[int]] = {}
    for i, q in enumerate(queries):
        groups.setdefault(q.version.key, []).append(i)
    for rows in groups.values():  # normally one; two while a new version rolls out
        try:
            await _answer_group([queries[i] for i in rows], [answers[i] for i in rows], classifier, slots,
                                max_pixels)
        except Exception as exc:  # the group's model or index failed: its requests fail, not the others
            for i in rows:
                if answers[i].error is None and answers[i].hits is None:
                    answers[i].error = exc
    return answers


async def _answer_group(queries: list[SearchQuery], answers: list[SearchAnswer], classifier, slots: SearchSlots,
                        max_pixels: int) -> None:
    v = queries[0].version
    spec = PreprocessSpec.from_dict(v.preprocessing)
    # One worker-thread hop for every upload: decoding must stay off the event loop, and a batch
    # of canonical images is preprocessed in one vectorised pass (artifacts/preprocess.py).
    pixels, reasons = await run_in_threadpool(preprocess_many, [q.data for q in queries], spec,
                                              max_pixels=max_pixels)
    good = [i for i, r in enumerate(reasons) if r is None]
    for i, reason in enumerate(reasons):
        if reason is not None:
            answers[i].error = _decode_error(reason)
    if not good:
        return
    out = await call(classifier.predict_many, pixels[good] if len(good) < len(queries) else pixels, v.model_id)
    if "error" in out:
        raise ApiError(503, out["error"])
    searched = []
    for j, i in enumerate(good):
        a, probabilities = answers[i], out["probabilities"][j]
        a.probabilities = probabilities
        a.predicted = v.class_names[int(np.argmax(probabilities))]
        a.category = category_for(v, queries[i].wanted, a.predicted)
        if out["zero"][j]:
            a.error = ApiError(422, BLANK)
        else:
            searched.append((i, j))
    if not searched:
        return
    embeddings = out["embeddings"][[j for _, j in searched]]
    hits = await slots.search_many(v, embeddings, [queries[i].k for i, _ in searched],
                                   [answers[i].category for i, _ in searched])
    for (i, _), found in zip(searched, hits):
        answers[i].hits = found


def above(hits: list[dict], threshold: float) -> list[dict]:
    # On the similarity the client sees (rounded to 0.01), so every hit shown is >= the threshold.
    return [h for h in hits if h["similarity"] >= threshold] if threshold > 0 else hits


def with_urls(hits: list[dict]) -> list[dict]:
    return [{**h, "image_url": f"/v1/items/{h['item_id']}/image"} for h in hits]
