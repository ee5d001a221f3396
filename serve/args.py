"""The app's arguments: the ``args:`` block of ``serve/config.yaml``, checked before anything starts.

A pydantic model because Ray Serve validates a typed app builder's arguments with it, so a typo
in the config fails the deploy with the list of valid keys instead of serving a wrong default.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator


def search_slot_name(slot: int) -> str:
    """The Search deployment of slot ``slot``; slot 0 keeps the name ``Search``, so configs
    written before sharding still apply to it."""
    return "Search" if slot == 0 else f"Search-{slot}"


class AppArgs(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    storage: str = ""  # storage root; "" = $VITRINE_STORAGE or ./.vitrine (resolved in each replica)
    # "index": the model the served index was built with (model and index always agree);
    # a model id pins that model and refuses indexes built with any other.
    model: str = "index"
    index: str = "latest"  # "latest" follows indexes/LATEST; an index id pins one
    poll_interval_s: float = Field(10.0, ge=0.5)
    # Longest wait for a replica to load a new model or index; past it the swap is retried later.
    warm_timeout_s: float = Field(120.0, gt=0)
    max_upload_bytes: int = Field(10 * 1024 * 1024, gt=0)
    # Decoding budget. 16 MP covers a 4608×3456 phone photo; a pixel bomb (a 35 KB PNG that
    # claims 36 MP costs ~0.5 s of decoding) is refused from its header, before any decoding.
    max_pixels: int = Field(16_000_000, gt=0)
    # POST /v1/embed and /v1/search/batch: all images of one request together, from their headers,
    # before decoding.
    max_request_pixels: int = Field(64_000_000, gt=0)
    # Slow bodies: the whole upload within upload_timeout_s, never idle for upload_idle_timeout_s.
    upload_timeout_s: float = Field(60.0, gt=0)
    upload_idle_timeout_s: float = Field(10.0, gt=0)
    default_k: int = Field(30, ge=1)
    max_k: int = Field(200, ge=1)
    # Concurrent POST /v1/search requests answered together by one Classifier and one Search call
    # (serve/search_gather.py): at most this many, waiting at most this long for more (0: take
    # what is in flight; a batch forms while the one before it is out).
    search_batch_size: int = Field(32, ge=1)
    search_batch_wait_s: float = Field(0.0, ge=0)
    search_ef: int = Field(0, ge=0)  # hnswlib ef at query time; 0 = the index's own setting
    # Search deployments (slots) serving an index's shards (artifacts/index_shards.py): slot s is
    # deployment "Search" (s = 0) or "Search-<s>" and holds shards s, s + slots, ...
    search_shards: int = Field(1, ge=1, le=64)
    # What one Search replica may hold: a replica whose shards' files (plus a per-item allowance)
    # exceed it refuses that index version, and the ingress keeps serving the one it has. 0 = no limit.
    search_memory_budget_bytes: int = Field(0, ge=0)
    versions_kept: int = Field(2, ge=1)  # per replica: the serving version and the one before it
    # API keys (serve/auth.py): a file path, never the keys. "" = $VITRINE_API_KEYS_FILE; /v1/embed
    # always needs a key with scope "embed"; classify and search need one only with search_requires_key.
    api_keys_file: str = ""
    search_requires_key: bool = False
    # POST /v1/embed (the nightly job's small increments): images per request, within max_upload_bytes.
    max_batch_images: int = Field(256, ge=1)
    # POST /v1/search/batch: images per request (each answers up to max_k hits), within
    # max_upload_bytes and max_request_pixels.
    max_search_batch_images: int = Field(32, ge=1)
    # Origins (https://shop.example) whose pages may call the API from a browser (CORS); empty =
    # none: the app's own page is same-origin and needs none.
    cors_origins: tuple[str, ...] = ()
    # GET /v1/items/{id}/image opens only files under these prefixes (paths or s3://...); empty =
    # the roots the served index recorded from its embedding run. Set it to pin them here.
    catalogue_roots: tuple[str, ...] = ()

    @field_validator("model", "index")
    @classmethod
    def _selector(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value.strip()
