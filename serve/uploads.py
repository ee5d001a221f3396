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


def _form_parts(body: bytes, content_type: str):
    # The stdlib MIME parser reads form-data given its Content-Type header; no extra dependency.
    message = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode("latin-1")
                                                  + b"\r\n\r\n" + body)
    if not message.is_multipart():
        raise UploadError(400, "malformed multipart body (check the boundary)")
    return list(message.iter_parts())


def images_from_body(body: bytes, content_type: str, *, limit: int, field: str = "file") -> list[tuple[str, bytes]]:
    """Every ``file`` part of a multipart form as ``(filename, bytes)``, in order: a batch of
    images keyed by their file names (the embedding job sends item ids)."""
    if not content_type.lower().startswith("multipart/form-data"):
        raise UploadError(400, f"send the images as multipart/form-data, one part named {field!r} each")
    images = []
    for part in _form_parts(body, content_type):
        if part.get_param("name", header="content-disposition") != field:
            continue
        key = part.get_filename()
        if not key:
            raise UploadError(400, f"every {field!r} part needs a filename (the key its result comes back under)")
        images.append((key, part.get_payload(decode=True) or b""))
        if len(images) > limit:
            raise UploadError(413, f"more than {limit} images in one request")
    if not images:
        raise UploadError(400, f"no multipart fields named {field!r}")
    if len({k for k, _ in images}) != len(images):
        raise UploadError(400, "two images have the same filename")
    return images


def image_from_body(body: bytes, content_type: str, *, field: str = "file") -> bytes:
    """The image bytes: the ``file`` part of a multipart form, otherwise the body itself."""
    if content_type.lower().startswith("multipart/form-data"):
        names = []
        for part in _form_parts(body, content_type):
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
