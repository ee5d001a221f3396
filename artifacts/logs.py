"""One log format for every job, trial, actor and replica.

``time level logger: message`` for people (the default), or one JSON object per line for a log
pipeline (``VITRINE_LOG_FORMAT=json``): ``{"ts", "level", "logger", "msg", "pid"}`` plus the Ray
context where there is one (``job_id``, ``node_id``, ``actor_id``, Serve's ``replica``).
"""

from __future__ import annotations

import json
import logging
import os
from datetime import datetime, timezone

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FORMAT_ENV = "VITRINE_LOG_FORMAT"


class JsonFormatter(logging.Formatter):
    def __init__(self):
        super().__init__()
        self._context: dict | None = None

    def _ray_context(self) -> dict:
        if self._context is None:  # once per process: it does not change
            context = {}
            try:
                import ray

                if ray.is_initialized():
                    rc = ray.get_runtime_context()
                    context = {"job_id": rc.get_job_id(), "node_id": rc.get_node_id(),
                               "actor_id": rc.get_actor_id()}
                    try:
                        from ray import serve

                        context["replica"] = serve.get_replica_context().replica_id.unique_id
                    except Exception:  # not a Serve replica
                        pass
            except Exception:
                pass
            self._context = {k: v for k, v in context.items() if v}
        return self._context

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
               "level": record.levelname, "logger": record.name, "msg": record.getMessage(), "pid": record.process,
               **self._ray_context()}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(level: str | None = None) -> None:
    """Configure vitrine's loggers once per process (``VITRINE_LOG_LEVEL``, ``VITRINE_LOG_FORMAT``)."""
    level = (level or os.environ.get("VITRINE_LOG_LEVEL") or "INFO").upper()
    logger = logging.getLogger("vitrine")
    logger.setLevel(level)
    if not any(getattr(h, "_vitrine", False) for h in logger.handlers):
        handler = logging.StreamHandler()
        if os.environ.get(FORMAT_ENV, "").lower() == "json":
            handler.setFormatter(JsonFormatter())
        else:
            handler.setFormatter(logging.Formatter(FORMAT, "%Y-%m-%dT%H:%M:%S"))
        handler._vitrine = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False
    # TensorFlow's C++ start-up chatter hides our own progress lines.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
