"""Run the architecture × optimizer × learning-rate grid on Ray Tune; report and export the best.

    vitrine tune --grid tune/grids/default.yaml
    vitrine tune --grid tune/grids/thesis.yaml --address auto --storage s3://bucket/vitrine
    vitrine tune --grid tune/grids/default.yaml --smoke-test
    vitrine tune --grid tune/grids/default.yaml --resume          # continue an interrupted run
    ray job submit --working-dir . -- python -m jobs.tune_grid --grid tune/grids/thesis.yaml

Flags override the YAML; ``--set key=value`` overrides anything (``--set train.epochs=3``,
``--set resources.gpu=0.5``). The exported model becomes ``models/LATEST`` only if it passes the
quality gate (``--set gate.min_accuracy=0.9``, ``--set gate.tolerance=0.01``; see
``artifacts/model_gate.py``); otherwise it stays exported and ``vitrine models promote ID`` can
publish it later.
"""

from __future__ import annotations

import argparse
import json
import sys

from artifacts.logs import setup_logging
from jobs import flags


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="vitrine tune", description=__doc__,
                                          formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", help="grid YAML (default: the built-in default grid)")
    p.add_argument("--smoke-test", action="store_true", help="two trials, one epoch, a small subset")
    flags.add_storage(p)
    p.add_argument("--data", help="Fashion-MNIST directory or s3:// prefix (default $FASHION_MNIST_DIR)")
    p.add_argument("--address", help="Ray cluster address (default: start a local Ray)")
    p.add_argument("--resume", action="store_true", help="resume the last run of this grid")
    flags.add_overrides(p)
    flags.add_json(p)
    return p


def default_grid_path() -> str:
    from importlib.resources import files

    return str(files("tune") / "grids" / "default.yaml")


def run(config):
    from tune.grid import run as run_grid

    return run_grid(config)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    from tune.grid import load_grid_config

    config = load_grid_config(args.grid or default_grid_path(), args.overrides, storage=args.storage,
                              data=args.data, address=args.address, resume=args.resume or None,
                              smoke_test=args.smoke_test or None)
    result = run(config)
    if args.json:
        print(json.dumps({"run_id": result.run_id, "model_uri": result.model_uri, "published": result.published,
                          "publish_reason": result.publish_reason,
                          "report_uri": result.report_uri,
                          "best": result.best, "wall_time_s": result.wall_time_s,
                          "sum_trial_seconds": result.sum_trial_seconds,
                          "test_accuracy": (result.test_metrics or {}).get("accuracy")}, indent=2))
    else:
        print(f"run {result.run_id}: {len(result.leaderboard)} trials in {result.wall_time_s:.0f} s")
        if result.best:
            b = result.best
            print(f"best: {b['architecture']} {b['optimizer']} lr={b['learning_rate']:g} "
                  f"val {b['val_accuracy']:.4f} test {b['test_accuracy']:.4f}")
        print(f"report: {result.report_uri}/report.md")
        if result.model_uri:
            print(f"model: {result.model_uri}" + ("" if result.published else " (models/LATEST unchanged)"))
            print(f"  {result.publish_reason}")
    return 0 if result.best else 1


if __name__ == "__main__":
    sys.exit(main())
