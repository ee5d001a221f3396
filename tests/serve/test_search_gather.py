"""Concurrent POST /v1/search requests gathered at the ingress (serve/search_gather.py), over real
HTTP: each request gets the answer it gets alone, and one unusable upload in a batch gets its own
4xx while the others in the same batch are answered."""

import io
import threading

import pytest
from PIL import Image

from tests.helpers import http, multipart

pytestmark = pytest.mark.slow

# Long enough that requests started together land in one batch, short enough for a test.
WAIT_S = 0.3


@pytest.fixture(scope="module")
def gather_url(deploy_app, serving_store) -> str:
    return deploy_app(serving_store, search_batch_wait_s=WAIT_S, search_batch_size=32)


@pytest.fixture(scope="module")
def images(gather_url) -> list[bytes]:
    samples = http(gather_url + "/v1/samples?per_category=2").json()["samples"]
    return [http(gather_url + s["image_url"]).body for s in samples[:12]]


def _without_time(r) -> dict:
    out = r.json()
    out.pop("took_ms")
    return out


def _same(a, b, path: str = "") -> None:
    """``a`` == ``b`` but for floats, equal to 1e-4: a forward pass over a batch of 12 and one
    over a batch of 1 differ in the last digit of a probability (0.129765 against 0.129764);
    a similarity, rounded to 0.1, may then round the other way."""
    if isinstance(a, float) or isinstance(b, float):
        tol = 0.1 + 1e-9 if path.endswith(".similarity") else 1e-4
        assert isinstance(a, (int, float)) and isinstance(b, (int, float)) and abs(a - b) <= tol, (path, a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), (path, a, b)
        for k in a:
            _same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), (path, a, b)
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{path}[{i}]")
    else:
        assert a == b, (path, a, b)


def _together(requests: list[tuple[str, bytes, dict]]) -> list:
    """Every request sent at once from its own thread; the answers in order."""
    answers, start = [None] * len(requests), threading.Barrier(len(requests))

    def send(i):
        url, data, headers = requests[i]
        start.wait()
        answers[i] = http(url, data, headers=headers)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return answers


def _queries(url: str, images: list[bytes]) -> list[tuple[str, bytes, dict]]:
    """Different k, categories and thresholds, raw bodies and multipart, one per image."""
    out = []
    for i, data in enumerate(images):
        q = f"{url}/v1/search?k={3 + i}&category={('auto', 'all', 'Trouser')[i % 3]}"
        if i % 4 == 3:
            q += "&score_threshold=99.95"
        if i % 2:
            body, ctype = multipart("file", f"q{i}.png", data)
            out.append((q, body, {"Content-Type": ctype}))
        else:
            out.append((q, data, {"Content-Type": "image/png"}))
    return out


def test_concurrent_searches_answer_as_sequential_ones(gather_url, images):
    queries = _queries(gather_url, images)
    alone = [http(*q[:2], headers=q[2]) for q in queries]
    assert all(r.status == 200 for r in alone), [r.body for r in alone if r.status != 200]
    together = _together(queries)
    assert [r.status for r in together] == [200] * len(queries), [r.body for r in together]
    for i, (a, b) in enumerate(zip(alone, together)):
        _same(_without_time(b), _without_time(a), f"request {i} gathered")
    # Each answer is its own: its k and its category.
    for i, r in enumerate(together):
        out = r.json()
        assert out["k"] == 3 + i and len(out["results"]) <= 3 + i
        assert out["category"] == (out["predicted"], None, "Trouser")[i % 3]
    # Gathered: one batch waits WAIT_S once for all of them; one batch each (two at a time) would
    # keep the last waiting for six rounds of it.
    took = [r.json()["took_ms"] for r in together]
    assert min(took) >= WAIT_S * 1000 * 0.5 and max(took) < WAIT_S * 1000 * 5, took


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def test_one_bad_upload_fails_alone_in_its_batch(gather_url, images):
    url = gather_url + "/v1/search?k=5&category=all"
    good = [(url, data, {"Content-Type": "image/png"}) for data in images[:6]]
    corrupt = (url, b"\x89PNG\r\n\x1a\n this is not a picture", {"Content-Type": "image/png"})
    truncated = (url, images[0][: len(images[0]) // 2], {"Content-Type": "image/png"})
    huge = (url, _png(Image.new("L", (5000, 4000))), {"Content-Type": "image/png"})  # 20 MP > max_pixels
    body, ctype = multipart("other", "x.png", images[1])  # no "file" field: refused before the batch
    no_file = (url, body, {"Content-Type": ctype})
    requests = good[:3] + [corrupt, truncated] + good[3:] + [huge, no_file]
    answers = _together(requests)
    statuses = [r.status for r in answers]
    assert statuses == [200, 200, 200, 400, 400, 200, 200, 200, 413, 400], [r.body for r in answers]
    for r in (answers[3], answers[4], answers[8], answers[9]):
        out = r.json()
        assert set(out) == {"error", "status"} and out["status"] == r.status
    assert "not a usable image" in answers[3].json()["error"]
    assert "too large" in answers[8].json()["error"]
    # The good ones got the answers they get alone.
    for r, (q, data, headers) in zip([answers[i] for i in (0, 1, 2, 5, 6, 7)], good):
        _same(_without_time(r), _without_time(http(q, data, headers=headers)))
