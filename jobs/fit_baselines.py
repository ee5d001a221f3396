"""Classical baselines (scikit-learn: logistic regression, k-NN, random forest, SVC) on the split
the grids train and test on, scored with the grids' metrics; ``vitrine compare --baselines DIR``
puts their table beside the CNNs'.

    vitrine baselines                                   # all four, FASHION_MNIST_DIR, default sizes
    vitrine baselines --models knn --models svc --out /tmp/baselines
    vitrine baselines --set 'max_per_class={svc: 0}'    # SVC on the whole training split (slow)
    python -m jobs.fit_baselines --data DIR --set jobs=2 --json

Writes ``baselines.json`` (every model's metrics, per-class included, its fit and predict times,
the load average) and ``baselines.md`` to ``--out`` (default
``<storage>/evaluations/baselines/<run_id>/``). Needs the ``research`` extra (scikit-learn).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field

from artifacts.logs import setup_logging
from jobs import flags

log = logging.getLogger("vitrine.baselines")


@dataclass(frozen=True)
class BaselinesConfig:
    models: tuple[str, ...] = ("logistic_regression", "knn", "random_forest", "svc")
    # model -> training images per class (a seeded subset of the training split); absent or 0 = all
    # of it. An RBF SVC's fit grows about quadratically with the images: 1,000 a class keeps it to
    # minutes on 2 cores, the whole split would take far longer.
    max_per_class: dict = field(default_factory=lambda: {"svc": 1000})
    data: str = ""  # Fashion-MNIST directory or s3:// prefix; default $FASHION_MNIST_DIR
    seed: int = 0  # the grids' split seed (TrainConfig.seed), also the models' seed
    validation_fraction: float = 0.1  # held out as the grids do, so the training split is theirs
    jobs: int = 2  # n_jobs for the models that take it (k-NN, random forest)
    out: str = ""
    storage: str = ""


def run(config: BaselinesConfig) -> dict:
    """Fit every configured baseline on the training split, score it on the test split, write the
    result to ``out``; returns it (``rows``: one per model, in ``models`` order)."""
    from artifacts import publish, storage
    from artifacts.configuration import ConfigError, to_dict
    from artifacts.preprocess import PreprocessSpec
    from tune import classical
    from tune.data.fashion_mnist import per_class_subset
    from tune.data.splits import load_splits

    unknown = [m for m in (*config.models, *config.max_per_class) if m not in classical.MODELS]
    if unknown or not config.models:
        raise ConfigError(f"unknown or no baseline models {unknown}; valid: {', '.join(classical.MODELS)}")
    import sklearn

    started, load_start = time.time(), os.getloadavg()[0]
    # The CNNs' own input (tune.training.input_spec for a 28x28x1 model), so only the model differs.
    spec = PreprocessSpec.for_input_shape((28, 28, 1), canonical=True)
    ds = load_splits("fashion-mnist", config.data or None, spec=spec, seed=config.seed,
                     validation_fraction=config.validation_fraction)
    train_x, test_x = classical.features(ds.train_x, spec), classical.features(ds.test_x, spec)
    rows = []
    for name in config.models:
        per_class = int(config.max_per_class.get(name) or 0)
        keep = per_class_subset(ds.train_y, per_class, seed=config.seed) if per_class else slice(None)
        rows.append(classical.fit_and_score(name, train_x[keep], ds.train_y[keep], test_x, ds.test_y,
                                            ds.class_names, seed=config.seed, n_jobs=config.jobs))
    run_id = publish.new_id("baselines")
    out = config.out or storage.join(config.storage or storage.default_root(), "evaluations", "baselines", run_id)
    result = {"run_id": run_id, "out": out, "rows": rows, "train_images": int(len(ds.train_y)),
              "test_images": int(len(ds.test_y)), "data": ds.describe(), "seed": config.seed,
              "validation_fraction": config.validation_fraction, "n_jobs": config.jobs,
              "sklearn": sklearn.__version__, "wall_seconds": round(time.time() - started, 1),
              "load_average": {"start": load_start, "end": os.getloadavg()[0]}, "config": to_dict(config)}
    storage.write_text(storage.join(out, classical.RESULT_FILE), json.dumps(result, indent=2) + "\n")
    storage.write_text(storage.join(out, classical.TABLE_FILE), classical.markdown(result))
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vitrine baselines", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", action="append", help="a baseline to run (repeatable; default all four)")
    p.add_argument("--data", help="Fashion-MNIST directory or s3:// prefix (default $FASHION_MNIST_DIR)")
    p.add_argument("--out", help="directory (or URI) for baselines.json and baselines.md "
                                 "(default <storage>/evaluations/baselines/<run_id>)")
    flags.add_storage(p)
    p.add_argument("--config", help="YAML file over the defaults")
    flags.add_overrides(p)
    flags.add_json(p)
    return p


def main(argv: list[str] | None = None) -> int:
    from artifacts.configuration import load_config
    from tune import classical

    args = build_parser().parse_args(argv)
    setup_logging()
    config = load_config(BaselinesConfig, yaml_path=args.config, overrides=args.overrides, values={
        "models": tuple(args.models) if args.models else None, "data": args.data, "out": args.out,
        "storage": args.storage})
    result = run(config)
    print(json.dumps(result, indent=2) if args.json else classical.markdown(result) + f"\nWritten to {result['out']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
