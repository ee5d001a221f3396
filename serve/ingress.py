"""HTTP ingress: the versioned JSON API and the web page, in front of the two deployments.

A request is decoded and preprocessed here once (the same function as training and embedding),
classified by the Classifier, then searched by Search, both pinned to the version this replica
serves at the moment the request arrived. A sharded index is served by several Search slots
(``search_shards``): a query asks the slots holding its category (all of them for
``category=all``) and their hits are merged. The served version is re-read from storage every
``poll_interval_s``; a new one is warmed on a replica of each deployment before it is used, and
one that cannot be served is refused with a log line while the old one keeps serving. A warm-up
that fails for a reason that may pass (storage, timeout, lost replica) is tried again later.

Uploads are read by :mod:`.uploads`, keys checked by :mod:`.auth`, catalogue images streamed by
:mod:`.item_images`. The version watch stays in this class (it is the replica state every route
reads), which keeps the module a little over 400 lines.
"""

# No `from __future__ import annotations`: FastAPI must see `Request` itself in the signatures of
# these methods, which Serve rewrites into routes.
import asyncio
import json
import logging
import time
import uuid
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from ray import serve
from ray.serve.exceptions import BackPressureError
from starlette.concurrency import run_in_threadpool

from artifacts import catalogue, storage
from artifacts.index_shards import merge_top_k, slot_of
from artifacts.logs import setup_logging
from artifacts.preprocess import (ImageDecodeError, PreprocessSpec, header_pixels, preprocess_bytes,
                                  preprocess_or_reason)

from . import versions
from .args import AppArgs
from .auth import ApiKeys, AuthError
from .item_images import ItemImageError, item_image_response
from .retry import RetryBackoff, short_reason, without_locations
from .uploads import UploadError, image_from_body, images_from_body, read_body

log = logging.getLogger("vitrine.serve")
API_VERSION = "v1"
PAGE = Path(__file__).with_name("static") / "index.html"
# Classify and search are idempotent: a call whose replica died under it (node lost, process
# killed) is sent again, and the router picks a live replica.
REPLICA_RETRIES = 2
# Seconds a client is asked to wait when the Classifier or Search queue is full (the proxy's own
# rejections carry serve/config.yaml's backpressure_config.retry_after_s).
OVERLOAD_RETRY_AFTER_S = 1

app = FastAPI(title="vitrine", version=API_VERSION,
              description="Fashion image classification and visual search over the catalogue.")


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


async def call(method, *args):
    """``await handle.method.remote(*args)``, again on a live replica if the first one died."""
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

    for attempt in range(REPLICA_RETRIES + 1):
        try:
            return await method.remote(*args)
        except (ActorDiedError, ActorUnavailableError, RayActorError) as exc:
            if attempt == REPLICA_RETRIES:
                raise ApiError(503, f"no live replica answered ({type(exc).__name__}); try again") from None
            log.warning("replica lost during a call (%s); retrying on another", type(exc).__name__)
            await asyncio.sleep(0.05 * (attempt + 1))


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status)


@app.exception_handler(StarletteHTTPException)
async def _routing_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """FastAPI's own 404 / 405 (no such route, wrong method) in the documented error shape,
    keeping its headers (``Allow`` on a 405)."""
    response = _error(exc.status_code, str(exc.detail))
    response.headers.update(exc.headers or {})
    return response


