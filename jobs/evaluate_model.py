"""Reload a published model and reproduce its test metrics.

    vitrine evaluate --model .vitrine/models              # the LATEST model
    vitrine evaluate --model s3://bucket/vitrine/models/vitrine-cnn-20261128T130000-ab12 --json
    python -m jobs.evaluate_model --model ...
"""

from __future__ import annotations

import argparse
import json
import sys

from artifacts.logs import setup_logging


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="vitrine evaluate", description=__doc__,
                                          formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="model directory or models/ directory with LATEST (default <storage>/models)")
    p.add_argument("--storage", help="storage root URI (default $VITRINE_STORAGE or ./.vitrine)")
    p.add_argument("--data", help="Fashion-MNIST directory or s3:// prefix (default $FASHION_MNIST_DIR)")
    p.add_argument("--json", action="store_true")
    return p


def run(model_uri: str, data: str | None = None) -> dict:
    from tune.evaluation import evaluate_artifact

    return evaluate_artifact(model_uri, data)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    from artifacts import model_artifact, storage

    model_uri = args.model or model_artifact.models_root(args.storage or storage.default_root())
    result = run(model_uri, args.data)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
