"""Cost and gain of the quantized variants of one model (issue 13 item 3), in one run.

    RAY_AUTH_MODE=disabled python benchmarks/quantize.py --model .vitrine/models/<model_id>
    python benchmarks/quantize.py --model ... --out /tmp/variants --json q.json --markdown q.md
    python benchmarks/quantize.py --model ... --queries 2000 --variants int8     # quicker

The float model (Keras, as trained) against its variants made by ``vitrine quantize``
(jobs/quantize_model.py; into ``--out``, default a temporary models directory): ``int8``,
``float16``, and ``float32``, the TFLite runtime without quantization, which tells the runtime's
gain from the quantization's; and ``keras-int8``, Keras 3's own ``model.quantize("int8")`` saved
as a Keras model, the alternative the quantize job was measured against. Everything runs through :class:`artifacts.inference.ModelRunner`,
the forward pass of the Classifier replicas and of the embedding job:

1. **test accuracy** on the 10,000 Fashion-MNIST test tiles, and top-1 agreement with the float model;
2. **mAP, category=all**: the test tiles (``--queries``, a seeded subset; default all) as queries
   against the 60,000 train tiles as the catalogue, each variant ranking its own embeddings of it
   exactly (``jobs.evaluate_search.exact_metrics``, the no-filter mAP that ``vitrine
   evaluate-search`` reports; the catalogue is the train split, as ``make run``'s is);
3. **size** of the model file;
4. **classifier path**: latency of one call at batch 1 (p50 of the calls) and per image at batch 32,
   on ``--classifier-threads`` (1: a Classifier replica's 0.5 CPU rounds up to one thread);
5. **embedding job path**: images per second at batch ``--embed-batch`` (1024, ``EmbedConfig.batch_size``)
   over the 60,000 train tiles, on ``--embed-threads`` (2: ``cpus_per_actor`` 1.5 rounds up to 2).

Preprocessing is the same for every variant (their cards keep the parent's) and is left out of
the timings. Each thread count runs in a process of its own (TensorFlow fixes its thread pools
once per process); within one, variants take turns chunk by chunk (round by round for latency),
so a change in the machine's load reaches all of them alike.
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
BASE = "float32 (Keras)"
KERAS_INT8 = "keras-int8"  # Keras 3's model.quantize("int8"), for comparison


def _inputs(card, data: str):
    from artifacts.preprocess import arrays_to_model_input
    from tune.data import fashion_mnist

    ds = fashion_mnist.load(data or None)
    spec = card.preprocess_spec
    return (arrays_to_model_input(ds.train_images, spec), ds.train_labels.astype(int),
            arrays_to_model_input(ds.test_images, spec), ds.test_labels.astype(int))


def latency_worker(models: dict, data: str, rounds: int, calls: int) -> dict:
    """Per variant: batch-1 call times (all of them) and per-image time at batch 32 per round."""
    import numpy as np

    from artifacts.inference import ModelRunner

    runners = {name: ModelRunner(uri) for name, uri in models.items()}
    _, _, test_x, _ = _inputs(next(iter(runners.values())).card, data)
    pool = test_x[:1024]
    b1 = {name: [] for name in runners}
    b32 = {name: [] for name in runners}
    for name, r in runners.items():  # warm every batch size first
        r(pool[:1]), r(pool[:32])
    for _ in range(rounds):
        for name, r in runners.items():
            for i in range(calls):
                x = pool[i % 1024:i % 1024 + 1]
                t0 = time.perf_counter()
                r(x)
                b1[name].append(time.perf_counter() - t0)
            n = max(1, calls // 8)
            t0 = time.perf_counter()
            for i in range(n):
                r(pool[(i * 32) % 992:(i * 32) % 992 + 32])
            b32[name].append((time.perf_counter() - t0) / n / 32)
    return {name: {"b1_p50_ms": float(np.median(b1[name]) * 1e3), "b1_p99_ms": float(np.percentile(b1[name], 99) * 1e3),
                   "b32_ms_per_image": float(np.median(b32[name]) * 1e3)} for name in runners}


def quality_worker(models: dict, data: str, batch: int, queries: int, seed: int, threads: int) -> dict:
    """Per variant: embedding throughput over the train tiles, test accuracy, mAP category=all."""
    import numpy as np

    from artifacts.inference import ModelRunner
    from jobs.evaluate_search import exact_metrics

    runners = {name: ModelRunner(uri) for name, uri in models.items()}
    train_x, train_y, test_x, test_y = _inputs(next(iter(runners.values())).card, data)
    seconds = dict.fromkeys(runners, 0.0)
    catalogue = {name: [] for name in runners}
    chunk = 4 * batch
    for name, r in runners.items():
        r(train_x[:batch])  # warm this batch size
    for start in range(0, len(train_x), chunk):  # variants in turn, chunk by chunk
        for name, r in runners.items():
            t0 = time.perf_counter()
            for s in range(start, min(start + chunk, len(train_x)), batch):
                catalogue[name].append(r(train_x[s:s + batch]).embeddings)
            seconds[name] += time.perf_counter() - t0
    picks = np.arange(len(test_y))
    if 0 < queries < len(picks):
        picks = np.sort(np.random.default_rng(seed).choice(picks, size=queries, replace=False))
    out, base_pred = {}, None
    for name, r in runners.items():
        test = [r(test_x[s:s + batch]) for s in range(0, len(test_x), batch)]
        predicted = np.concatenate([f.probabilities for f in test]).argmax(axis=1)
        base_pred = predicted if base_pred is None else base_pred
        t0 = time.perf_counter()
        ex = exact_metrics(np.concatenate([f.embeddings for f in test])[picks], test_y[picks], predicted[picks],
                           np.concatenate(catalogue[name]), train_y, k=10, threads=threads)
        out[name] = {"embed_images_per_s": len(train_x) / seconds[name], "test_accuracy": float(np.mean(predicted == test_y)),
                     "agreement_top1": float(np.mean(predicted == base_pred)), "map_all": float(np.nanmean(ex["ap"])),
                     "precision_at_10_all": float(np.mean(ex["p_at_k"])), "ranking_s": time.perf_counter() - t0}
        print(f"{name}: {json.dumps(out[name])}", file=sys.stderr, flush=True)
    return {"variants": out, "queries": int(len(picks)), "catalogue_items": int(len(train_x))}


def _worker(kind: str, threads: int, models: dict, args) -> dict:
    """Run one worker in a fresh process with ``threads`` TensorFlow/TFLite threads."""
    cmd = [sys.executable, __file__, "--worker", kind, "--threads", str(threads), "--models", json.dumps(models),
           "--data", args.data, "--queries", str(args.queries), "--embed-batch", str(args.embed_batch),
           "--rounds", str(args.rounds), "--calls", str(args.calls), "--seed", str(args.seed)]
    done = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _variants(args) -> tuple[dict, dict]:
    """``{name: model URI}`` for the float model and each variant (quantized here), and their file sizes."""
    from artifacts import model_artifact, publish, storage
    from artifacts.model_card import CARD_FILE
    from jobs.quantize_model import QuantizeConfig, run

    parent = publish.resolve(args.model, manifest_name=CARD_FILE)
    models = {BASE: parent}
    out = args.out or tempfile.mkdtemp(prefix="vitrine-variants-")
    for variant in args.variants.split(","):
        if variant == KERAS_INT8:
            models[variant] = _keras_int8(parent, out)
            continue
        result = run(QuantizeConfig(model=parent, variant=variant, out=out, evaluate=False))
        models[f"{variant} (TFLite)" if variant == "float32" else variant] = result.model_uri
    sizes = {name: len(storage.read_bytes(storage.join(uri, model_artifact.read_card(uri).model_file)))
             for name, uri in models.items()}
    return models, sizes


def _keras_int8(parent: str, out: str) -> str:
    """The alternative the quantize job did not take: Keras 3's own ``model.quantize("int8")``, saved as
    a Keras model artifact (it quantizes the Dense layers; convolutions stay float32)."""
    import dataclasses
    import warnings

    from artifacts import model_artifact, publish

    loaded = model_artifact.load(parent)
    with warnings.catch_warnings():  # one "does not have a quantize method" per conv/pool/norm layer
        warnings.simplefilter("ignore")
        loaded.model.quantize("int8")
    card = dataclasses.replace(loaded.card, model_id=publish.new_id(f"{loaded.card.model_id}-keras-int8"[:100]),
                               quantization={"variant": KERAS_INT8, "method": "keras-quantize",
                                             "parent_model_id": loaded.card.model_id})
    return model_artifact.save(loaded.model, card, out, make_latest=False)


def markdown(result: dict) -> str:
    base = result["rows"][BASE]
    lines = ["| variant | model file | test accuracy | Δ points | top-1 agreement | mAP (all) | Δ mAP | "
             "classifier b1 p50 ms | b32 ms/image | embed images/s | b1 / b32 / embed speed-up |",
             "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for name, r in result["rows"].items():
        speed = (f"{base['b1_p50_ms'] / r['b1_p50_ms']:.2f}× / {base['b32_ms_per_image'] / r['b32_ms_per_image']:.2f}× / "
                 f"{r['embed_images_per_s'] / base['embed_images_per_s']:.2f}×")
        lines.append(f"| {name} | {r['size_bytes'] / 1e6:.2f} MB ({r['size_bytes'] / base['size_bytes']:.2f}×) | "
                     f"{r['test_accuracy']:.4f} | {100 * (r['test_accuracy'] - base['test_accuracy']):+.2f} | "
                     f"{r['agreement_top1']:.4f} | {r['map_all']:.4f} | {r['map_all'] - base['map_all']:+.4f} | "
                     f"{r['b1_p50_ms']:.3f} | {r['b32_ms_per_image']:.3f} | {r['embed_images_per_s']:,.0f} | {speed} |")
    m = result["machine"]
    lines.append(f"\n{result['queries']:,} test queries against {result['catalogue_items']:,} catalogue tiles; "
                 f"classifier path on {result['classifier_threads']} thread(s), embedding path on "
                 f"{result['embed_threads']} at batch {result['embed_batch']}; {m['cpu']}, {m['cpus']} CPUs, load "
                 f"{m['load_before']} before, {m['load_after']} after; {result['seconds']:.0f} s.")
    return "\n".join(lines)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="the float model: a model dir, or a models/ dir (its LATEST)")
    p.add_argument("--variants", default="int8,float16,float32,keras-int8", help="comma-separated (default %(default)s)")
    p.add_argument("--out", default="", help="models directory for the variants (default: a temporary one)")
    p.add_argument("--data", default=os.environ.get("FASHION_MNIST_DIR", ""), help="Fashion-MNIST directory")
    p.add_argument("--queries", type=int, default=0, help="test queries for mAP (default 0 = all 10,000)")
    p.add_argument("--classifier-threads", type=int, default=1)
    p.add_argument("--embed-threads", type=int, default=2)
    p.add_argument("--embed-batch", type=int, default=1024)
    p.add_argument("--rounds", type=int, default=5, help="latency rounds, variants in turn")
    p.add_argument("--calls", type=int, default=200, help="batch-1 calls per variant per round")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the result here")
    p.add_argument("--markdown", help="write the table here")
    p.add_argument("--worker", choices=("latency", "quality"), help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--models", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    if args.worker:
        from artifacts.inference import configure_tensorflow

        configure_tensorflow(args.threads)
        models = json.loads(args.models)
        out = (latency_worker(models, args.data, args.rounds, args.calls) if args.worker == "latency" else
               quality_worker(models, args.data, args.embed_batch, args.queries, args.seed, args.threads))
        print(json.dumps(out))
        return 0
    if not args.model:
        p.error("--model is required")
    t0 = time.time()
    load_before = os.getloadavg()
    models, sizes = _variants(args)
    latency = _worker("latency", args.classifier_threads, models, args)
    quality = _worker("quality", args.embed_threads, models, args)
    rows = {name: {"model_uri": uri, "size_bytes": sizes[name], **latency[name], **quality["variants"][name]}
            for name, uri in models.items()}
    result = {"rows": rows, "queries": quality["queries"], "catalogue_items": quality["catalogue_items"],
              "classifier_threads": args.classifier_threads, "embed_threads": args.embed_threads,
              "embed_batch": args.embed_batch, "seconds": time.time() - t0,
              "machine": {"cpu": _cpu_name(), "cpus": len(os.sched_getaffinity(0)),
                          "load_before": " ".join(f"{x:.2f}" for x in load_before),
                          "load_after": " ".join(f"{x:.2f}" for x in os.getloadavg())}}
    table = markdown(result)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
