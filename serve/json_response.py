"""The API's JSON responses, encoded by pydantic-core's Rust serializer (FastAPI's own dependency)
instead of the stdlib ``json`` module Starlette's ``JSONResponse`` uses: a search answer of 30 hits
is encoded several times faster, on the event loop every request of a replica shares."""

from __future__ import annotations

from typing import Any

from pydantic_core import to_json
from starlette.responses import JSONResponse as _StarletteJSONResponse


def dumps(content: Any) -> bytes:
    """Compact UTF-8 JSON, the bytes Starlette's encoder writes for the same plain values."""
    return to_json(content)


class JSONResponse(_StarletteJSONResponse):
    def render(self, content: Any) -> bytes:
        return to_json(content)
