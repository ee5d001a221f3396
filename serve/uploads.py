"""Reading an uploaded image from an HTTP request: a multipart field named ``file`` or the raw
body, with a size limit enforced while reading (the Serve proxy has none of its own)."""

from __future__ import annotations

from email.parser import BytesParser
from email.policy import HTTP


class UploadError(ValueError):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


# Past the limit the rest of a body is still read and dropped, up to this multiple of the limit,
# so the client gets its 413 instead of a connection reset while it is still sending.
DRAIN_FACTOR = 4


async def _drain(request, budget: int) -> None:
    async for chunk in request.stream():
        budget -= len(chunk)
        if budget < 0:
            return


async def read_body(request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise UploadError(400, f"bad Content-Length header {declared!r}") from None
        if size > limit:
            if size <= DRAIN_FACTOR * limit:
                await _drain(request, size)
            raise UploadError(413, f"upload of {size:,} bytes exceeds the limit of {limit:,} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():  # chunked uploads have no Content-Length
        size += len(chunk)
        if size > limit:
            await _drain(request, (DRAIN_FACTOR - 1) * limit)
            raise UploadError(413, f"upload exceeds the limit of {limit:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def image_from_body(body: bytes, content_type: str, *, field: str = "file") -> bytes:
    """The image bytes: the ``file`` part of a multipart form, otherwise the body itself."""
    if content_type.lower().startswith("multipart/form-data"):
        # The stdlib MIME parser reads form-data given its Content-Type header; no extra dependency.
        message = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode("latin-1")
                                                      + b"\r\n\r\n" + body)
        if not message.is_multipart():
            raise UploadError(400, "malformed multipart body (check the boundary)")
        names = []
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            names.append(name)
            if name == field:
                data = part.get_payload(decode=True) or b""
                if not data:
                    raise UploadError(400, f"the multipart field {field!r} is empty")
                return data
        raise UploadError(400, f"no multipart field named {field!r} (got {', '.join(map(str, names)) or 'none'})")
    if not body:
        raise UploadError(400, f"no image: send it as the request body or as a multipart field named {field!r}")
    return body
