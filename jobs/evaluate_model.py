"""Reload a published model and reproduce its test metrics; optionally measure its robustness.

    vitrine evaluate --model .vitrine/models              # the LATEST model
    vitrine evaluate --model s3://bucket/vitrine/models/vitrine-cnn-20261128T130000-ab12 --json
    vitrine evaluate --model .vitrine/models --robustness [--robustness-images 300] [--compare URI ...]
    python -m jobs.evaluate_model --model ...

``--robustness`` renders Fashion-MNIST test tiles as clean product photos, applies one
perturbation at a time at each strength (tune/robustness.py lists them) and measures accuracy
through the model's own preprocessing; ``--compare`` adds models drawn on the same plots, on the
same photos. robustness.json, robustness.md and robustness.png go to
``<storage>/evaluations/models/<model_id>/robustness/`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from dataclasses import dataclass

from artifacts.logs import setup_logging
from jobs import flags

log = logging.getLogger("vitrine.evaluate")


@dataclass(frozen=True)
class RobustnessConfig:
    model: str  # model dir or models/ dir with LATEST
    compare: tuple[str, ...] = ()  # more models, drawn on the same plots
    images: int = 300  # Fashion-MNIST test tiles, about as many per class
    seed: int = 0
    data: str = ""  # Fashion-MNIST directory or s3:// prefix; default $FASHION_MNIST_DIR
    storage: str = ""  # default $VITRINE_STORAGE or ./.vitrine
    out: str = ""  # default <storage>/evaluations/models/<model_id>/robustness
    threads: int = 0  # TensorFlow CPU threads; 0 = all


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="vitrine evaluate", description=__doc__,
                                          formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="model directory or models/ directory with LATEST (default <storage>/models)")
    flags.add_storage(p)
    p.add_argument("--data", help="Fashion-MNIST directory or s3:// prefix (default $FASHION_MNIST_DIR)")
    flags.add_json(p)
    p.add_argument("--robustness", action="store_true",
                   help="also measure accuracy against the strength of each photo perturbation")
    p.add_argument("--robustness-images", type=int, default=RobustnessConfig.images, metavar="N",
                   help=f"test tiles per perturbation level (default {RobustnessConfig.images}; 0 = all 10,000)")
    p.add_argument("--compare", nargs="+", default=[], metavar="URI", help="more models for the robustness plots")
    p.add_argument("--seed", type=int, default=0, help="which test tiles, and the noise")
    p.add_argument("--out", help="robustness report directory (default <storage>/evaluations/models/<id>/robustness)")
    return p


def run(model_uri: str, data: str | None = None) -> dict:
    from tune.evaluation import evaluate_artifact

    return evaluate_artifact(model_uri, data)


def run_robustness(config: RobustnessConfig) -> dict:
    """Measure the model (and ``compare``) on the same perturbed photos; write and return the report."""
    import numpy as np

    from artifacts import storage
    from artifacts.inference import ModelRunner, configure_tensorflow
    from tune import robustness
    from tune.data import fashion_mnist

    from .evaluate_search import category_classes

    configure_tensorflow(config.threads)
    ds = fashion_mnist.load(config.data or None)
    picks = robustness.sample(ds.test_images, ds.test_labels, config.images, config.seed)
    tiles, tile_labels = ds.test_images[picks], ds.test_labels[picks].astype(int)
    models = []
    for uri in (config.model, *config.compare):
        runner = ModelRunner(uri)
        # A model's classes may be spelled as folder names ("t-shirt-top") or ordered differently.
        mapping = category_classes(list(fashion_mnist.CLASS_NAMES), runner.class_names)
        missing = [c for c, i in mapping.items() if i < 0]
        if missing:
            raise ValueError(f"model {runner.model_id} has no class for {', '.join(missing)}: "
                             "the robustness photos are Fashion-MNIST test tiles")
        labels = np.array([mapping[fashion_mnist.CLASS_NAMES[y]] for y in tile_labels])
        models.append(robustness.ModelUnderTest(runner.model_id, runner.card.preprocess_spec,
                                                lambda x, r=runner: r(x).probabilities, labels,
                                                architecture=runner.card.architecture))
    log.info("robustness: %d models, %d test tiles, %d perturbations", len(models), len(tiles),
             len(robustness.PERTURBATIONS))
    result = robustness.measure(models, tiles, seed=config.seed)
    result["data_source"] = ds.source
    out = config.out or storage.join(config.storage or storage.default_root(), "evaluations", "models",
                                     models[0].model_id, "robustness")
    with tempfile.TemporaryDirectory(prefix="vitrine-robustness-") as tmp:
        robustness.write_report(result, tmp)
        storage.upload_dir(tmp, out)
    result["out"] = out
    log.info("robustness report written to %s in %.0f s", out, result["seconds"])
    return result


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    from artifacts import model_artifact, storage

    model_uri = args.model or model_artifact.models_root(args.storage or storage.default_root())
    result = run(model_uri, args.data)
    if args.robustness:
        # --data names the model's own dataset; the robustness photos need Fashion-MNIST tiles.
        own = model_artifact.read_card(model_uri).dataset.get("name", "fashion-mnist") == "fashion-mnist"
        tiles = args.data if own else None
        result["robustness"] = run_robustness(RobustnessConfig(
            model=model_uri, compare=tuple(args.compare), images=args.robustness_images, seed=args.seed,
            data=tiles or "", storage=args.storage or "", out=args.out or ""))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        from tune.metrics import metrics_table_markdown

        m, c = result["metrics"], result["card_metrics"]
        print(f"model {result['model_id']} ({result['architecture']}) on {result['data_source']}")
        print(metrics_table_markdown(m))
        if c:
            print(f"\ncard accuracy {c.get('accuracy', float('nan')):.4f}, measured {m['accuracy']:.4f}: "
                  + ("reproduced" if result["reproduced"] else "NOT reproduced"))
        if args.robustness:
            from tune.robustness import markdown

            print("\n" + markdown(result["robustness"]) + f"\nwritten to {result['robustness']['out']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