@serve.deployment(name="Ingress")
@serve.ingress(app)
class Ingress:
    def __init__(self, classifier, search, args: dict):
        setup_logging()
        self.classifier = classifier
        # One handle per search slot (serve/search.py); a sharded index's shards are spread over them.
        self.searches = list(search) if isinstance(search, (list, tuple)) else [search]
        self.args = AppArgs(**args)
        self.root = self.args.storage or storage.default_root()
        self.keys = ApiKeys(self.args.api_keys_file)
        self.version: versions.ServingVersion | None = None
        self.refused: dict[tuple, str] = {}  # versions that failed their checks, with the reason
        self.retries = RetryBackoff()  # versions whose warm-up failed for a reason that may pass
        self._problem = "no version checked yet"
        self._checked_at = 0.0
        self._refresh_lock = asyncio.Lock()
        self._refresh_task: asyncio.Task | None = None
        self.page = PAGE.read_text(encoding="utf-8") if PAGE.exists() else "<h1>vitrine</h1>"
        from .metrics import AppMetrics

        self.metrics = AppMetrics()

    # ------------------------------------------------------------ versions
    async def _serving(self) -> versions.ServingVersion:
        """The version for this request; checks storage for a newer one in the background."""
        if self.version is None:
            await self._refresh()
        elif time.monotonic() - self._checked_at >= self.args.poll_interval_s and (
                self._refresh_task is None or self._refresh_task.done()):
            self._refresh_task = asyncio.get_running_loop().create_task(self._refresh())
        if self.version is None:
            raise ApiError(503, f"nothing to serve yet: {without_locations(self._problem)}")
        return self.version

    async def _refresh(self) -> None:
        async with self._refresh_lock:
            if self.version is not None and time.monotonic() - self._checked_at < self.args.poll_interval_s:
                return
            self._checked_at = time.monotonic()
            try:
                candidate = await run_in_threadpool(versions.resolve, self.root, model=self.args.model,
                                                    index=self.args.index)
            except versions.NothingPublished as exc:
                self._problem = str(exc)
                return
            except versions.VersionRejected as exc:
                self._refuse(("resolve", str(exc)), str(exc))
                return
            except Exception as exc:  # storage unreachable: keep serving what we have
                self._problem = f"cannot read {self.root}: {exc}"
                log.warning("version check failed (%s); %s", exc, self._keeping())
                return
            self.retries.keep_only([candidate.key])
            if self.version is not None and candidate.key == self.version.key:
                return
            if candidate.key in self.refused or not self.retries.due(candidate.key):
                return
            timeout = self.args.warm_timeout_s
            try:  # load it on one replica of each before any request depends on it
                # A timeout only stops this wait: the replica's load goes on (its cache shields it),
                # so the next try picks up that same load instead of starting over.
                model = await asyncio.wait_for(self.classifier.warm.remote(candidate.model_id), timeout)
                if model["embedding_dim"] != candidate.embedding_dim:
                    raise versions.VersionRejected(f"model {candidate.model_id} produces {model['embedding_dim']}-"
                                                   f"dimensional embeddings, its card says {candidate.embedding_dim}")
                if candidate.index_id:
                    await asyncio.wait_for(self._warm_search(candidate), timeout)
            except Exception as exc:
                if versions.is_permanent(exc):
                    self.retries.succeeded(candidate.key)
                    self._refuse(candidate.key, f"model {candidate.model_id} / index {candidate.index_id}: {exc}")
                else:
                    self._retry_later(candidate, exc)
                return
            self.retries.succeeded(candidate.key)
            previous, self.version = self.version, candidate
            self._problem = ""
            self.metrics.swaps.inc(tags={"outcome": "served"})
            self.metrics.index_version.set(candidate.published_at,
                                           tags={"index_id": str(candidate.index_id), "model_id": candidate.model_id})
            log.info("now serving model %s with index %s (%d items)%s", candidate.model_id, candidate.index_id,
                     candidate.index_items,
                     f"; was model {previous.model_id} with index {previous.index_id}" if previous else "")

    async def _warm_search(self, candidate: versions.ServingVersion) -> None:
        """Load the index on a replica of every search slot; the version serves only once every
        shard is loaded somewhere, so a query never meets a slot without its shards."""
        infos = await asyncio.gather(*(h.warm.remote(candidate.index_id) for h in self.searches))
        for index in infos:
            if index["model_id"] != candidate.model_id or index["embedding_dim"] != candidate.embedding_dim:
                raise versions.VersionRejected(
                    f"index {candidate.index_id} (model {index['model_id']}, dim {index['embedding_dim']}) "
                    f"does not match model {candidate.model_id} (dim {candidate.embedding_dim})")
        held = sorted(s for index in infos for s in index.get("shards", [0]))
        items = sum(int(index["items"]) for index in infos)
        if held != list(range(candidate.shards)) or items != candidate.index_items:
            raise versions.VersionRejected(
                f"index {candidate.index_id}: its {candidate.shards} shard(s) of {candidate.index_items} items are "
                f"served as shards {held} holding {items} items by {len(self.searches)} search slot(s)")

    def _slots(self, v: versions.ServingVersion, category: str | None = None) -> list:
        """Handles of the search slots holding shards of ``category`` (``None``: every shard)."""
        return [self.searches[n] for n in sorted({slot_of(s, len(self.searches)) for s in v.shards_for(category)})]

    async def _search(self, v: versions.ServingVersion, embedding, k: int, category: str | None) -> list[dict]:
        slots = self._slots(v, category)
        if len(slots) == 1:
            return await call(slots[0].search, embedding, v.index_id, k, category)
        parts = await asyncio.gather(*(call(h.search_scored, embedding, v.index_id, k, category) for h in slots))
        return [hit for _, hit in merge_top_k(parts, k, lambda scored: scored[0])]

    async def _image_location(self, v: versions.ServingVersion, item_id: str) -> dict | None:
        # An item id does not say its shard (its category decides): every slot holding shards is asked.
        found = await asyncio.gather(*(call(h.image_location, v.index_id, item_id) for h in self._slots(v)))
        return next((f for f in found if f), None)

    async def _samples(self, v: versions.ServingVersion, per_category: int) -> list[dict]:
        parts = await asyncio.gather(*(call(h.samples, v.index_id, per_category) for h in self._slots(v)))
        rows, taken = [], {}
        for row in sorted((r for part in parts for r in part), key=lambda r: r["category"] or ""):
            # A hash-split category has items in several slots, each of which sent its own samples.
            if taken.get(row["category"], 0) < per_category:
                taken[row["category"]] = taken.get(row["category"], 0) + 1
                rows.append(row)
        return rows

    def _keeping(self) -> str:
        v = self.version
        return f"keeping model {v.model_id} with index {v.index_id}" if v else "nothing served yet"

    def _retry_later(self, candidate: versions.ServingVersion, exc: BaseException) -> None:
        if isinstance(exc, asyncio.TimeoutError):
            reason = f"warm-up took longer than warm_timeout_s={self.args.warm_timeout_s:g}"
        else:
            reason = short_reason(exc)
        state = self.retries.failed(candidate.key, reason)
        wait = self.retries.delay(state.attempts)
        log.warning("warming model %s / index %s failed (attempt %d: %s); trying again in %.0f s; %s",
                    candidate.model_id, candidate.index_id, state.attempts, exc, wait, self._keeping())
        self.metrics.swaps.inc(tags={"outcome": "retrying"})
        if self.version is None:
            self._problem = f"model {candidate.model_id} / index {candidate.index_id}: {reason}; retrying"

    def _retrying(self) -> list[dict]:
        return [{"model_id": key[0], "index_id": key[1], "attempts": state.attempts,
                 "next_try_in_s": round(wait, 1), "last_error": state.last_error}
                for key, state, wait in self.retries.pending()]

    def _refuse(self, key: tuple, reason: str) -> None:
        if key not in self.refused:
            log.error("refusing to serve %s; %s", reason, self._keeping())
            self.metrics.swaps.inc(tags={"outcome": "refused"})
        self.refused[key] = reason
        if self.version is None:
            self._problem = reason

    # ------------------------------------------------------------ helpers
    async def _body(self, request: Request) -> bytes:
        return await read_body(request, self.args.max_upload_bytes, timeout_s=self.args.upload_timeout_s,
                               idle_timeout_s=self.args.upload_idle_timeout_s)

    async def _image(self, request: Request) -> bytes:
        body = await self._body(request)
        # Off the event loop: parsing 10 MiB takes milliseconds, but never on the loop that
        # every other request of this replica waits on.
        return await run_in_threadpool(image_from_body, body, request.headers.get("content-type", ""))

    async def _classify(self, request: Request, version: versions.ServingVersion) -> dict:
        data = await self._image(request)
        spec = PreprocessSpec.from_dict(version.preprocessing)
        pixels = await run_in_threadpool(preprocess_bytes, data, spec, max_pixels=self.args.max_pixels)
        out = await call(self.classifier.predict, pixels, version.model_id)
        if "error" in out:
            raise ApiError(503, out["error"])
        return out

    @staticmethod
    def _classes(version: versions.ServingVersion, probabilities: np.ndarray) -> list[dict]:
        order = np.argsort(-probabilities, kind="stable")
        return [{"name": version.class_names[i], "probability": round(float(probabilities[i]), 6)} for i in order]

    async def _handle(self, endpoint: str, request: Request, work) -> Response:
        t0 = time.perf_counter()
        try:
            result = await work()
            response = result if isinstance(result, Response) else JSONResponse(result)
        except UploadError as exc:
            self.metrics.rejected.inc(tags={"reason": "upload"})
            response = _error(exc.status, exc.reason)
        except ImageDecodeError as exc:
            self.metrics.rejected.inc(tags={"reason": "too_large" if exc.too_large else "not_an_image"})
            response = _error(413 if exc.too_large else 400, f"not a usable image: {exc.reason}")
        except AuthError as exc:
            self.metrics.rejected.inc(tags={"reason": "auth"})
            response = _error(exc.status, exc.reason)
            if exc.status == 401:
                response.headers["WWW-Authenticate"] = 'Bearer realm="vitrine"'
        except ApiError as exc:
            response = _error(exc.status, exc.message)
        except BackPressureError:  # a deployment behind this one has max_queued_requests waiting
            self.metrics.rejected.inc(tags={"reason": "overloaded"})
            response = _error(503, "overloaded: too many requests are waiting; try again shortly")
            response.headers["Retry-After"] = str(OVERLOAD_RETRY_AFTER_S)
        except Exception:  # a bug: logged with an id; the client gets the id, never the exception's text
            request_id = uuid.uuid4().hex[:12]
            log.exception("%s failed (request %s)", endpoint, request_id)
            response = _error(500, f"internal error (request {request_id})")
        self.metrics.observe(endpoint, response.status_code, time.perf_counter() - t0)
        return response

    def _authorize(self, request: Request, scope: str) -> None:
        if scope == "search" and not self.args.search_requires_key:
            return
        self.keys.check(request.headers.get("authorization"), scope)

    def _int_param(self, request: Request, name: str, default: int, lo: int, hi: int) -> int:
        raw = request.query_params.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ApiError(400, f"{name} must be an integer, got {raw!r}") from None
        if not lo <= value <= hi:
            raise ApiError(400, f"{name} must be between {lo} and {hi}, got {value}")
        return value

    # ------------------------------------------------------------ routes
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page(self) -> HTMLResponse:
        return HTMLResponse(self.page)

    @app.get("/healthz")
    async def healthz(self, request: Request) -> Response:
        async def work():
            try:
                v = await self._serving()
            except ApiError as exc:
                return _error(503, exc.message)
            return {"status": "ok", "model_id": v.model_id, "index_id": v.index_id}
        return await self._handle("healthz", request, work)

    @app.get("/v1/info")
    async def info(self, request: Request) -> Response:
        async def work():
            v = await self._serving()
            return {"api_version": API_VERSION, "model_id": v.model_id, "index_id": v.index_id,
                    "index_version": v.index_id, "index_published_at": v.published_at, "items": v.index_items,
                    "embedding_dim": v.embedding_dim, "classes": list(v.class_names),
                    "categories": list(v.categories), "max_upload_bytes": self.args.max_upload_bytes,
                    "max_pixels": self.args.max_pixels, "max_request_pixels": self.args.max_request_pixels,
                    "max_batch_images": self.args.max_batch_images,
                    "default_k": self.args.default_k, "max_k": self.args.max_k,
                    "refused": sorted({without_locations(r) for r in self.refused.values()}), "retrying": self._retrying(),
                    "api_key_required": {"embed": True, "search": self.args.search_requires_key}}
        return await self._handle("info", request, work)

    @app.get("/v1/samples")
    async def samples(self, request: Request) -> Response:
        async def work():
            v = await self._serving()
            if not v.index_id:
                return {"samples": []}
            per = self._int_param(request, "per_category", 2, 1, 20)
            rows = await self._samples(v, per)
            return {"samples": [{**r, "image_url": f"/v1/items/{r['item_id']}/image"} for r in rows]}
        return await self._handle("samples", request, work)

    @app.post("/v1/classify")
    async def classify(self, request: Request) -> Response:
        async def work():
            t0 = time.perf_counter()
            self._authorize(request, "search")
            v = await self._serving()
            out = await self._classify(request, v)
            classes = self._classes(v, out["probabilities"])
            return {"model_id": v.model_id, "predicted": classes[0]["name"], "classes": classes,
                    "took_ms": round((time.perf_counter() - t0) * 1000, 2)}
        return await self._handle("classify", request, work)

    @app.post("/v1/search")
    async def search_items(self, request: Request) -> Response:
        async def work():
            t0 = time.perf_counter()
            self._authorize(request, "search")
            v = await self._serving()
            if not v.index_id:
                raise ApiError(503, "no index published yet: run the embedding job and build-index")
            k = self._int_param(request, "k", self.args.default_k, 1, self.args.max_k)
            wanted = (request.query_params.get("category") or "auto").strip()
            if wanted not in ("auto", "all") and wanted not in v.categories:
                raise ApiError(400, f"unknown category {wanted!r}; use auto, all or one of: {', '.join(v.categories)}")
            out = await self._classify(request, v)
            classes = self._classes(v, out["probabilities"])
            if out["zero_embedding"]:
                raise ApiError(422, "the model sees no features in this image (blank?), nothing to compare")
            category = None
            if wanted == "auto":
                # The published design: search within the predicted class, when the index has it.
                category = classes[0]["name"] if classes[0]["name"] in v.categories else None
            elif wanted != "all":
                category = wanted
            hits = await self._search(v, out["embedding"], k, category)
            return {"model_id": v.model_id, "index_id": v.index_id, "predicted": classes[0]["name"],
                    "classes": classes, "category": category, "k": k,
                    "results": [{**h, "image_url": f"/v1/items/{h['item_id']}/image"} for h in hits],
                    "took_ms": round((time.perf_counter() - t0) * 1000, 2)}
        return await self._handle("search", request, work)

    @app.post("/v1/embed")
    async def embed(self, request: Request) -> Response:
        """A batch of images (multipart, one ``file`` part each, keyed by filename) → each one's
        unit embedding and class probabilities, or its reason for being rejected. For the nightly
        job's small increments: the model is already loaded here. ``model_id`` must be the served
        model (409 otherwise), so the caller never mixes two models in one embeddings run."""
        async def work():
            t0 = time.perf_counter()
            self._authorize(request, "embed")
            v = await self._serving()
            wanted = request.query_params.get("model_id")
            if wanted and wanted != v.model_id:
                raise ApiError(409, f"this service embeds with model {v.model_id}, not {wanted}")
            body = await self._body(request)
            spec = PreprocessSpec.from_dict(v.preprocessing)

            # Parsing, preprocessing and encoding a few hundred images take ~0.1 s: off the event
            # loop, so a nightly batch never stalls the searches this replica is serving.
            def preprocess_all():
                images = images_from_body(body, request.headers.get("content-type", ""),
                                          limit=self.args.max_batch_images)
                total = sum(header_pixels(data) for _, data in images)
                if total > self.args.max_request_pixels:
                    raise UploadError(413, f"the images of this request have {total:,} pixels together, the "
                                           f"limit is {self.args.max_request_pixels:,}: send fewer per request")
                pixels, rejected = [], {}
                for key, data in images:
                    x, reason = preprocess_or_reason(data, spec, max_pixels=self.args.max_pixels)
                    if x is None:
                        rejected[key] = reason
                    else:
                        pixels.append(x)
                return [k for k, _ in images], pixels, rejected

            keys, pixels, rejected = await run_in_threadpool(preprocess_all)
            out = await call(self.classifier.embed_many, np.stack(pixels), v.model_id) if pixels else None
            if rejected:
                self.metrics.rejected.inc(len(rejected), tags={"reason": "not_an_image"})

            def encode() -> bytes:
                items, j = [], 0
                for key in keys:
                    if key in rejected:
                        items.append({"key": key, "error": rejected[key]})
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

    @app.get("/v1/items/{item_id}/image")
    async def item_image(self, item_id: str, request: Request) -> Response:
        async def work():
            if not catalogue.is_item_id(item_id):
                raise ApiError(400, f"invalid item id: {catalogue.ITEM_ID_RULE}")
            v = await self._serving()
            found = await self._image_location(v, item_id) if v.index_id else None
            if not found:
                raise ApiError(404, f"no catalogue item {item_id!r} in index {v.index_id}")
            roots = tuple(self.args.catalogue_roots) or tuple(found["roots"])
            try:
                return await item_image_response(item_id, found["uri"], roots)
            except ItemImageError as exc:
                raise ApiError(exc.status, exc.message) from None
        return await self._handle("item_image", request, work)
