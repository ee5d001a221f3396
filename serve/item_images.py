"""Catalogue images for ``GET /v1/items/{id}/image``: opened only under the catalogue roots, typed
by what the bytes decode as, streamed in chunks off the event loop.

Whatever an index row says, only files under the roots are opened (the app's configured
``catalogue_roots``, else those the index recorded; none recorded: nothing). Errors name the
item, never the storage URI; the log keeps the details.
"""

from __future__ import annotations

import logging

from starlette.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse

from artifacts import catalogue, image_bytes, image_roots, storage

log = logging.getLogger("vitrine.serve")
STREAM_CHUNK = 256 * 1024


class ItemImageError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


async def item_image_response(item_id: str, uri: str, roots: tuple[str, ...]) -> StreamingResponse:
    try:
        uri = await run_in_threadpool(image_roots.confine, uri, roots)
    except catalogue.CatalogueError as exc:
        log.warning("item %s: not serving its image: %s", item_id, exc)
        raise ItemImageError(404, f"the image of item {item_id!r} is not served") from None
    stream = None
    try:
        fs, path = storage.resolve(uri)
        stream = await run_in_threadpool(fs.open_input_stream, path)
        head = await run_in_threadpool(stream.read, STREAM_CHUNK)
    except Exception as exc:
        if stream is not None:
            stream.close()
        log.warning("item %s: cannot read its image: %s", item_id, exc)
        raise ItemImageError(404, f"the image of item {item_id!r} is not readable") from None
    # The type of what the bytes decode as, not of the file name.
    media = await run_in_threadpool(image_bytes.image_media_type, head)
    if media is None:
        stream.close()
        log.warning("item %s: its file is not a JPEG, PNG, WebP or GIF image; not serving it", item_id)
        raise ItemImageError(415, f"the image of item {item_id!r} is not a JPEG, PNG, WebP or GIF image")

    async def chunks():
        try:
            yield head
            while chunk := await run_in_threadpool(stream.read, STREAM_CHUNK):
                yield chunk
        finally:
            stream.close()

    return StreamingResponse(chunks(), media_type=media,
                             headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"})
