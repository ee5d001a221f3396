"""How well models do on product photos made from the test split, side by side on the same images.

    python -m benchmarks.photo_accuracy --model .vitrine/models --model <rgb model uri> --photos 2000

Per model artifact, through the service's own path (JPEG bytes -> ``preprocess_bytes`` with the
model card's spec -> ``ModelRunner``, the classifier replicas' forward pass):

- top-1 on the 10,000 test tiles, on ``--photos`` test tiles rendered by ``photo_style``
  (``photo_jpeg``, its own seed, never a training image), and on the same number rendered by a
  second recipe that training never uses (``benchmarks.preprocess_ablation.simple_photo``);
- ``category=all`` retrieval against the tile catalogue (the 60,000 images of the training file,
  as ``make run`` embeds it): precision@10 for the photo queries, and mAP over the full ranking
  and precision@10 for the test-tile queries; same class relevant, exact search.

With ``--url`` the same query photos also go over HTTP to a running service (``make serve``):
``POST /v1/classify`` for top-1 and ``POST /v1/search?k=10&category=all`` for precision@10, so the
numbers are the ones a shop would see, HNSW and all.

Prints a Markdown table (for docs/RESULTS.md) and writes it with the raw numbers as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

Forward = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # model inputs -> (unit embeddings, probs)


def photo_sets(test_x: np.ndarray, test_y: np.ndarray, n: int, seed: int) -> dict[str, tuple[list[bytes], np.ndarray]]:
    """The query photos, by recipe: JPEG bytes and true classes."""
    from benchmarks.preprocess_ablation import photo_set, simple_set

    return {"photo_style": photo_set(test_x, test_y, n, seed), "simple": simple_set(test_x, test_y, n, seed)}


def _batched(forward: Forward, x: np.ndarray, batch: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    parts = [forward(x[i:i + batch]) for i in range(0, len(x), batch)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def measure(forward: Forward, spec, *, test: tuple[np.ndarray, np.ndarray], catalogue: tuple[np.ndarray, np.ndarray],
            photos: dict[str, tuple[list[bytes], np.ndarray]], retrieval: bool = True) -> dict:
    """Every number of the table for one model (``forward``) with its preprocessing ``spec``."""
    from artifacts.preprocess import arrays_to_model_input, preprocess_bytes
    from jobs.evaluate_search import exact_metrics

    out: dict = {}
    tile_e, tile_p = _batched(forward, arrays_to_model_input(test[0], spec))
    out["tiles_top1"] = float((tile_p.argmax(axis=1) == test[1]).mean())
    cat_e = _batched(forward, arrays_to_model_input(catalogue[0], spec))[0] if retrieval else None
    if retrieval:
        m = exact_metrics(tile_e, test[1], tile_p.argmax(axis=1), cat_e, catalogue[1].astype(np.int64))
        out["tiles_map_all"], out["tiles_p10_all"] = float(np.nanmean(m["ap"])), float(np.nanmean(m["p_at_k"]))
    for name, (jpegs, labels) in photos.items():
        x = np.stack([preprocess_bytes(b, spec) for b in jpegs])
        e, p = _batched(forward, x)
        out[f"{name}_top1"] = float((p.argmax(axis=1) == labels).mean())
        if retrieval:
            m = exact_metrics(e, labels, p.argmax(axis=1), cat_e, catalogue[1].astype(np.int64))
            out[f"{name}_p10_all"] = float(np.nanmean(m["p_at_k"]))
    return out


def over_http(url: str, photos: dict[str, tuple[list[bytes], np.ndarray]], class_names: list[str],
              *, clients: int = 4, api_key: str = "") -> dict:
    """Top-1 from ``/v1/classify`` and category=all precision@10 from ``/v1/search`` per recipe."""
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor

    headers = {"Content-Type": "image/jpeg", **({"Authorization": f"Bearer {api_key}"} if api_key else {})}

    def post(path: str, body: bytes) -> dict:
        req = urllib.request.Request(url.rstrip("/") + path, data=body, headers=headers, method="POST")
        with urllib.request.urlopen(req, timeout=60) as resp:
            return json.loads(resp.read())

    def one(item):
        body, label = item
        name = class_names[int(label)]
        top1 = post("/v1/classify", body)["predicted"] == name
        hits = post("/v1/search?k=10&category=all", body)["results"]
        return top1, sum(h["category"] == name for h in hits) / 10.0

    out: dict = {}
    for recipe, (jpegs, labels) in photos.items():
        with ThreadPoolExecutor(clients) as pool:
            got = list(pool.map(one, zip(jpegs, labels)))
        out[f"{recipe}_top1"] = float(np.mean([g[0] for g in got]))
        out[f"{recipe}_p10_all"] = float(np.mean([g[1] for g in got]))
    return out


def runner_forward(uri: str):
    """A model artifact's ``ModelRunner`` as a ``Forward``, with its spec and card."""
    from artifacts.inference import ModelRunner

    runner = ModelRunner(uri)

    def forward(x):
        f = runner(x)
        return f.embeddings, f.probabilities

    return forward, runner.card.preprocess_spec, runner.card


