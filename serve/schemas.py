"""The API's request parameters and response bodies as pydantic models, so that ``/docs`` and
``/openapi.json`` describe every route. The routes build plain dicts of these shapes (the same
JSON clients have always had); tests validate real answers against these models."""

from pydantic import BaseModel, ConfigDict, Field

# A metadata value: a catalogue manifest's scalar column (serve/item_metadata.py).
MetadataValue = str | int | float | bool


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorBody(_Out):
    error: str = Field(description="Why the request failed, in words.")
    status: int = Field(description="The HTTP status code, repeated.")


class ClassScore(_Out):
    name: str
    probability: float = Field(ge=0, le=1)


class Hit(_Out):
    item_id: str
    category: str | None
    distance: float = Field(description="Cosine distance, 1 - cosine similarity.")
    similarity: float = Field(ge=0, le=100, description="Cosine similarity in percent (0-100), rounded to 0.01.")
    image_url: str = Field(description="GET it for the catalogue image.")
    sub_category: str | None = Field(None, description="Nested catalogues only.")
    metadata: dict[str, MetadataValue] | None = Field(
        None, description="The catalogue manifest's other scalar columns for this item (name, price, URL, ...); "
                          "absent when it has none. Never image locations or paths.")


class SearchResponse(_Out):
    model_id: str
    index_id: str
    predicted: str
    classes: list[ClassScore]
    category: str | None = Field(description="The category searched in; null = all.")
    k: int
    score_threshold: float = Field(0.0, description="Hits below this similarity (percent) were left out.")
    results: list[Hit]
    took_ms: float


class BatchQuery(_Out):
    key: str = Field(description="The image's multipart filename.")
    predicted: str | None = None
    category: str | None = None
    error: str | None = Field(None, description="Why this image was not searched (its result list is empty).")


class BatchSearchResponse(_Out):
    model_id: str
    index_id: str
    k: int
    score_threshold: float
    queries: list[BatchQuery] = Field(description="One per image, in the order sent.")
    results: list[list[Hit]] = Field(description="One result list per image, in the order sent.")
    took_ms: float


class SimilarResponse(_Out):
    model_id: str
    index_id: str
    item_id: str
    item_category: str | None
    category: str | None = Field(description="The category searched in; null = all.")
    k: int
    score_threshold: float
    results: list[Hit] = Field(description="Best first; never the item itself.")
    took_ms: float


class ClassifyResponse(_Out):
    model_id: str
    predicted: str
    classes: list[ClassScore]
    took_ms: float


class ExplainResponse(_Out):
    model_id: str
    predicted: str = Field(description="The class explained: the predicted one.")
    probability: float = Field(ge=0, le=1)
    classes: list[ClassScore]
    method: str = Field(description="`gradcam` (the last convolutional layer) or `saliency` (input gradients).")
    layer: str = Field(description="The layer Grad-CAM read (nested models joined by /), `input` for saliency.")
    empty: bool = Field(description="The heatmap is all zeros: no region of that layer speaks for the class (its "
                                    "evidence is an absence); `method=saliency` still shows what the class is sensitive to.")
    heatmap_shape: list[int] = Field(description="[height, width] of the heatmap: the model input's.")
    heatmap_png: str = Field(description="The heatmap itself, base64 8-bit grayscale PNG of heatmap_shape "
                                         "(255 = where the class's evidence is strongest).")
    overlay_png: str = Field(description="base64 PNG: the heatmap's colours over the upload, where the model looked.")
    overlay_size: list[int] = Field(description="[width, height] of the overlay: the upload's, longer side at most 512.")
    input_box: list[float] = Field(description="[y0, y1, x0, x1] in the upload's pixels: the region the model input "
                                               "was made from (the preprocessing's crop), in the upload turned by "
                                               "input_angle.")
    input_angle: float = Field(0.0, description="Degrees, counter-clockwise, that a model which deskews turned the "
                                                "upload by (about the object's centre) before cutting input_box; 0 "
                                                "for models that do not.")
    took_ms: float


class EmbedItem(_Out):
    key: str
    embedding: list[float] | None = None
    probabilities: list[float] | None = None
    zero_embedding: bool | None = None
    error: str | None = None


class EmbedResponse(_Out):
    model_id: str
    embedding_dim: int
    classes: list[str]
    items: list[EmbedItem]
    took_ms: float


class Sample(_Out):
    item_id: str
    category: str | None
    image_url: str


class SamplesResponse(_Out):
    samples: list[Sample]


class Retrying(_Out):
    model_id: str
    index_id: str | None
    attempts: int
    next_try_in_s: float
    last_error: str


class InfoResponse(_Out):
    api_version: str
    model_id: str
    index_id: str | None
    index_version: str | None
    index_published_at: float | None
    items: int
    embedding_dim: int
    classes: list[str]
    categories: list[str]
    max_upload_bytes: int
    max_pixels: int
    max_request_pixels: int
    max_batch_images: int
    max_search_batch_images: int
    default_k: int
    max_k: int
    refused: list[str]
    retrying: list[Retrying]
    api_key_required: dict[str, bool]


class HealthResponse(_Out):
    status: str
    model_id: str
    index_id: str | None


def errors(*statuses: int) -> dict:
    """``responses=`` for a route: these statuses answer :class:`ErrorBody`."""
    return {s: {"model": ErrorBody} for s in statuses}


def image_body(*, many: bool = False) -> dict:
    """``openapi_extra=`` for routes that read the image(s) from the body themselves (with size,
    time and pixel limits: serve/uploads.py), which FastAPI cannot see in their signatures."""
    binary = {"type": "string", "format": "binary"}
    form = {"type": "object", "required": ["file"],
            "properties": {"file": {"type": "array", "items": binary} if many else binary}}
    content = {"multipart/form-data": {"schema": form}}
    if not many:  # one image may also be the raw body
        content["application/octet-stream"] = {"schema": binary}
        content["image/*"] = {"schema": binary}
    what = ("the images: one multipart part named 'file' each, with a unique filename" if many
            else "the image: a multipart part named 'file', or the raw body")
    return {"requestBody": {"required": True, "description": what, "content": content}}
