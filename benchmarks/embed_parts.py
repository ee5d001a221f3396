"""The parts of an embedding run, each timed alone, old way against new way in one run: what the
actor sizing default (``EmbedConfig.cpus_per_actor``) and the "what changed" notes of
docs/BENCHMARKS.md rest on.

    RAY_AUTH_MODE=disabled python benchmarks/embed_parts.py                 # .vitrine's catalogue, model, LATEST run
    RAY_AUTH_MODE=disabled python benchmarks/embed_parts.py --pipeline      # + full Ray Data runs, 1 vs 2 TF threads

1. decoding: ``decode_batch`` (read, hash check, Pillow, preprocessing) per image;
2. the model: ``ModelRunner`` per image on one and on two TensorFlow threads (each in its own
   process: TensorFlow fixes its thread pools once per process);
3. the embeddings Parquet of the model's LATEST run: write and read with Parquet's defaults
   (snappy everywhere, as before) and with ``embeddings.PARQUET_OPTIONS``;
4. reading the catalogue manifest: ``list_catalogue`` against the same checks and URI
   resolution done row by row in Python (as before);
5. with ``--pipeline``: ``vitrine embed --full`` through Ray Data in one warm process, with
   ``cpus_per_actor=1`` (one TensorFlow thread) and ``1.5`` (two), alternating.
Best of ``--repeat`` for 1–4.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def model_ms_per_image(model: str, threads: int, repeat: int) -> float:
    import numpy as np

    from artifacts.inference import ModelRunner, configure_tensorflow

    configure_tensorflow(threads)
    runner = ModelRunner(model)
    x = np.random.default_rng(0).random((1024, *runner.shape), dtype=np.float32)
    runner(x)
    return best(lambda: runner(x), repeat) / len(x) * 1e3


def row_by_row_manifest(manifest_uri: str) -> None:
    """The manifest checks and URI resolution as they were: a Python loop over every row."""
    import pyarrow as pa

    from artifacts import catalogue
    from artifacts.catalogue import SHA256_HEX, check_item_id
    from artifacts.catalogue_manifest import _read_manifest_file, _resolve_image_uri
    from artifacts.image_roots import parent_dir

    raw = _read_manifest_file(manifest_uri)
    base = parent_dir(manifest_uri)
    pa.array([_resolve_image_uri(base, u) for u in raw.column("image_uri").to_pylist()], pa.string())
    for value in raw.column("content_sha256").to_pylist():
        if value is not None and not SHA256_HEX.match(value):
            raise catalogue.CatalogueError(value)
    ids = raw.column("item_id").to_pylist()
    for item_id in ids:
        check_item_id(item_id)
    assert len(set(ids)) == len(ids)


def parts(catalogue_uri: str, model: str, storage_root: str, repeat: int) -> dict:
    import pyarrow.parquet as pq

    from artifacts import catalogue_listing, catalogue_manifest, embeddings, model_artifact, publish
    from artifacts.model_card import CARD_FILE
    from embedding.stages import decode_batch

    out: dict = {}
    items = catalogue_listing.list_catalogue(catalogue_uri).select(["item_id", "image_uri", "category", "content_sha256"])
    model_uri = publish.resolve(model, manifest_name=CARD_FILE)
    card = model_artifact.read_card(model_uri)
    sample = items.slice(0, 4096)
    spec = card.preprocess_spec.to_dict()
    out["decode_ms"] = best(lambda: decode_batch(sample, spec=spec, io_threads=1), repeat) / sample.num_rows * 1e3

    for threads in (1, 2):  # a fresh process each: TensorFlow's thread pools are fixed once started
        r = subprocess.run([sys.executable, __file__, "--_model", model_uri, str(threads), str(repeat)],
                           capture_output=True, text=True, check=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        out[f"model_ms_{threads}"] = float(r.stdout.strip().splitlines()[-1])

    run_uri = embeddings.resolve_run(embeddings.model_runs_uri(storage_root, card.model_id))
    table = embeddings.read_table(run_uri)
    out["parquet_rows"] = table.num_rows
    with tempfile.TemporaryDirectory() as tmp:
        for name, options in (("defaults", {}), ("options", embeddings.PARQUET_OPTIONS)):
            path = os.path.join(tmp, f"{name}.parquet")
            out[f"write_{name}_s"] = best(lambda: pq.write_table(table, path, **options), repeat)
            out[f"read_{name}_s"] = best(lambda: pq.read_table(path), repeat)
            out[f"size_{name}_mb"] = os.path.getsize(path) / 1e6

    manifest = catalogue_manifest.find_manifest(catalogue_uri)
    out["manifest_rows"] = items.num_rows
    out["list_s"] = best(lambda: catalogue_listing.list_catalogue(catalogue_uri), repeat)
    out["list_row_by_row_s"] = best(lambda: row_by_row_manifest(manifest), repeat)
    return out


def pipeline(catalogue_uri: str, model: str, runs: int) -> list[tuple[float, float]]:
    """(cpus_per_actor, seconds) of full Ray Data runs in one warm process, alternating."""
    from dataclasses import replace

    from jobs.embed_catalogue import EmbedConfig, run

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        base = EmbedConfig(catalogue=catalogue_uri, model=model, out=tmp, full=True, local_max_items=0)
        run(base)  # warm-up: Ray and Ray Data's own actors start once
        for i in range(runs):
            for cpus in (1.0, 1.5):
                t0 = time.perf_counter()
                run(replace(base, cpus_per_actor=cpus, run_id=f"p-{i}-{cpus}"))
                results.append((cpus, time.perf_counter() - t0))
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    storage_root = os.environ.get("VITRINE_STORAGE", str(ROOT / ".vitrine"))
    p.add_argument("--catalogue", default=os.path.join(storage_root, "catalogues", "fashion-mnist-train"))
    p.add_argument("--model", default=os.path.join(storage_root, "models"))
    p.add_argument("--storage", default=storage_root, help="where the model's LATEST embeddings run is")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--pipeline", action="store_true", help="also time full Ray Data runs, 1 vs 2 TF threads")
    p.add_argument("--pipeline-runs", type=int, default=2)
    p.add_argument("--markdown", help="append the results to this file")
    p.add_argument("--_model", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._model:
        print(model_ms_per_image(args._model[0], int(args._model[1]), int(args._model[2])))
        return 0

    r = parts(args.catalogue, args.model, args.storage, args.repeat)
    lines = [f"`benchmarks/embed_parts.py`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
             f"{os.cpu_count()} CPUs, best of {args.repeat}:", "",
             "| part | before / baseline | now |", "|:--|--:|--:|",
             f"| decode (read, hash, Pillow, preprocess), ms an image | – | {r['decode_ms']:.3f} |",
             f"| model, ms an image: 1 vs 2 TensorFlow threads | {r['model_ms_1']:.3f} | {r['model_ms_2']:.3f} |",
             f"| write {r['parquet_rows']:,} embedding rows, s: Parquet defaults vs `PARQUET_OPTIONS` | "
             f"{r['write_defaults_s']:.3f} | {r['write_options_s']:.3f} |",
             f"| read them back, s | {r['read_defaults_s']:.3f} | {r['read_options_s']:.3f} |",
             f"| their size, MB | {r['size_defaults_mb']:.1f} | {r['size_options_mb']:.1f} |",
             f"| manifest of {r['manifest_rows']:,} rows, s: row-by-row checks vs `list_catalogue` | "
             f"{r['list_row_by_row_s']:.3f} | {r['list_s']:.3f} |"]
    if args.pipeline:
        runs = pipeline(args.catalogue, args.model, args.pipeline_runs)
        one = [s for c, s in runs if c == 1.0]
        two = [s for c, s in runs if c == 1.5]
        lines.append(f"| full Ray Data run, warm process, s: `cpus_per_actor=1` (1 thread) vs `1.5` (2 threads); "
                     f"each run | {', '.join(f'{s:.1f}' for s in one)} | {', '.join(f'{s:.1f}' for s in two)} |")
    text = "\n".join(lines) + "\n"
    print(text)
    print(json.dumps(r))
    if args.markdown:
        with open(args.markdown, "a") as f:
            f.write("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
