"""Photo versions of the training tiles, as the model will see them at serving time.

A shopper's upload is a photo; the catalogue the model trains on is tiles. Training on photos
closes that gap only if the photos reach the model the way uploads do, so every photo here is
rendered by ``artifacts.photo_style`` (random recipe, random size between ``min_size`` and
``max_size``, JPEG at quality 60-95) and read back through ``preprocess_bytes``, the service's
own path (draft decode, canonical input). The result is a bank of ``variants`` photos per
training tile, stored as model inputs quantised to uint8 (the tiles are uint8 too): 54,000 tiles
× 2 variants at 28×28 is 85 MB.

Rendering costs about 5 ms a photo on one core (docs/RESULTS.md), far more than a training step,
so the bank is made once, in parallel (Ray tasks when Ray is running, so a cluster spreads it),
and cached on local disk under a key of everything it depends on. Each photo's random draws come
from ``default_rng([seed, tile index, variant])``, so a bank is the same whichever worker made
which part.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from artifacts.preprocess import PreprocessSpec

log = logging.getLogger("vitrine.photo_bank")

# Bump when artifacts/photo_style.py or the way photos are read changes, so old banks are not reused.
RECIPE = "photo_style-1"
MAX_BANK_BYTES = 4 << 30  # a 128×128×3 bank of the full training set would be ~5 GB per variant
CACHE_ENV = "VITRINE_CACHE_DIR"
CHUNK = 1000  # tiles per task: ~5 s of work, few enough tasks to schedule cheaply


@dataclass(frozen=True)
class BankSpec:
    """What a bank depends on besides the tiles themselves."""

    variants: int = 2
    min_size: int = 64
    max_size: int = 128
    seed: int = 0

    def __post_init__(self):
        if self.variants < 1:
            raise ValueError(f"photo_variants must be >= 1, got {self.variants}")
        if not 32 <= self.min_size <= self.max_size:
            raise ValueError(f"photo sizes must satisfy 32 <= min <= max, got {self.min_size}..{self.max_size}")


def cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]) / "photo-bank"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vitrine" / "photo-bank"


def bank_key(tiles: np.ndarray, spec: PreprocessSpec, bank: BankSpec) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"recipe": RECIPE, "spec": spec.to_dict(), "bank": bank.__dict__,
                         "shape": list(tiles.shape)}, sort_keys=True).encode())
    h.update(np.ascontiguousarray(tiles).tobytes())
    return h.hexdigest()[:20]


def render_chunk(tiles: np.ndarray, start: int, spec: PreprocessSpec, bank: BankSpec) -> np.ndarray:
    """Photos of ``tiles`` (which begin at index ``start`` of the training set) as uint8 model
    inputs, shape ``(len(tiles), variants, H, W, C)``. Each JPEG is decoded as ``preprocess_bytes``
    decodes an upload; the decoded photos then go through ``arrays_to_model_input`` in groups of
    one size (the same canonical steps, vectorised: several times faster than one at a time)."""
    from artifacts.photo_style import photo_jpeg
    from artifacts.preprocess import arrays_to_model_input, decode_image, draft_size

    groups: dict[tuple, list] = {}
    for i, tile in enumerate(tiles):
        for v in range(bank.variants):
            rng = np.random.default_rng([bank.seed, start + i, v])
            size = int(rng.integers(bank.min_size, bank.max_size + 1))
            img = decode_image(photo_jpeg(tile, rng, size=size), draft_size=draft_size(spec))
            arr = np.asarray(img.convert("RGB"))
            groups.setdefault(arr.shape, []).append((i, v, arr))
    out = np.empty((len(tiles), bank.variants, *spec.input_shape), np.uint8)
    for members in groups.values():
        x = arrays_to_model_input(np.stack([a for _, _, a in members]), spec)
        q = np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)
        for (i, v, _), row in zip(members, q):
            out[i, v] = row
    return out


def _render_all(tiles: np.ndarray, spec: PreprocessSpec, bank: BankSpec) -> np.ndarray:
    """Chunks of 1,000 tiles rendered in parallel: Ray tasks when this process runs Ray (the grid
    driver), else one process per core (a standalone training run)."""
    chunk = CHUNK
    starts = list(range(0, len(tiles), chunk))
    try:
        import ray

        use_ray = ray.is_initialized()
    except ImportError:
        use_ray = False
    if use_ray and len(starts) > 1:
        tiles_ref = ray.put(tiles)  # once in the object store, not once per task

        @ray.remote(num_cpus=1)
        def part(all_tiles, s):
            return render_chunk(all_tiles[s:s + chunk], s, spec, bank)

        pending = {part.remote(tiles_ref, s): s for s in starts}
        done: dict[int, np.ndarray] = {}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            done[pending.pop(ready[0])] = ray.get(ready[0])
            _progress(len(done), len(starts), chunk, bank)
        return np.concatenate([done[s] for s in starts])
    workers = min(len(starts), os.cpu_count() or 1)
    if workers <= 1:
        return np.concatenate([render_chunk(tiles[s:s + chunk], s, spec, bank) for s in starts])
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # spawn, not fork: the caller may already run TensorFlow's threads.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(render_chunk, tiles[s:s + chunk], s, spec, bank): s for s in starts}
        done = {}
        for future in as_completed(futures):
            done[futures[future]] = future.result()
            _progress(len(done), len(starts), chunk, bank)
        return np.concatenate([done[s] for s in starts])


def _progress(done: int, total: int, chunk: int, bank: BankSpec) -> None:
    if done == total or done % max(1, total // 10) == 0:
        log.info("photo bank: %d/%d chunks (%d photos)", done, total, done * chunk * bank.variants)


def load_or_build(tiles: np.ndarray, spec: PreprocessSpec, bank: BankSpec, *, directory: Path | None = None) -> np.ndarray:
    """The bank for ``tiles``: from the cache when there, else rendered and cached (atomically,
    so a killed run leaves no half bank)."""
    size = len(tiles) * bank.variants * int(np.prod(spec.input_shape))
    if size > MAX_BANK_BYTES:
        raise ValueError(f"a photo bank of {len(tiles)} tiles × {bank.variants} variants at {spec.input_shape} "
                         f"would take {size / 2**30:.1f} GiB (limit {MAX_BANK_BYTES / 2**30:.0f}); train such "
                         "models on a photo catalogue (dataset image-folder) instead")
    directory = Path(directory or cache_dir())
    path = directory / f"{bank_key(tiles, spec, bank)}.npy"
    if path.exists():
        try:
            arr = np.load(path, allow_pickle=False)
            if arr.shape == (len(tiles), bank.variants, *spec.input_shape) and arr.dtype == np.uint8:
                log.info("photo bank %s from the cache (%d tiles × %d)", path.name, len(tiles), bank.variants)
                return arr
        except (OSError, ValueError) as exc:
            log.warning("photo bank %s unreadable (%s); rendering it again", path, exc)
    t0 = time.time()
    log.info("rendering a photo bank: %d tiles × %d variants (recipe %s, %d-%d px)", len(tiles),
             bank.variants, RECIPE, bank.min_size, bank.max_size)
    arr = _render_all(tiles, spec, bank)
    log.info("photo bank rendered in %.1f s (%.0f photos/s)", time.time() - t0,
             arr.shape[0] * arr.shape[1] / max(time.time() - t0, 1e-9))
    directory.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.part")
    with open(tmp, "wb") as fh:
        np.save(fh, arr, allow_pickle=False)
    tmp.replace(path)
    return arr
