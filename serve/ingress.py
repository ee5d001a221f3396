"""HTTP ingress: the versioned JSON API and the web page, in front of the two deployments.

A request is decoded and preprocessed here once (the same function as training and embedding),
classified by the Classifier, then searched by Search, both pinned to the version this replica
serves at the moment the request arrived (:mod:`.version_watch` decides which). A sharded index
is served by several Search slots (``search_shards``): a query asks the slots holding its
category (all of them for ``category=all``) and their hits are merged.

Routes are typed (query and path parameters, :mod:`.schemas` response models), so ``/docs``
documents them; uploads are read by :mod:`.uploads` (the body is read here, with limits, not by
FastAPI), several images by :mod:`.image_batch`, keys checked by :mod:`.auth`, catalogue images
streamed by :mod:`.item_images`, and every error answered in :mod:`.errors`' one shape.
"""

# No `from __future__ import annotations`: FastAPI must see `Request` and the parameter types
# themselves in the signatures of these methods, which Serve rewrites into routes.
import json
import logging
import time
import uuid
from pathlib import Path
from typing import Annotated

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import BeforeValidator
from ray import serve
from ray.serve.exceptions import BackPressureError
from starlette.concurrency import run_in_threadpool

from artifacts import catalogue, storage
from artifacts.logs import setup_logging
from artifacts.preprocess import ImageDecodeError, PreprocessSpec, preprocess_bytes

from . import cors, schemas, versions
from .args import AppArgs
from .auth import ApiKeys, AuthError
from .errors import ApiError, error_response, install_error_handlers
from .explanations import EXPLAIN_METHOD, explain_upload
from .fanout import SearchSlots, call
from .image_batch import preprocess_batch
from .search_gather import BLANK, SearchAnswer, SearchQuery, above, answer_all, category_for, with_urls
from .item_images import ItemImageError, item_image_response
from .json_response import JSONResponse
from .uploads import UploadError, image_from_body, read_body
from .version_watch import VersionWatch

log = logging.getLogger("vitrine.serve")
API_VERSION = "v1"
PAGE = Path(__file__).with_name("static") / "index.html"

app = FastAPI(title="vitrine", version=API_VERSION,
              description="Fashion image classification and visual search over the catalogue. Every error "
                          "answers `{\"error\": \"<reason>\", \"status\": <code>}`; a 503 carries `Retry-After`.")
install_error_handlers(app)
app.add_middleware(cors.ConfiguredCORS)


def _blank_is_none(value):
    return None if value == "" else value  # the page sends "k=" before it knows the default


K = Annotated[int | None, BeforeValidator(_blank_is_none),
              Query(description="How many results, 1 to max_k (GET /v1/info); default default_k. "
                                "Out of range: 400.")]
CATEGORY = Annotated[str, Query(description="`auto`: within the predicted class; `all`: every category; "
                                            "or a category name (GET /v1/info lists them).")]
THRESHOLD = Annotated[float, Query(ge=0, le=100, description="Leave out hits below this similarity "
                                                             "(percent, the scale of `similarity`).")]
SEARCH_ERRORS = schemas.errors(400, 401, 403, 408, 413, 422, 500, 503)


def _in_range(name: str, value: int | None, default: int, lo: int, hi: int) -> int:
    if value is None:
        return default
    if not lo <= value <= hi:
        raise ApiError(400, f"{name} must be between {lo} and {hi}, got {value}")
    return value


