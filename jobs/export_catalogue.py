"""Write Fashion-MNIST as an image catalogue: image files in category folders plus a manifest.

    vitrine export-catalogue --dataset fashion-mnist --split train --out .vitrine/catalogues/fashion-mnist-train \\
        --data ../shared/datasets/fashion-mnist
    vitrine export-catalogue --split test --out s3://bucket/catalogues/fashion-mnist-test --limit 1000
    python -m jobs.export_catalogue --split train --out /tmp/catalogue --data ../shared/datasets/fashion-mnist
    vitrine export-catalogue --style photo --size 128 --seed 0 --split test    # RGB JPEG product photos
    vitrine export-catalogue --style photo --layout nested --split train      # <category>/<sub-category>/<image>

Layout: ``<out>/<category-slug>/<split>-<index:06d>.png`` (``t-shirt-top/train-000123.png``) and
``<out>/manifest.parquet`` (item_id, image_uri relative to ``<out>``, category = the class name,
label, content_sha256), written last. ``--out`` defaults to
``<storage>/catalogues/fashion-mnist-<split>``. Re-running is idempotent: files whose bytes are
already in place are not rewritten, and items a previous export listed but this one does not are
removed, so the folders and the manifest always describe the same catalogue.

``--style photo`` renders each item as an RGB JPEG product photo (:mod:`artifacts.photo_style`,
recipe in its docstring and docs/PHOTOS.md) of ``--size`` pixels: ``<slug>/<split>-<index>.jpg``.
Item ``i`` of a split draws from ``default_rng([seed, split, i])``, so any item can be rendered
alone, in any order or process, and a re-export writes the same bytes. ``--layout nested``
(photo style only) writes ``<slug>/<sub-category>/<split>-<index>.jpg`` with a ``sub_category``
manifest column. That sub-category is synthetic: the photo's background kind (``white``,
``light``, ``light-colour``, ``saturated``, ``dark``, see ``photo_style.BACKGROUND_KINDS``) — a
stand-in for the thesis's 42 product sub-categories, for exercising the nested layout, not a
property of the garment. The manifest's schema metadata records the style, size and seed.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import re
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from artifacts.logs import setup_logging
from jobs import flags

log = logging.getLogger("vitrine.export")

DATASETS = ("fashion-mnist",)
SPLITS = ("train", "test")
STYLES = ("tile", "photo")
LAYOUTS = ("flat", "nested")
CHUNK = 1000


@dataclass(frozen=True)
class ExportConfig:
    dataset: str = "fashion-mnist"
    split: str = "train"
    out: str = ""  # default <storage>/catalogues/<dataset>-<split>
    storage: str = ""  # default $VITRINE_STORAGE or ./.vitrine
    data: str = ""  # Fashion-MNIST directory or s3:// prefix; default $FASHION_MNIST_DIR
    limit: int = 0  # export the first N images only; 0 = all
    workers: int = 0  # encode/write threads; 0 = 2 per CPU
    style: str = "tile"  # tile: the 28x28 gray PNG as stored; photo: an RGB JPEG product photo
    size: int = 128  # photo side in pixels (style photo)
    seed: int = 0  # photo style: item i of a split is rendered from default_rng([seed, split, i])
    layout: str = "flat"  # flat: <category>/<image>; nested: <category>/<sub-category>/<image> (photo)


@dataclass
class ExportResult:
    out: str
    manifest_uri: str
    items: int
    written: int  # image files (re)written by this run
    unchanged: int  # already in place with the same bytes
    removed: int  # listed by the previous manifest, not by this one
    wall_time_s: float


def category_slug(name: str) -> str:
    """A class name as a folder name: ``"T-shirt/top"`` → ``"t-shirt-top"``."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    if not slug:
        raise ValueError(f"class name {name!r} has no letters or digits to name a folder with")
    return slug


