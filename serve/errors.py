"""The API's one error shape, ``{"error": "<reason>", "status": <code>}``, for every status:
the app's own refusals (:class:`ApiError`), FastAPI's routing errors (404, 405 with ``Allow``)
and its parameter validation (422). Every 503 says when to try again (``Retry-After``)."""

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

# Seconds a client is asked to wait on a 503 the app answers itself (a full Classifier or Search
# queue, nothing served yet, no live replica); the proxy's own rejections carry
# serve/config.yaml's backpressure_config.retry_after_s.
RETRY_AFTER_S = 1


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def error_response(status: int, message: str, *, retry_after_s: int = RETRY_AFTER_S) -> JSONResponse:
    response = JSONResponse({"error": message, "status": status}, status_code=status)
    if status == 503:
        response.headers["Retry-After"] = str(retry_after_s)
    return response


def _where(loc) -> str:
    # ("query", "k") -> "query parameter k"; ("path", "item_id") -> "path parameter item_id"
    parts = [str(p) for p in loc]
    if len(parts) >= 2 and parts[0] in ("query", "path", "header", "cookie"):
        return f"{parts[0]} parameter {'.'.join(parts[1:])}"
    return ".".join(parts) or "request"


def validation_message(errors) -> str:
    """FastAPI's validation errors as one sentence: which parameter, and what is wrong with it."""
    return "; ".join(f"{_where(e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in errors) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    """Answer FastAPI's own errors in the documented shape."""

    @app.exception_handler(StarletteHTTPException)
    async def _routing_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # No such route (404), wrong method (405, keeping its Allow header), ...
        response = error_response(exc.status_code, str(exc.detail))
        response.headers.update(exc.headers or {})
        return response

    @app.exception_handler(RequestValidationError)
    async def _invalid_parameters(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, validation_message(exc.errors()))
