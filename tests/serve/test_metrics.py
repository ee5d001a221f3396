"""The app's metrics reach Ray's metrics agent and come out in Prometheus text format."""

import time
import urllib.request

import pytest

from artifacts.ray_session import metrics_url
from tests.helpers import http

pytestmark = pytest.mark.slow


def test_request_counts_latency_and_index_version_are_exported(app_url):
    info = http(app_url + "/v1/info").json()
    sample = http(app_url + "/v1/samples").json()["samples"][0]
    image = http(app_url + sample["image_url"]).body
    for _ in range(3):
        assert http(app_url + "/v1/search?k=3", image).status == 200
    assert http(app_url + "/v1/search", b"not an image").status == 400
    url = metrics_url()
    assert url, "not connected to Ray"
    deadline, text = time.monotonic() + 90, ""
    while time.monotonic() < deadline:  # the agent exports every few seconds
        text = urllib.request.urlopen(url, timeout=10).read().decode()
        # Other endpoints' 400s (earlier tests) may be exported already: wait for search's own.
        search_400 = any('endpoint="search"' in line and 'status="400"' in line for line in text.splitlines())
        # An earlier deployment's replica may have exported its gauge too: wait for this one's.
        if search_400 and f'index_id="{info["index_id"]}"' in text:
            break
        time.sleep(2)
    lines = [line for line in text.splitlines() if line.startswith("ray_vitrine_") or line.startswith("vitrine_")]
    requests = [line for line in lines if "vitrine_requests_total{" in line and 'endpoint="search"' in line]
    assert any('status="200"' in line for line in requests), lines[:20]
    assert any('status="400"' in line for line in requests), lines[:20]
    assert any("vitrine_request_duration_seconds_bucket" in line for line in lines)
    # Prometheus names (_total, _seconds): counters once, not also as Ray's bug-compatible gauge.
    assert not any(line.split("{")[0].endswith("vitrine_requests") for line in lines), lines[:20]
    version = [line for line in lines if "vitrine_index_published_timestamp_seconds" in line]
    assert any(f'index_id="{info["index_id"]}"' in line for line in version), version
