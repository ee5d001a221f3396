"""Fashion-MNIST from the standard IDX files, from a directory or an object-storage prefix.

Where the data comes from, first match wins: an explicit ``source`` (a directory or ``s3://``
prefix), ``$FASHION_MNIST_DIR``, a cached download, or the official mirror (checked against its
published MD5 sums). A corrupt or truncated file is reported with its name and what is wrong.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from artifacts import storage

log = logging.getLogger("vitrine.data")

ENV_VAR = "FASHION_MNIST_DIR"
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
OFFICIAL_MIRROR = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
# MD5 sums published with the official release (github.com/zalandoresearch/fashion-mnist).
OFFICIAL_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
_IMAGES_MAGIC = 0x00000803
_LABELS_MAGIC = 0x00000801


class DatasetNotFoundError(FileNotFoundError):
    pass


class IdxFormatError(ValueError):
    """An IDX file is corrupt, truncated or of the wrong kind."""


@dataclass
class FashionMNIST:
    train_images: np.ndarray  # uint8 (N, 28, 28)
    train_labels: np.ndarray  # uint8 (N,)
    test_images: np.ndarray
    test_labels: np.ndarray
    source: str
    sha256: dict[str, str] = field(default_factory=dict)
    class_names: list[str] = field(default_factory=lambda: list(CLASS_NAMES))


def parse_idx(data: bytes, *, name: str, expect_magic: int) -> np.ndarray:
    """Parse one IDX file (gzip-compressed or not) into a uint8 array."""
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise IdxFormatError(f"{name}: corrupt or truncated gzip stream ({exc})") from None
    if len(data) < 8:
        raise IdxFormatError(f"{name}: only {len(data)} bytes, too short for an IDX header")
    magic = int.from_bytes(data[0:4], "big")
    if magic != expect_magic:
        kind = {_IMAGES_MAGIC: "images", _LABELS_MAGIC: "labels"}.get(expect_magic, "?")
        raise IdxFormatError(f"{name}: bad magic number 0x{magic:08x}, expected 0x{expect_magic:08x} ({kind} file)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IdxFormatError(f"{name}: truncated header")
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    expected = int(np.prod(dims))
    found = len(data) - header
    if found != expected:
        raise IdxFormatError(
            f"{name}: header says {'x'.join(map(str, dims))} = {expected} bytes of data, file has {found}"
            + (" (truncated)" if found < expected else ""))
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _find_file(source: str, stem: str) -> str:
    for candidate in (stem + ".gz", stem):
        uri = storage.join(source, candidate)
        if storage.exists(uri):
            return uri
    raise DatasetNotFoundError(f"{source} has no {stem}.gz (or {stem})")


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vitrine" / "fashion-mnist"


def download_official(dest: Path | None = None, *, timeout: float = 20.0) -> Path:
    """Fetch the official files into ``dest`` and verify their MD5 sums; returns ``dest``."""
    dest = Path(dest or _cache_dir())
    dest.mkdir(parents=True, exist_ok=True)
    for fname, md5 in OFFICIAL_MD5.items():
        target = dest / fname
        if target.exists() and hashlib.md5(target.read_bytes()).hexdigest() == md5:
            continue
        log.info("downloading %s", OFFICIAL_MIRROR + fname)
        with urllib.request.urlopen(OFFICIAL_MIRROR + fname, timeout=timeout) as resp:
            payload = resp.read()
        digest = hashlib.md5(payload).hexdigest()
        if digest != md5:
            raise IdxFormatError(f"{fname}: downloaded MD5 {digest} does not match the published {md5}")
        tmp = target.with_suffix(".part")
        tmp.write_bytes(payload)
        tmp.replace(target)
    return dest


def resolve_source(source: str | None = None, *, allow_download: bool = True) -> str:
    """Where to read Fashion-MNIST from (see module docstring), or a clear error."""
    if source:
        return str(source)
    if os.environ.get(ENV_VAR):
        return os.environ[ENV_VAR]
    cached = _cache_dir()
    if all((cached / f).exists() for f in OFFICIAL_MD5):
        return str(cached)
    reason = "downloads disabled"
    if allow_download:
        try:
            return str(download_official(cached))
        except Exception as exc:  # no network is the common case here
            reason = f"download from {OFFICIAL_MIRROR} failed: {exc}"
    raise DatasetNotFoundError(
        f"Fashion-MNIST not found ({reason}). Point at a copy of the four IDX files "
        f"({', '.join(v + '.gz' for v in FILES.values())}) with --data DIR_OR_S3_PREFIX "
        f"or the {ENV_VAR} environment variable.")


def load(source: str | None = None, *, allow_download: bool = True) -> FashionMNIST:
    """Read the four IDX files; checks shapes, label range and that counts match."""
    source = resolve_source(source, allow_download=allow_download)
    arrays, digests = {}, {}
    for key, stem in FILES.items():
        uri = _find_file(source, stem)
        raw = storage.read_bytes(uri)
        digests[os.path.basename(uri)] = hashlib.sha256(raw).hexdigest()
        magic = _IMAGES_MAGIC if key.endswith("images") else _LABELS_MAGIC
        arrays[key] = parse_idx(raw, name=os.path.basename(uri), expect_magic=magic)
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3:
            raise IdxFormatError(f"{split} images: expected 3 dimensions (N, H, W), got shape {images.shape}")
        if len(images) != len(labels):
            raise IdxFormatError(f"{split}: {len(images)} images but {len(labels)} labels")
        if labels.size and labels.max() >= len(CLASS_NAMES):
            raise IdxFormatError(f"{split} labels: value {int(labels.max())} outside 0..{len(CLASS_NAMES) - 1}")
    return FashionMNIST(arrays["train_images"], arrays["train_labels"], arrays["test_images"],
                        arrays["test_labels"], source=source, sha256=digests)


def stratified_split(labels: np.ndarray, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, validation)`` with ``fraction`` of every class in validation, seeded."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        n_val = max(1, int(round(len(idx) * fraction)))
        val_idx.append(idx[:n_val])
        train_idx.append(idx[n_val:])
    train, val = np.concatenate(train_idx), np.concatenate(val_idx)
    rng.shuffle(train)
    rng.shuffle(val)
    return train, val


def per_class_subset(labels: np.ndarray, per_class: int, seed: int = 0) -> np.ndarray:
    """Indices of at most ``per_class`` examples of each class (for smoke tests)."""
    rng = np.random.default_rng(seed)
    picks = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    out = np.concatenate(picks)
    rng.shuffle(out)
    return out