COLUMNS = [("tiles_top1", "tiles top-1"), ("photo_style_top1", "photos top-1"), ("simple_top1", "simple photos top-1"),
           ("tiles_map_all", "tiles mAP, all"), ("tiles_p10_all", "tiles P@10, all"),
           ("photo_style_p10_all", "photos P@10, all"), ("simple_p10_all", "simple photos P@10, all")]


def markdown(rows: list[dict], command: str, note: str = "") -> str:
    present = [(k, h) for k, h in COLUMNS if any(k in r for r in rows)]
    lines = [f"Command: `{command}`", "", "| model | " + " | ".join(h for _, h in present) + " |",
             "|:--|" + "--:|" * len(present)]
    for r in rows:
        cells = ["–" if k not in r else f"{r[k]:.2%}" if k.endswith("top1") else f"{r[k]:.4f}" for k, _ in present]
        lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines + ([""] + [note] if note else [])) + "\n"


def _spec_override(pairs: list[str]) -> dict:
    """``["deskew=true", "crop_margin=0.05"]`` -> PreprocessSpec field values (JSON literals)."""
    from artifacts.preprocess import PreprocessSpec

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in PreprocessSpec.__dataclass_fields__:
            raise SystemExit(f"--preprocess {pair!r}: expected FIELD=VALUE with a PreprocessSpec field")
        out[key] = json.loads(value)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", required=True, help="model artifact URI (repeat to compare)")
    ap.add_argument("--photos", type=int, default=2000, help="query photos per recipe")
    ap.add_argument("--seed", type=int, default=1000, help="photo seed (the ablation used 0)")
    ap.add_argument("--no-retrieval", action="store_true", help="top-1 only")
    ap.add_argument("--url", default="", help="also query a running service, e.g. http://127.0.0.1:8000")
    ap.add_argument("--api-key", default=os.environ.get("VITRINE_API_KEY", ""), help="for search_requires_key")
    ap.add_argument("--data", default=os.environ.get("FASHION_MNIST_DIR"))
    ap.add_argument("--out", default="", help="write the table and numbers as <out>.md / <out>.json")
    ap.add_argument("--preprocess", action="append", default=[], metavar="FIELD=VALUE",
                    help="also measure each model with this field of its card's PreprocessSpec changed (a row "
                         "beside the card's own; repeat for several fields in one variant), e.g. deskew=true")
    args = ap.parse_args(argv)
    override = _spec_override(args.preprocess)
    from tune.data import fashion_mnist

    ds = fashion_mnist.load(args.data)
    t0 = time.time()
    photos = photo_sets(ds.test_images, ds.test_labels, args.photos, args.seed)
    print(f"rendered {2 * args.photos} query photos in {time.time() - t0:.1f} s", file=sys.stderr)
    rows = []
    for uri in args.model:
        forward, spec, card = runner_forward(uri)
        variants = [("", spec)] + ([(" with " + ", ".join(args.preprocess), dataclasses.replace(spec, **override))]
                                   if override else [])
        for label, variant in variants:
            t0 = time.time()
            row = measure(forward, variant, test=(ds.test_images, ds.test_labels),
                          catalogue=(ds.train_images, ds.train_labels), photos=photos, retrieval=not args.no_retrieval)
            rows.append({"name": f"{card.architecture} `{card.model_id}`{label}", "uri": uri, **row,
                         "preprocessing": variant.to_dict(), "seconds": round(time.time() - t0, 1)})
            print(json.dumps(rows[-1]), file=sys.stderr)
    if args.url:
        t0 = time.time()
        row = over_http(args.url, photos, list(ds.class_names), api_key=args.api_key)
        rows.append({"name": f"the service at {args.url} (HTTP)", **row, "seconds": round(time.time() - t0, 1)})
        print(json.dumps(rows[-1]), file=sys.stderr)
    command = "python -m benchmarks.photo_accuracy " + " ".join(argv if argv is not None else sys.argv[1:])
    table = markdown(rows, command)
    print(table)
    if args.out:
        Path(args.out + ".md").write_text(table)
        Path(args.out + ".json").write_text(json.dumps({"rows": rows, "photos": args.photos, "seed": args.seed}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
