"""Small increments through the running service: the embedding job sends new and changed images
to the search service's ``POST /v1/embed``, whose Classifier replicas already hold the model,
instead of importing TensorFlow and loading the model itself (seconds, for a nightly change of a
few hundred items that takes well under one).

Used only when the service serves exactly the run's model; the same preprocessing and forward
pass (:mod:`artifacts.preprocess`, :mod:`artifacts.inference`) run there, so the vectors are the
ones the job would have computed. Anything else (unreachable, another model, a model swap in the
middle, an image over the service's upload limit) raises :class:`ServiceUnavailable` before any
row is returned, and the job embeds the increment itself.

``/v1/embed`` needs an API key with scope ``embed`` (serve/auth.py): the job sends
``$VITRINE_API_KEY``, or the first line of the file ``$VITRINE_API_KEY_FILE`` names (on KubeRay
both come from the ``vitrine-api-key`` Secret, never from job metadata). Without one the service
answers 401/403 and the job embeds the increment itself.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger("vitrine.embed")
_PART_OVERHEAD = 256  # multipart headers per image, generously


class ServiceUnavailable(RuntimeError):
    """The service cannot embed this increment; the caller embeds it itself."""


def embed_via_service(todo, card, *, url: str, batch_size: int, io_threads: int, timeout_s: float) -> list:
    """``todo`` (catalogue rows) → output tables as the Embedder returns them, all or nothing."""
    url = url.rstrip("/")
    info = _request(f"{url}/v1/info", timeout_s=timeout_s)
    if info.get("model_id") != card.model_id:
        raise ServiceUnavailable(f"it serves model {info.get('model_id')}, this run embeds with {card.model_id}")
    if list(info.get("classes", [])) != list(card.class_names):
        raise ServiceUnavailable("its class names differ from the model card's")
    try:
        max_bytes = int(info["max_upload_bytes"])
        max_images = int(info.get("max_batch_images", 64))
        return [_embed_batch(todo.slice(start, batch_size), card, url=url, max_images=max_images, max_bytes=max_bytes,
                             io_threads=io_threads, timeout_s=timeout_s)
                for start in range(0, todo.num_rows, batch_size)]
    except (KeyError, TypeError, ValueError) as exc:  # an answer of another shape: another version of the API?
        raise ServiceUnavailable(f"unexpected answer ({type(exc).__name__}: {exc})") from None


def _embed_batch(batch, card, *, url: str, max_images: int, max_bytes: int, io_threads: int, timeout_s: float):
    import numpy as np

    from .stages import embedded_rows, read_verified

    datas, hashes, errors = read_verified(batch, io_threads=io_threads)
    results: dict[int, dict] = {}
    chunks = list(_chunks([(i, d) for i, d in enumerate(datas) if d is not None], max_images, max_bytes))
    # Two requests in flight: one is encoded or decoded here while the service computes the other.
    with ThreadPoolExecutor(max_workers=2) as pool:
        answers = pool.map(lambda c: _request(f"{url}/v1/embed?model_id={card.model_id}", files=c,
                                              timeout_s=timeout_s), chunks)
        for answer in answers:
            if answer.get("model_id") != card.model_id:
                raise ServiceUnavailable(f"it switched to model {answer.get('model_id')} during the run")
            for item in answer["items"]:
                results[int(item["key"])] = item
    done, emb, probs, zero = [], [], [], []
    for i, data in enumerate(datas):
        if data is None:
            continue
        item = results.get(i)
        if item is None:
            raise ServiceUnavailable(f"its answer lacks item {i} of a batch")
        if "error" in item:
            errors[i] = str(item["error"])
            continue
        done.append(i)
        emb.append(item["embedding"])
        probs.append(item["probabilities"])
        zero.append(bool(item["zero_embedding"]))
    dim, classes = int(card.embedding_dim), list(card.class_names)
    return embedded_rows(batch, hashes, errors, done, np.asarray(emb, np.float32).reshape(len(done), dim),
                         np.asarray(probs, np.float32).reshape(len(done), len(classes)), np.asarray(zero, bool),
                         model_id=card.model_id, class_names=classes, dim=dim)


def _chunks(items: list[tuple[int, bytes]], max_images: int, max_bytes: int):
    chunk, size = [], 0
    for i, data in items:
        need = len(data) + _PART_OVERHEAD
        if need > max_bytes:
            raise ServiceUnavailable(f"an image of {len(data):,} bytes is over its upload limit of {max_bytes:,}")
        if chunk and (len(chunk) == max_images or size + need > max_bytes):
            yield chunk
            chunk, size = [], 0
        chunk.append((i, data))
        size += need
    if chunk:
        yield chunk


def api_key(environ=None) -> str:
    """The key this job sends to /v1/embed: ``$VITRINE_API_KEY``, else the file ``$VITRINE_API_KEY_FILE``."""
    environ = os.environ if environ is None else environ
    if environ.get("VITRINE_API_KEY"):
        return environ["VITRINE_API_KEY"].strip()
    path = environ.get("VITRINE_API_KEY_FILE")
    if not path:
        return ""
    try:
        with open(path, encoding="utf-8") as f:
            return (f.readline() or "").strip()
    except OSError as exc:
        log.warning("cannot read the API key file named by VITRINE_API_KEY_FILE (%s): %s", path, exc)
        return ""


def _request(url: str, *, files: list[tuple[int, bytes]] | None = None, timeout_s: float) -> dict:
    data, headers = None, {"Accept": "application/json"}
    if files is not None:
        key = api_key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        boundary = uuid.uuid4().hex
        parts = []
        for key, payload in files:
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{key}"\r\n'
                         f"Content-Type: application/octet-stream\r\n\r\n".encode() + payload + b"\r\n")
        data = b"".join(parts) + f"--{boundary}--\r\n".encode()
        headers["Content-Type"] = f"multipart/form-data; boundary={boundary}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers),
                                    timeout=timeout_s) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            reason = json.loads(exc.read()).get("error", "")
        except Exception:
            reason = ""
        raise ServiceUnavailable(f"{url} answered {exc.code} {reason}".strip()) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ServiceUnavailable(f"{url}: {exc}") from None
