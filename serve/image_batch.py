"""Several images of one request (``POST /v1/embed``, ``POST /v1/search/batch``) turned into model
input: parsed, checked against the request's pixel budget from their headers before anything is
decoded, then preprocessed one by one, each failure kept as that image's reason."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from artifacts.preprocess import PreprocessSpec, header_pixels, preprocess_or_reason

from .uploads import UploadError, images_from_body


@dataclass
class ImageBatch:
    keys: list[str]  # every image's multipart filename, in the order sent
    pixels: list[np.ndarray]  # model input of the usable ones, in order
    rejected: dict[str, str] = field(default_factory=dict)  # key -> why it is not usable


def preprocess_batch(body: bytes, content_type: str, spec: PreprocessSpec, *, limit: int, max_pixels: int,
                     max_request_pixels: int) -> ImageBatch:
    """At most ``limit`` images; 413 when their pixels together exceed ``max_request_pixels``."""
    images = images_from_body(body, content_type, limit=limit)
    total = sum(header_pixels(data) for _, data in images)
    if total > max_request_pixels:
        raise UploadError(413, f"the images of this request have {total:,} pixels together, the "
                               f"limit is {max_request_pixels:,}: send fewer per request")
    batch = ImageBatch(keys=[k for k, _ in images], pixels=[])
    for key, data in images:
        x, reason = preprocess_or_reason(data, spec, max_pixels=max_pixels)
        if x is None:
            batch.rejected[key] = reason
        else:
            batch.pixels.append(x)
    return batch
