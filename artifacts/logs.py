"""One log format for every job, trial, actor and replica: ``time level logger: message``."""

from __future__ import annotations

import logging
import os

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: str | None = None) -> None:
    """Configure vitrine's loggers once per process (``VITRINE_LOG_LEVEL`` overrides)."""
    level = (level or os.environ.get("VITRINE_LOG_LEVEL") or "INFO").upper()
    logger = logging.getLogger("vitrine")
    logger.setLevel(level)
    if not any(getattr(h, "_vitrine", False) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(FORMAT, "%Y-%m-%dT%H:%M:%S"))
        handler._vitrine = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False
    # TensorFlow's C++ start-up chatter hides our own progress lines.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