def encode_png(pixels) -> bytes:
    """uint8 (H, W) → PNG bytes; deterministic, so re-exports hash the same."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def photo_item(tile, seed: int, split: str, index: int, size: int) -> tuple[bytes, str]:
    """Item ``index`` of ``split`` as a photo: ``(JPEG bytes, background kind)``, from its own seed."""
    import numpy as np

    from artifacts import photo_style

    params = photo_style.sample_params(np.random.default_rng([seed, SPLITS.index(split), index]), size=size)
    return photo_style.encode_jpeg(photo_style.render(tile, params), params.jpeg_quality), params.background_kind


def run(config: ExportConfig) -> ExportResult:
    """Export ``config.split`` of the dataset as a catalogue under ``config.out``."""
    from artifacts import catalogue, catalogue_manifest, storage
    from tune.data import fashion_mnist

    _check_config(config)
    start = time.perf_counter()
    out = config.out or storage.join(config.storage or storage.default_root(), "catalogues",
                                     f"{config.dataset}-{config.split}")
    data = fashion_mnist.load(config.data or None)
    images = data.train_images if config.split == "train" else data.test_images
    labels = data.train_labels if config.split == "train" else data.test_labels
    n = min(config.limit, len(images)) if config.limit > 0 else len(images)
    slugs = [category_slug(c) for c in data.class_names]
    if len(set(slugs)) != len(slugs):
        raise ValueError(f"class names {data.class_names} do not give distinct folder names")
    ids = [f"{config.split}-{i:06d}" for i in range(n)]
    rel, subs = _image_paths(config, ids, [slugs[int(labels[i])] for i in range(n)])

    manifest_uri = storage.join(out, catalogue.MANIFEST_FILE)
    previous = _previous_export(manifest_uri)
    existing = _existing_sizes(out)
    sink = _Sink(out)
    for folder in sorted({r.rsplit("/", 1)[0] for r in rel}):
        sink.make_dir(folder)
    hashes, written = _write_images(config, images, ids, rel, previous, existing, sink)
    table = _manifest_table(config, ids, rel, data.class_names, labels[:n], hashes, subs)
    catalogue_manifest.write_manifest(table, manifest_uri)
    # Only after the new manifest is in place: files the old one listed and this one does not.
    stale = sorted({r for r, _ in previous.values()} - set(rel))
    for r in stale:
        sink.remove(r)
    wall = time.perf_counter() - start
    log.info("catalogue %s: %d items (%d written, %d unchanged, %d removed) in %.1f s",
             out, n, written, n - written, len(stale), wall)
    return ExportResult(out=out, manifest_uri=manifest_uri, items=n, written=written, unchanged=n - written,
                        removed=len(stale), wall_time_s=wall)


def _check_config(config: ExportConfig) -> None:
    if config.dataset not in DATASETS:
        raise ValueError(f"unknown dataset {config.dataset!r}; valid: {', '.join(DATASETS)}")
    if config.split not in SPLITS:
        raise ValueError(f"unknown split {config.split!r}; valid: {', '.join(SPLITS)}")
    if config.style not in STYLES:
        raise ValueError(f"unknown style {config.style!r}; valid: {', '.join(STYLES)}")
    if config.layout not in LAYOUTS:
        raise ValueError(f"unknown layout {config.layout!r}; valid: {', '.join(LAYOUTS)}")
    if config.layout == "nested" and config.style != "photo":
        raise ValueError("layout nested needs --style photo (its sub-category is the photo's background kind)")
    if config.style == "photo" and not 16 <= config.size <= 1024:
        raise ValueError(f"photo size {config.size} must be within 16..1024")
    if config.seed < 0:
        raise ValueError(f"seed {config.seed} must be >= 0")


def _image_paths(config: ExportConfig, ids: list[str], folders: list[str]) -> tuple[list[str], list[str] | None]:
    """``(each item's path relative to the catalogue, its sub-category or None when flat)``."""
    ext = "jpg" if config.style == "photo" else "png"
    if config.layout != "nested":
        return [f"{folders[i]}/{ids[i]}.{ext}" for i in range(len(ids))], None
    # The sub-category folder is known only once an item's parameters are drawn, which is cheap.
    import numpy as np

    from artifacts import photo_style

    subs = [photo_style.sample_params(np.random.default_rng([config.seed, SPLITS.index(config.split), i]),
                                      size=config.size).background_kind for i in range(len(ids))]
    return [f"{folders[i]}/{subs[i]}/{ids[i]}.{ext}" for i in range(len(ids))], subs


def _write_images(config: ExportConfig, images, ids: list[str], rel: list[str], previous: dict,
                  existing: dict[str, int], sink: "_Sink") -> tuple[list[str], int]:
    """Encode every item and write those not already in place: ``(content hashes, files written)``."""
    from artifacts import catalogue

    n = len(ids)
    photo = config.style == "photo"

    def export_chunk(lo: int) -> list[tuple[str, bool]]:
        done = []
        for i in range(lo, min(lo + CHUNK, n)):
            data = (photo_item(images[i], config.seed, config.split, i, config.size)[0] if photo
                    else encode_png(images[i]))
            digest = catalogue.content_sha256(data)
            if previous.get(ids[i]) == (rel[i], digest) and existing.get(rel[i]) == len(data):
                done.append((digest, False))
            else:
                sink.put(rel[i], data)
                done.append((digest, True))
        return done

    workers = config.workers or 2 * (os.cpu_count() or 1)
    hashes, written = [], 0
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for k, chunk in enumerate(pool.map(export_chunk, range(0, n, CHUNK))):
            hashes.extend(h for h, _ in chunk)
            written += sum(w for _, w in chunk)
            if (k + 1) % 10 == 0:
                log.info("exported %d/%d images", len(hashes), n)
    return hashes, written


def _manifest_table(config: ExportConfig, ids: list[str], rel: list[str], class_names: list[str], labels,
                    hashes: list[str], subs: list[str] | None):
    import numpy as np
    import pyarrow as pa

    columns = {
        "item_id": pa.array(ids, pa.string()),
        "image_uri": pa.array(rel, pa.string()),
        "category": pa.array([class_names[int(c)] for c in labels], pa.string()),
        "label": pa.array(np.asarray(labels, dtype=np.int64)),
        "content_sha256": pa.array(hashes, pa.string()),
    }
    if subs is not None:
        columns["sub_category"] = pa.array(subs, pa.string())
    table = pa.table(columns)
    if config.style == "photo":
        table = table.replace_schema_metadata({"vitrine.export.style": "photo", "vitrine.export.size": str(config.size),
                                               "vitrine.export.seed": str(config.seed),
                                               "vitrine.export.layout": config.layout})
    return table


def _previous_export(manifest_uri: str) -> dict[str, tuple[str, str]]:
    """item_id → (relative image_uri, content_sha256) from an earlier export, if any."""
    import pyarrow.parquet as pq

    from artifacts import storage

    if not storage.exists(manifest_uri):
        return {}
    fs, path = storage.resolve(manifest_uri)
    try:
        t = pq.read_table(path, filesystem=fs, columns=["item_id", "image_uri", "content_sha256"])
    except Exception as exc:  # an unreadable old manifest only costs us the rewrite
        log.warning("ignoring unreadable previous manifest %s: %s", manifest_uri, exc)
        return {}
    return {i: (u, h) for i, u, h in zip(*(t.column(c).to_pylist() for c in t.column_names))
            if u and "/" in u and not u.startswith(("/", "..")) and "://" not in u}


def _existing_sizes(out: str) -> dict[str, int]:
    """Relative path → size of every file already under ``out`` (one listing, not one stat per file)."""
    import pyarrow.fs as pafs

    from artifacts import storage

    fs, root = storage.resolve(out)
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    prefix = root.rstrip("/") + "/"
    return {i.path[len(prefix):]: i.size for i in infos if i.type == pafs.FileType.File and i.path.startswith(prefix)}


class _Sink:
    """Writes many small files: plain files locally (temporary name + rename, no fsync per
    file: the manifest, written last, is what makes an export complete), or S3 PUTs."""

    def __init__(self, out: str):
        from artifacts import storage

        self.fs, self.root = storage.resolve(out)
        self.local = not storage.is_remote(out)

    def make_dir(self, rel: str) -> None:
        if self.local:
            os.makedirs(os.path.join(self.root, rel), exist_ok=True)

    def put(self, rel: str, data: bytes) -> None:
        if self.local:
            path = os.path.join(self.root, rel)
            tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        else:
            with self.fs.open_output_stream(f"{self.root}/{rel}", compression=None) as f:
                f.write(data)

    def remove(self, rel: str) -> None:
        try:
            if self.local:
                os.remove(os.path.join(self.root, rel))
            else:
                self.fs.delete_file(f"{self.root}/{rel}")
        except (FileNotFoundError, OSError):
            pass


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="vitrine export-catalogue", description=__doc__,
                                          formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="fashion-mnist", choices=DATASETS)
    p.add_argument("--split", default="train", choices=SPLITS)
    p.add_argument("--out", help="catalogue URI (default <storage>/catalogues/<dataset>-<split>)")
    flags.add_storage(p)
    p.add_argument("--data", help="Fashion-MNIST directory or s3:// prefix (default $FASHION_MNIST_DIR)")
    p.add_argument("--limit", type=int, help="export only the first N images")
    p.add_argument("--workers", type=int, help="encode/write threads (default 2 per CPU)")
    p.add_argument("--style", choices=STYLES, help="tile: 28x28 gray PNG (default); photo: RGB JPEG product photo")
    p.add_argument("--size", type=int, help="photo side in pixels (default 128)")
    p.add_argument("--seed", type=int, help="photo style: the seed every item's photo is derived from (default 0)")
    p.add_argument("--layout", choices=LAYOUTS,
                   help="flat: <category>/<image> (default); nested: <category>/<sub-category>/<image> (photo style)")
    flags.add_json(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    from artifacts.configuration import load_config

    config = load_config(ExportConfig, values={"dataset": args.dataset, "split": args.split, "out": args.out,
                                               "storage": args.storage, "data": args.data, "limit": args.limit,
                                               "workers": args.workers, "style": args.style, "size": args.size,
                                               "seed": args.seed, "layout": args.layout})
    result = run(config)
    if args.json:
        print(json.dumps(result.__dict__, indent=2))
    else:
        print(f"catalogue {result.out}: {result.items} items ({result.written} written, {result.unchanged} unchanged, "
              f"{result.removed} removed) in {result.wall_time_s:.1f} s")
        print(f"manifest: {result.manifest_uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
