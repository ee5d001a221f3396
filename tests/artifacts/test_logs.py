"""The log format: readable by default, one JSON object per line on request."""

import json
import logging
import subprocess
import sys


def _log_line(env: dict) -> str:
    code = ("from artifacts.logs import setup_logging; import logging; setup_logging(); "
            "logging.getLogger('vitrine.test').warning('index %s refused', 'hnsw-x')")
    import os

    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True,
                          check=True)
    return done.stderr.strip().splitlines()[-1]


def test_default_format_is_for_people():
    line = _log_line({"VITRINE_LOG_FORMAT": ""})
    assert line.endswith("WARNING vitrine.test: index hnsw-x refused")


def test_json_format_is_one_object_per_line():
    record = json.loads(_log_line({"VITRINE_LOG_FORMAT": "json"}))
    assert record["level"] == "WARNING" and record["logger"] == "vitrine.test"
    assert record["msg"] == "index hnsw-x refused" and record["ts"].endswith("+00:00") and record["pid"] > 0


def test_json_formatter_keeps_tracebacks():
    from artifacts.logs import JsonFormatter

    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("vitrine.x", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    out = json.loads(JsonFormatter().format(record))
    assert "ValueError: boom" in out["exc"]
