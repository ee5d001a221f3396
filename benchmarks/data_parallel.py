"""One worker against several: the same one-trial grid trained in the trial's own process
(``resources.workers=1``) and data-parallel on Ray Train workers (``resources.workers=N``).

    python -m benchmarks.data_parallel --workers 1 --workers 2 --per-class 500 --epochs 3 \\
        --out .vitrine/bench/data_parallel.json

Every run is ``tune.grid.run`` (Adam 1e-3, cosine schedule, seed 0, 1 CPU per worker) on a local
Ray of ``--num-cpus`` CPUs (or ``--address``), so the numbers include what a grid trial pays:
Ray Train's start (placement group, workers, TensorFlow's collective setup) for N > 1. Per epoch,
each trial reports its wall time (training pass and validation pass; with N workers every worker
validates on the whole validation split); the table gives the median epoch after the first (the
first traces the step functions), the time per global training step, training samples per second,
the trial's wall time and the test accuracy of its best checkpoint. Prints a Markdown table and
writes it with the numbers as JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path


def measure(workers: int, *, args, root: str) -> dict:
    """One grid run of one trial on ``workers`` workers; its timings and accuracy."""
    from tune.grid import load_grid_config, run

    overrides = [f"train.max_per_class={args.per_class}", f"train.epochs={args.epochs}",
                 f"train.batch_size={args.batch_size}", "train.early_stopping_patience=0",
                 f"resources.workers={workers}", "resources.cpu=1", "robustness_images=0",
                 "explanation_images=0", "evaluate_all=false", "export=false"]
    cfg = load_grid_config(None, overrides, name=f"bench-dp-w{workers}", storage=root, address=args.address,
                           num_cpus=args.num_cpus, architectures=[args.architecture], optimizers=["adam"],
                           learning_rates=[1e-3], data=args.data)
    started = time.time()
    result = run(cfg)
    wall = time.time() - started
    summary = json.loads(Path(result.run_uri, "grid_summary.json").read_text())
    history = _history(result.run_uri)
    train_images = len(_splits(cfg).train_y)
    steps = -(-train_images // args.batch_size)
    epochs = [h["seconds"] for h in history]
    steady = statistics.median(epochs[1:] or epochs)
    return {"workers": workers, "train_images": train_images, "steps_per_epoch": steps, "epoch_seconds": epochs,
            "median_epoch_s": steady, "step_ms": 1000 * steady / steps, "samples_per_s": train_images / steady,
            "trial_s": summary["leaderboard"][0].get("train_seconds"), "grid_wall_s": wall,
            "val_accuracy": result.best["val_accuracy"], "test_accuracy": result.test_metrics["accuracy"]}


def _history(run_uri: str) -> list[dict]:
    """The per-epoch rows the trial reported (Tune's result.json of the run's one trial)."""
    [result_json] = list(Path(run_uri).glob("*/result.json"))
    return [json.loads(line) for line in result_json.read_text().splitlines() if line.strip()]


def _splits(cfg):
    from artifacts.configuration import load_config
    from tune.grid import trial_specs
    from tune.training import TrainConfig, prepare_data

    return prepare_data(load_config(TrainConfig, values=trial_specs(cfg)[0]["train"]), cfg.data or None)


def markdown(rows: list[dict], command: str) -> str:
    lines = [f"`{command}` on this machine ({os.cpu_count()} CPUs, "
             f"{platform.machine()}, no GPU):", "",
             "| workers | train images | steps/epoch | median epoch (s) | per step (ms) | samples/s | trial (s) "
             "| val acc | test acc |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['workers']} | {r['train_images']:,} | {r['steps_per_epoch']} | {r['median_epoch_s']:.2f} "
                     f"| {r['step_ms']:.1f} | {r['samples_per_s']:.0f} | {r['trial_s']:.1f} "
                     f"| {r['val_accuracy']:.4f} | {r['test_accuracy']:.4f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, action="append", help="workers per trial (repeat); default 1 and 2")
    p.add_argument("--per-class", type=int, default=500, help="training images per class (before validation)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128, help="the global batch")
    p.add_argument("--architecture", default="cnn_dropout_1")
    p.add_argument("--data", default="", help="Fashion-MNIST directory (default $FASHION_MNIST_DIR)")
    p.add_argument("--address", default="", help="Ray cluster address (default: a local Ray)")
    p.add_argument("--num-cpus", type=int, default=2, help="the local Ray's CPUs")
    p.add_argument("--out", help="JSON file for the numbers and the table")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="vitrine-bench-dp-") as root:
        rows = [measure(w, args=args, root=root) for w in (args.workers or [1, 2])]
    command = "python -m benchmarks.data_parallel " + " ".join(argv if argv is not None else sys.argv[1:])
    table = markdown(rows, command)
    print(table)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"rows": rows, "markdown": table}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
