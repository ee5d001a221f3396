"""The bytes of catalogue images: many read at once (local files or object storage), the
``content_sha256`` filled in where a catalogue does not carry it, and the media type the
item-image route may serve them as."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.compute as pc

from . import storage
from .catalogue import content_sha256

# What the item-image route serves, by the format Pillow finds in the bytes (never by file name:
# a '.png' that holds HTML must not reach a browser as anything it would render).
SERVED_IMAGE_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif"}


def image_media_type(head: bytes) -> str | None:
    """The MIME type of the image whose first bytes are ``head`` (JPEG, PNG, WebP or GIF), from
    its decoded header only (``Image.open`` reads no pixels), or None for anything else."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(head)) as img:
            return SERVED_IMAGE_TYPES.get(img.format or "")
    except Exception:  # not an image, a truncated header, a decompression bomb: not served
        return None


def read_many(uris: list[str], *, threads: int = 16) -> list[bytes | Exception]:
    """The bytes of every URI, in order; a failure is returned in its slot, not raised.

    Local files are read directly; object storage through one filesystem and a thread pool,
    since each request mostly waits on the network.
    """
    if not uris:
        return []
    local = [not storage.is_remote(u) for u in uris]
    fs = None if all(local) else storage.s3_filesystem()

    def one(uri: str, is_local: bool) -> bytes | Exception:
        try:
            if is_local:
                with open(storage.resolve(uri)[1], "rb") as f:
                    return f.read()
            with fs.open_input_stream(uri.split("://", 1)[1], compression=None) as f:
                return f.read()
        except Exception as exc:  # reported per item by the caller
            return exc

    if all(local) or threads <= 1 or len(uris) < 4:
        return [one(u, is_local) for u, is_local in zip(uris, local)]
    with ThreadPoolExecutor(max_workers=min(threads, len(uris))) as pool:
        return list(pool.map(one, uris, local))


def fill_hashes(table: pa.Table, *, threads: int = 16, chunk: int = 4096) -> tuple[pa.Table, list[dict]]:
    """Compute ``content_sha256`` where the catalogue does not carry it, by reading the bytes.

    Returns the table with hashes filled in, minus the items that could not be read, and those
    items as ``{"item_id", "image_uri", "reason"}`` rows.
    """
    hashes = table.column("content_sha256").to_pylist()
    todo = [i for i, h in enumerate(hashes) if h is None]
    if not todo:
        return table, []
    uris = table.column("image_uri").to_pylist()
    ids = table.column("item_id").to_pylist()
    failed: list[dict] = []
    for start in range(0, len(todo), chunk):
        idx = todo[start:start + chunk]
        for i, data in zip(idx, read_many([uris[i] for i in idx], threads=threads)):
            if isinstance(data, Exception):
                failed.append({"item_id": ids[i], "image_uri": uris[i], "reason": f"cannot read image: {data}"})
            else:
                hashes[i] = content_sha256(data)
    pos = table.schema.get_field_index("content_sha256")
    out = table.set_column(pos, "content_sha256", pa.array(hashes, pa.string()))
    if failed:
        out = out.filter(pc.invert(pc.is_null(out.column("content_sha256"))))
    return out, failed
