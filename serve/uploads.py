"""Reading an uploaded image from an HTTP request: a multipart field named ``file`` or the raw
body, with a size limit enforced while reading (the Serve proxy has none of its own)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field


class UploadError(ValueError):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


# Past the limit the rest of a body is still read and dropped, up to this multiple of the limit,
# so the client gets its 413 instead of a connection reset while it is still sending.
DRAIN_FACTOR = 4


async def _drain(chunks, budget: int) -> None:
    async for chunk in chunks:
        budget -= len(chunk)
        if budget < 0:
            return


async def _timed(request, *, timeout_s: float, idle_timeout_s: float):
    """The body's chunks, refused with 408 when the whole body takes longer than ``timeout_s`` or
    the client sends nothing for ``idle_timeout_s``: a slow client holds one of the replica's
    ``max_ongoing_requests`` slots while it sends, so it must not hold it for long."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    stream = request.stream().__aiter__()
    while True:
        left = deadline - loop.time()
        try:
            chunk = await asyncio.wait_for(stream.__anext__(), min(idle_timeout_s, max(left, 0.0)))
        except StopAsyncIteration:
            return
        except asyncio.TimeoutError:
            if left <= idle_timeout_s:
                raise UploadError(408, f"upload not complete within {timeout_s:g} s") from None
            raise UploadError(408, f"upload stalled: nothing received for {idle_timeout_s:g} s") from None
        yield chunk


async def read_body(request, limit: int, *, timeout_s: float = 60.0, idle_timeout_s: float = 10.0) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed ``limit`` bytes and with 408
    when it arrives too slowly (see :func:`_timed`)."""
    chunks = _timed(request, timeout_s=timeout_s, idle_timeout_s=idle_timeout_s)
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise UploadError(400, f"bad Content-Length header {declared!r}") from None
        if size > limit:
            if size <= DRAIN_FACTOR * limit:
                await _drain(chunks, size)
            raise UploadError(413, f"upload of {size:,} bytes exceeds the limit of {limit:,} bytes")
    parts, size = [], 0
    async for chunk in chunks:  # chunked uploads have no Content-Length
        size += len(chunk)
        if size > limit:
            await _drain(chunks, (DRAIN_FACTOR - 1) * limit)
            raise UploadError(413, f"upload exceeds the limit of {limit:,} bytes")
        parts.append(chunk)
    return b"".join(parts)


# Limits of the multipart parser. An image part has two or three headers (disposition, type,
# maybe a length); browsers send well under 1 KiB of them. Parts past what an endpoint can use,
# and header bytes past HEADER_BYTES in all, are refused at once, so a body of thousands of
# empty parts or of one huge header costs a few milliseconds, not seconds of parsing.
MAX_PART_HEADERS = 8
MAX_HEADER_BYTES = 4096  # one header line
HEADER_BYTES = 64 * 1024  # all header lines of a body together
EXTRA_PARTS = 8  # form fields next to the image parts (a page may add its own)
_FEED = 64 * 1024  # bytes handed to the parser at a time: limits are checked at least this often
_MAX_BOUNDARY = 200  # RFC 2046 allows 70; a little slack for odd clients


@dataclass
class FormPart:
    name: str | None = None
    filename: str | None = None
    chunks: list = field(default_factory=list)

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)


def _text(raw: bytes) -> str:
    # Browsers send UTF-8 in quoted parameters; the HTTP default is Latin-1.
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _form_parts(body: bytes, content_type: str, *, keep: str, max_parts: int) -> list[FormPart]:
    """The parts of a multipart/form-data ``body``, in order; only parts named ``keep`` keep
    their data. python-multipart is a streaming state machine with per-header limits and no
    recursion (the stdlib MIME parser it replaces recursed on nested comments in a header)."""
    from python_multipart.exceptions import MultipartParseError
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary", b"")
    if not boundary or len(boundary) > _MAX_BOUNDARY:
        raise UploadError(400, "malformed multipart body (check the boundary in the Content-Type header)")
    parts: list[FormPart] = []
    header = {"field": bytearray(), "value": bytearray(), "total": 0}

    def count(data, start, end):
        header["total"] += end - start
        if header["total"] > HEADER_BYTES:
            raise UploadError(400, f"multipart headers exceed {HEADER_BYTES:,} bytes")

    def on_part_begin():
        if len(parts) >= max_parts:
            raise UploadError(413, f"more than {max_parts} parts in one multipart body")
        parts.append(FormPart())

    def on_header_field(data, start, end):
        count(data, start, end)
        header["field"] += data[start:end]

    def on_header_value(data, start, end):
        count(data, start, end)
        header["value"] += data[start:end]

    def on_header_end():
        if bytes(header["field"]).strip().lower() == b"content-disposition":
            _, options = parse_options_header(bytes(header["value"]))
            part = parts[-1]
            part.name = _text(options[b"name"]) if b"name" in options else None
            part.filename = _text(options[b"filename"]) if b"filename" in options else None
        header["field"].clear()
        header["value"].clear()

    def on_part_data(data, start, end):
        part = parts[-1]
        if part.name == keep:
            part.chunks.append(bytes(data[start:end]))

    parser = MultipartParser(boundary, {"on_part_begin": on_part_begin, "on_header_field": on_header_field,
                                        "on_header_value": on_header_value, "on_header_end": on_header_end,
                                        "on_part_data": on_part_data},
                             max_header_count=MAX_PART_HEADERS, max_header_size=MAX_HEADER_BYTES)
    try:
        for offset in range(0, len(body), _FEED):
            parser.write(body[offset:offset + _FEED])
        parser.finalize()
    except MultipartParseError as exc:
        raise UploadError(400, f"malformed multipart body (check the boundary): {_short(exc)}") from None
    if not parts:
        raise UploadError(400, "malformed multipart body (check the boundary): no parts found")
    return parts


def _short(exc: BaseException, limit: int = 120) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "…"


def images_from_body(body: bytes, content_type: str, *, limit: int, field: str = "file") -> list[tuple[str, bytes]]:
    """Every ``file`` part of a multipart form as ``(filename, bytes)``, in order: a batch of
    images keyed by their file names (the embedding job sends item ids)."""
    if not content_type.lower().startswith("multipart/form-data"):
        raise UploadError(400, f"send the images as multipart/form-data, one part named {field!r} each")
    images = []
    for part in _form_parts(body, content_type, keep=field, max_parts=limit + EXTRA_PARTS):
        if part.name != field:
            continue
        if not part.filename:
            raise UploadError(400, f"every {field!r} part needs a filename (the key its result comes back under)")
        images.append((part.filename, part.data))
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
        parts = _form_parts(body, content_type, keep=field, max_parts=1 + EXTRA_PARTS)
        for part in parts:
            if part.name == field:
                data = part.data
                if not data:
                    raise UploadError(400, f"the multipart field {field!r} is empty")
                return data
        names = ", ".join(_short(str(p.name), 40) for p in parts)
        raise UploadError(400, f"no multipart field named {field!r} (got {names or 'none'})")
    if not body:
        raise UploadError(400, f"no image: send it as the request body or as a multipart field named {field!r}")
    return body
