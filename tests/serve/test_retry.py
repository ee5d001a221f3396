"""The hot swap's retry schedule and failure classes, without Ray."""

import pytest

from artifacts.index_manifest import IndexLoadError
from serve import versions
from serve.args import AppArgs
from serve.retry import REASON_CHARS, RetryBackoff, short_reason


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_wait_doubles_from_the_base_up_to_the_cap():
    backoff = RetryBackoff(base_s=1.0, cap_s=60.0)
    assert [backoff.delay(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert backoff.delay(10_000) == 60  # no overflow after a very long outage


def test_a_failed_key_is_not_due_until_its_wait_has_passed():
    clock = Clock()
    backoff = RetryBackoff(base_s=1.0, cap_s=60.0, clock=clock)
    key = ("cnn-a", "hnsw-a")
    assert backoff.due(key)
    state = backoff.failed(key, "OSError: disk gone")
    assert (state.attempts, state.last_error) == (1, "OSError: disk gone")
    assert not backoff.due(key)
    clock.now += 0.99
    assert not backoff.due(key)
    clock.now += 0.01
    assert backoff.due(key)
    backoff.failed(key, "OSError: still gone")
    clock.now += 1.5
    assert not backoff.due(key)  # second failure: 2 s
    [(k, state, wait)] = backoff.pending()
    assert (k, state.attempts, state.last_error, wait) == (key, 2, "OSError: still gone", pytest.approx(0.5))
    clock.now += 0.5
    assert backoff.due(key)


def test_success_and_a_changed_candidate_forget_the_key():
    clock = Clock()
    backoff = RetryBackoff(clock=clock)
    a, b = ("m", "i1"), ("m", "i2")
    backoff.failed(a, "x")
    backoff.failed(b, "y")
    backoff.keep_only([b])  # LATEST moved on: the old candidate is no longer tried
    assert [k for k, _, _ in backoff.pending()] == [b]
    backoff.succeeded(b)
    assert backoff.pending() == [] and backoff.due(a) and backoff.due(b)
    backoff.failed(a, "again")
    assert backoff.pending()[0][1].attempts == 1  # a fresh count, not the one from before


def test_bad_schedules_are_refused():
    with pytest.raises(ValueError, match="base_s"):
        RetryBackoff(base_s=0)
    with pytest.raises(ValueError, match="cap_s"):
        RetryBackoff(base_s=10, cap_s=1)


def test_reasons_name_no_storage_locations_and_stay_short():
    reason = short_reason(FileNotFoundError("No such file: '/srv/vitrine/models/m/model.keras' or s3://bucket/x/y"))
    assert reason.startswith("FileNotFoundError: ")
    assert "/srv" not in reason and "bucket" not in reason and "s3://" not in reason
    assert "<path>" in reason
    assert len(short_reason(OSError("x" * 1000))) == REASON_CHARS
    assert short_reason(TimeoutError()) == "TimeoutError"
    assert "\n" not in short_reason(RuntimeError("first line\nTraceback (most recent call last):\n  ..."))


class _RayTaskError(Exception):
    """Shaped like ray.exceptions.RayTaskError when Ray cannot subclass the cause: it carries it."""

    def __init__(self, cause):
        super().__init__("ray task failed")
        self.cause = cause


def test_only_the_versions_own_checks_refuse_it_for_good():
    assert versions.is_permanent(versions.VersionRejected("dim mismatch"))
    assert versions.is_permanent(IndexLoadError("index cut short"))
    assert versions.is_permanent(_RayTaskError(IndexLoadError("index cut short")))
    for transient in (OSError("connection reset"), TimeoutError(), RuntimeError("replica died"),
                      ValueError("File not found: model.keras"), _RayTaskError(OSError("throttled"))):
        assert not versions.is_permanent(transient), transient
    assert short_reason(_RayTaskError(OSError("throttled"))) == "OSError: throttled"


def test_the_warm_timeout_is_an_app_argument():
    assert AppArgs().warm_timeout_s == 120
    assert AppArgs(warm_timeout_s=5).warm_timeout_s == 5
    with pytest.raises(ValueError):
        AppArgs(warm_timeout_s=0)