@serve.deployment(name="Ingress")
@serve.ingress(app)
class Ingress:
    def __init__(self, classifier, search, args: dict):
        setup_logging()
        from .metrics import AppMetrics

        self.classifier = classifier
        # One handle per search slot (serve/search.py); a sharded index's shards are spread over them.
        self.slots = SearchSlots(search)
        self.args = AppArgs(**args)
        self._gathered.set_max_batch_size(self.args.search_batch_size)
        self._gathered.set_batch_wait_timeout_s(self.args.search_batch_wait_s)
        self.root = self.args.storage or storage.default_root()
        self.keys = ApiKeys(self.args.api_keys_file)
        self.metrics = AppMetrics()
        self.watch = VersionWatch(classifier, self.slots.handles, self.args, self.root, self.metrics)
        cors.configure(self.args.cors_origins)
        self.page = PAGE.read_text(encoding="utf-8") if PAGE.exists() else "<h1>vitrine</h1>"

    # ------------------------------------------------------------ helpers
    async def _body(self, request: Request) -> bytes:
        return await read_body(request, self.args.max_upload_bytes, timeout_s=self.args.upload_timeout_s,
                               idle_timeout_s=self.args.upload_idle_timeout_s)

    async def _upload(self, request: Request) -> bytes:
        """The image bytes of a one-image request: a raw body is used as it is (no copy, no thread
        hop); a multipart body is parsed off the event loop (10 MiB take milliseconds, never on
        the loop that every other request of this replica waits on)."""
        body, content_type = await self._body(request), request.headers.get("content-type", "")
        if content_type.lower().startswith("multipart/form-data"):
            return await run_in_threadpool(image_from_body, body, content_type)
        return image_from_body(body, content_type)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.0, max_concurrent_batches=2)
    async def _gathered(self, queries: list[SearchQuery]) -> list[SearchAnswer]:
        """The /v1/search requests in flight, answered together (serve/search_gather.py). No wait:
        the requests that arrive while a batch is out form the next one; two batches in flight
        keep the Classifier busy while Search answers the other."""
        return await answer_all(queries, self.classifier, self.slots, self.args.max_pixels)

    async def _classify(self, request: Request, version: versions.ServingVersion) -> dict:
        data = await self._upload(request)
        spec = PreprocessSpec.from_dict(version.preprocessing)
        pixels = await run_in_threadpool(preprocess_bytes, data, spec, max_pixels=self.args.max_pixels)
        out = await call(self.classifier.predict, pixels, version.model_id)
        if "error" in out:
            raise ApiError(503, out["error"])
        return out

    async def _batch(self, request: Request, version: versions.ServingVersion, limit: int):
        """Several images of one request, preprocessed (off the event loop), then embedded and
        classified in one Classifier call."""
        body = await self._body(request)
        spec = PreprocessSpec.from_dict(version.preprocessing)
        batch = await run_in_threadpool(preprocess_batch, body, request.headers.get("content-type", ""), spec,
                                        limit=limit, max_pixels=self.args.max_pixels,
                                        max_request_pixels=self.args.max_request_pixels)
        out = await call(self.classifier.predict_many, np.stack(batch.pixels), version.model_id) if batch.pixels else None
        if out and "error" in out:
            raise ApiError(503, out["error"])
        if batch.rejected:
            self.metrics.rejected.inc(len(batch.rejected), tags={"reason": "not_an_image"})
        return batch, out

    @staticmethod
    def _classes(version: versions.ServingVersion, probabilities: np.ndarray) -> list[dict]:
        order = np.argsort(-probabilities, kind="stable")
        return [{"name": version.class_names[i], "probability": round(float(probabilities[i]), 6)} for i in order]

    def _searchable(self, v: versions.ServingVersion, k: int | None, category: str) -> tuple[int, str]:
        if not v.index_id:
            raise ApiError(503, "no index published yet: run the embedding job and build-index")
        wanted = (category or "auto").strip()
        if wanted not in ("auto", "all") and wanted not in v.categories:
            raise ApiError(400, f"unknown category {wanted!r}; use auto, all or one of: {', '.join(v.categories)}")
        return _in_range("k", k, self.args.default_k, 1, self.args.max_k), wanted

    async def _handle(self, endpoint: str, request: Request, work) -> Response:
        t0 = time.perf_counter()
        try:
            result = await work()
            response = result if isinstance(result, Response) else JSONResponse(result)
        except UploadError as exc:
            self.metrics.rejected.inc(tags={"reason": "upload"})
            response = error_response(exc.status, exc.reason)
        except ImageDecodeError as exc:
            self.metrics.rejected.inc(tags={"reason": "too_large" if exc.too_large else "not_an_image"})
            response = error_response(413 if exc.too_large else 400, f"not a usable image: {exc.reason}")
        except AuthError as exc:
            self.metrics.rejected.inc(tags={"reason": "auth"})
            response = error_response(exc.status, exc.reason)
            if exc.status == 401:
                response.headers["WWW-Authenticate"] = 'Bearer realm="vitrine"'
        except ApiError as exc:
            response = error_response(exc.status, exc.message)
        except BackPressureError:  # a deployment behind this one has max_queued_requests waiting
            self.metrics.rejected.inc(tags={"reason": "overloaded"})
            response = error_response(503, "overloaded: too many requests are waiting; try again shortly")
        except Exception:  # a bug: logged with an id; the client gets the id, never the exception's text
            request_id = uuid.uuid4().hex[:12]
            log.exception("%s failed (request %s)", endpoint, request_id)
            response = error_response(500, f"internal error (request {request_id})")
        self.metrics.observe(endpoint, response.status_code, time.perf_counter() - t0)
        return response

    def _authorize(self, request: Request, scope: str) -> None:
        if scope == "search" and not self.args.search_requires_key:
            return
        self.keys.check(request.headers.get("authorization"), scope)

    # ------------------------------------------------------------ routes
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page(self) -> HTMLResponse:
        return HTMLResponse(self.page)

    @app.get("/healthz", response_model=schemas.HealthResponse, responses=schemas.errors(503),
             summary="Whether a version is served")
    async def healthz(self, request: Request) -> Response:
        async def work():
            v = await self.watch.serving()
            return {"status": "ok", "model_id": v.model_id, "index_id": v.index_id}
        return await self._handle("healthz", request, work)

    @app.get("/v1/info", response_model=schemas.InfoResponse, responses=schemas.errors(503),
             summary="The served model and index, and the limits")
    async def info(self, request: Request) -> Response:
        async def work():
            v = await self.watch.serving()
            a = self.args
            return {"api_version": API_VERSION, "model_id": v.model_id, "index_id": v.index_id,
                    "index_version": v.index_id, "index_published_at": v.published_at, "items": v.index_items,
                    "embedding_dim": v.embedding_dim, "classes": list(v.class_names),
                    "categories": list(v.categories), "max_upload_bytes": a.max_upload_bytes,
                    "max_pixels": a.max_pixels, "max_request_pixels": a.max_request_pixels,
                    "max_batch_images": a.max_batch_images, "max_search_batch_images": a.max_search_batch_images,
                    "default_k": a.default_k, "max_k": a.max_k, "refused": self.watch.refused_reasons(),
                    "retrying": self.watch.retrying(),
                    "api_key_required": {"embed": True, "search": a.search_requires_key}}
        return await self._handle("info", request, work)

    @app.get("/v1/samples", response_model=schemas.SamplesResponse, responses=schemas.errors(400, 422, 503),
             summary="A few catalogue items per category")
    async def samples(self, request: Request,
                      per_category: Annotated[int | None, BeforeValidator(_blank_is_none),
                                              Query(description="Items per category, 1 to 20 (default 2).")] = None
                      ) -> Response:
        async def work():
            v = await self.watch.serving()
            if not v.index_id:
                return {"samples": []}
            rows = await self.slots.samples(v, _in_range("per_category", per_category, 2, 1, 20))
            return {"samples": [{**r, "image_url": f"/v1/items/{r['item_id']}/image"} for r in rows]}
        return await self._handle("samples", request, work)

    @app.post("/v1/classify", response_model=schemas.ClassifyResponse, responses=SEARCH_ERRORS,
              openapi_extra=schemas.image_body(), summary="Classify one image")
    async def classify(self, request: Request) -> Response:
        async def work():
            t0 = time.perf_counter()
            self._authorize(request, "search")
            v = await self.watch.serving()
            out = await self._classify(request, v)
            classes = self._classes(v, out["probabilities"])
            return {"model_id": v.model_id, "predicted": classes[0]["name"], "classes": classes,
                    "took_ms": round((time.perf_counter() - t0) * 1000, 2)}
        return await self._handle("classify", request, work)

    @app.post("/v1/explain", response_model=schemas.ExplainResponse, responses=SEARCH_ERRORS,
              openapi_extra=schemas.image_body(), summary="Why this class: a heatmap of one image")
    async def explain(self, request: Request, method: EXPLAIN_METHOD = "gradcam") -> Response:
        """The predicted class of one image and where its evidence lies (serve/explanations.py)."""
        async def work():
            t0 = time.perf_counter()
            self._authorize(request, "search")
            v = await self.watch.serving()
            data = await self._upload(request)
            out = await explain_upload(self.classifier, data, v, method, self.args.max_pixels, self._classes)
            return {**out, "took_ms": round((time.perf_counter() - t0) * 1000, 2)}
        return await self._handle("explain", request, work)

    @app.post("/v1/search", response_model=schemas.SearchResponse, responses=SEARCH_ERRORS,
              openapi_extra=schemas.image_body(), summary="Catalogue items that look like one image")
    async def search_items(self, request: Request, k: K = None, category: CATEGORY = "auto",
                           score_threshold: THRESHOLD = 0.0) -> Response:
        async def work():
            t0 = time.perf_counter()
            self._authorize(request, "search")
            v = await self.watch.serving()
            n, wanted = self._searchable(v, k, category)
            # auto, the published design: search within the predicted class, when the index has it.
            a = await self._gathered(SearchQuery(await self._upload(request), v, n, wanted))
            if a.error is not None:
                raise a.error
            return {"model_id": v.model_id, "index_id": v.index_id, "predicted": a.predicted,
                    "classes": self._classes(v, a.probabilities), "category": a.category, "k": n,
                    "score_threshold": score_threshold, "results": with_urls(above(a.hits, score_threshold)),
                    "took_ms": round((time.perf_counter() - t0) * 1000, 2)}
        return await self._handle("search", request, work)

    @app.post("/v1/search/batch", response_model=schemas.BatchSearchResponse, responses=SEARCH_ERRORS,
              openapi_extra=schemas.image_body(many=True), summary="Search with several images at once")
    async def search_batch(self, request: Request, k: K = None, category: CATEGORY = "auto",
                           score_threshold: THRESHOLD = 0.0) -> Response:
        """Several images (multipart, one ``file`` part each with a unique filename; at most
        ``max_search_batch_images``, within ``max_upload_bytes`` and ``max_request_pixels``) → one
        result list each, in the order sent, as ``POST /v1/search`` answers it one at a time. An
        image that cannot be used gets an empty list and its ``error``."""
        async def work():
            t0 = time.perf_counter()
            self._authorize(request, "search")
            v = await self.watch.serving()
            n, wanted = self._searchable(v, k, category)
            batch, out = await self._batch(request, v, self.args.max_search_batch_images)
            queries, searched, j = [], [], 0
            for key in batch.keys:
                if key in batch.rejected:
                    queries.append({"key": key, "error": batch.rejected[key]})
                    continue
                predicted = self._classes(v, out["probabilities"][j])[0]["name"]
                queries.append({"key": key, "predicted": predicted, "category": category_for(v, wanted, predicted)})
                if out["zero"][j]:
                    queries[-1]["error"] = BLANK
                else:
                    searched.append((len(queries) - 1, j))
                j += 1
            results = [[] for _ in queries]
            # One Search call for the request's images, as for gathered /v1/search requests.
            found = await self.slots.search_many(v, out["embeddings"][[j for _, j in searched]], [n] * len(searched),
                                                 [queries[i]["category"] for i, _ in searched]) if searched else []
            for (i, _), hits in zip(searched, found):
                results[i] = with_urls(above(hits, score_threshold))
            return {"model_id": v.model_id, "index_id": v.index_id, "k": n, "score_threshold": score_threshold,
                    "queries": queries, "results": results, "took_ms": round((time.perf_counter() - t0) * 1000, 2)}
        return await self._handle("search_batch", request, work)

    @app.get("/v1/items/{item_id}/similar", response_model=schemas.SimilarResponse,
             responses=schemas.errors(400, 401, 403, 404, 422, 500, 503), summary="More like this catalogue item")
    async def similar(self, item_id: str, request: Request, k: K = None,
                      category: Annotated[str, Query(description="`auto` (default): within the item's own "
                                                                 "category; `all`; or a category name.")] = "auto",
                      score_threshold: THRESHOLD = 0.0) -> Response:
        """The catalogue items nearest to one in the index, from its stored vector (no upload),
        best first, without the item itself. Unknown or deleted items: 404."""
        async def work():
            t0 = time.perf_counter()
            self._authorize(request, "search")
            if not catalogue.is_item_id(item_id):
                raise ApiError(400, f"invalid item id: {catalogue.ITEM_ID_RULE}")
            v = await self.watch.serving()
            n, wanted = self._searchable(v, k, category)
            item = await self.slots.first(v, "item_vector", item_id)
            if not item:
                raise ApiError(404, f"no catalogue item {item_id!r} in index {v.index_id}")
            where = category_for(v, wanted, item["category"])
            # One more than asked: the item itself is (normally) its own nearest neighbour.
            hits = [h for h in await self.slots.search(v, item["embedding"], n + 1, where) if h["item_id"] != item_id][:n]
            return {"model_id": v.model_id, "index_id": v.index_id, "item_id": item_id,
                    "item_category": item["category"], "category": where, "k": n, "score_threshold": score_threshold,
                    "results": with_urls(above(hits, score_threshold)),
                    "took_ms": round((time.perf_counter() - t0) * 1000, 2)}
        return await self._handle("similar", request, work)

    @app.post("/v1/embed", response_model=schemas.EmbedResponse, responses=schemas.errors(
        400, 401, 403, 408, 409, 413, 422, 500, 503), openapi_extra=schemas.image_body(many=True),
              summary="Embed a batch of images (the nightly job's increments)")
    async def embed(self, request: Request,
                    model_id: Annotated[str | None, Query(description="Must be the served model (409 otherwise).")]
                    = None) -> Response:
        """A batch of images (multipart, one ``file`` part each, keyed by filename) → each one's
        unit embedding and class probabilities, or its reason for being rejected. For the nightly
        job's small increments: the model is already loaded here. ``model_id`` must be the served
        model (409 otherwise), so the caller never mixes two models in one embeddings run."""
        async def work():
            t0 = time.perf_counter()
            self._authorize(request, "embed")
            v = await self.watch.serving()
            if model_id and model_id != v.model_id:
                raise ApiError(409, f"this service embeds with model {v.model_id}, not {model_id}")
            # Parsing, preprocessing and encoding a few hundred images take ~0.1 s: off the event
            # loop, so a nightly batch never stalls the searches this replica is serving.
            batch, out = await self._batch(request, v, self.args.max_batch_images)

            def encode() -> bytes:
                items, j = [], 0
                for key in batch.keys:
                    if key in batch.rejected:
                        items.append({"key": key, "error": batch.rejected[key]})
                        continue
                    items.append({"key": key, "embedding": out["embeddings"][j].tolist(),
                                  "probabilities": out["probabilities"][j].tolist(),
                                  "zero_embedding": bool(out["zero"][j])})
                    j += 1
                return json.dumps({"model_id": v.model_id, "embedding_dim": v.embedding_dim,
                                   "classes": list(v.class_names), "items": items,
                                   "took_ms": round((time.perf_counter() - t0) * 1000, 2)}).encode()

            return Response(await run_in_threadpool(encode), media_type="application/json")
        return await self._handle("embed", request, work)

    @app.get("/v1/items/{item_id}/image", response_class=Response, summary="A catalogue item's image",
             responses={200: {"content": {"image/*": {"schema": {"type": "string", "format": "binary"}}},
                              "description": "The image, streamed from the catalogue."},
                        **schemas.errors(400, 403, 404, 422, 500, 503)})
    async def item_image(self, item_id: str, request: Request) -> Response:
        async def work():
            if not catalogue.is_item_id(item_id):
                raise ApiError(400, f"invalid item id: {catalogue.ITEM_ID_RULE}")
            v = await self.watch.serving()
            found = await self.slots.first(v, "image_location", item_id) if v.index_id else None
            if not found:
                raise ApiError(404, f"no catalogue item {item_id!r} in index {v.index_id}")
            roots = tuple(self.args.catalogue_roots) or tuple(found["roots"])
            try:
                return await item_image_response(item_id, found["uri"], roots)
            except ItemImageError as exc:
                raise ApiError(exc.status, exc.message) from None
        return await self._handle("item_image", request, work)
