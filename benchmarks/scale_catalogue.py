"""The scale benchmark's catalogues (benchmarks/scale.py): Fashion-MNIST train tiles and seeded
variations of them (shifted by up to 2 px, brightness x0.75-1.15, sparse noise; every image its own
bytes and hash) as PNG files, generated once under the work directory and reused by later runs,
and the 1% change sets (0.5% of the items given new images, 0.5% new items)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

RECIPE = 1  # bump when the variation recipe changes: the image pool is made again
CHUNK = 20_000


def _variant(tile: np.ndarray, i: int) -> np.ndarray:
    """Item ``i``: the tile itself for the first copy, else a seeded variation of it."""
    if i < 60_000:
        return tile
    rng = np.random.default_rng(i)
    dy, dx = rng.integers(-2, 3, 2)
    img = np.roll(tile, (int(dy), int(dx)), (0, 1)).astype(np.float32) * rng.uniform(0.75, 1.15)
    mask = rng.random(tile.shape) < 0.05
    img[mask] += rng.normal(0, 20, int(mask.sum()))
    return np.clip(img, 0, 255).astype(np.uint8)


def _make_chunk(args) -> list[dict]:
    lo, hi, pool, prefix, seed_offset = args
    from artifacts.catalogue import content_sha256
    from jobs.export_catalogue import category_slug, encode_png
    from tune.data.fashion_mnist import CLASS_NAMES, load

    data = load(allow_download=False)
    rows = []
    for i in range(lo, hi):
        base = i % len(data.train_labels)
        name = CLASS_NAMES[int(data.train_labels[base])]
        png = encode_png(_variant(data.train_images[base], i + seed_offset))
        rel = f"{prefix}/{category_slug(name)}/{i:07d}.png"
        path = Path(pool) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png)
        rows.append({"item_id": f"item-{i:07d}", "image_uri": rel, "category": name,
                     "content_sha256": content_sha256(png)})
    return rows


def _images(pool: Path, lo: int, hi: int, prefix: str, seed_offset: int = 0) -> "pa.Table":
    import multiprocessing as mp

    import pyarrow as pa

    jobs = [(s, min(s + CHUNK, hi), str(pool), prefix, seed_offset) for s in range(lo, hi, CHUNK)]
    rows: list[dict] = []
    with mp.get_context("spawn").Pool(max(1, min(os.cpu_count() or 1, 4))) as workers:
        for done, part in enumerate(workers.imap(_make_chunk, jobs), 1):
            rows.extend(part)
            print(f"  {prefix}: {min(done * CHUNK, hi - lo):,}/{hi - lo:,} images", flush=True)
    return pa.Table.from_pylist(rows)


def ensure_pool(work: Path, n: int) -> "pa.Table":
    """The first ``n`` items of the image pool (made where missing) as a manifest table."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pool = work / "catalogue"
    index = pool / f"pool-r{RECIPE}.parquet"
    have = pq.read_table(index) if index.exists() else None
    count = 0 if have is None else have.num_rows
    if count < n:
        print(f"generating images {count:,}..{n:,} under {pool}", flush=True)
        more = _images(pool, count, n, "images")
        have = more if have is None else pa.concat_tables([have, more])
        tmp = index.with_suffix(".tmp")
        pq.write_table(have, tmp)
        tmp.replace(index)
    return have.slice(0, n)


def change_set(work: Path, base: "pa.Table", n: int, tag: str, seed: int) -> "pa.Table":
    """``base`` with 0.5% of its items given new images and 0.5% new items added."""
    import pyarrow as pa
    import pyarrow.compute as pc

    pool = work / "catalogue"
    k = max(1, n // 200)
    rng = np.random.default_rng(seed)
    changed = np.sort(rng.choice(n, size=k, replace=False))
    fresh = _images(pool, 10_000_000 + seed * 1_000_000, 10_000_000 + seed * 1_000_000 + 2 * k,
                    f"changes-{tag}-{n}", seed_offset=n)
    edited = fresh.slice(0, k)
    added = fresh.slice(k, k)
    added = added.set_column(0, "item_id", pa.array([f"new-{tag}-{j:07d}" for j in range(k)]))
    new_uri = base.column("image_uri").to_pylist()
    new_hash = base.column("content_sha256").to_pylist()
    for j, pos in enumerate(changed):
        new_uri[pos] = edited.column("image_uri")[j].as_py()
        new_hash[pos] = edited.column("content_sha256")[j].as_py()
    out = base.set_column(1, "image_uri", pa.array(new_uri)).set_column(3, "content_sha256", pa.array(new_hash))
    # The edited images keep their item's category: take the base's.
    assert pc.all(pc.equal(out.column("category"), base.column("category"))).as_py()
    return pa.concat_tables([out, added.select(out.column_names)])


def write_manifest(work: Path, table, name: str) -> str:
    import pyarrow.parquet as pq

    path = work / "catalogue" / name
    pq.write_table(table, path)
    return str(path)
