"""List the registered model architectures; sub-commands manage the exported models.

    vitrine models            # a table
    vitrine models --json     # [{"name", "params", "input_shape", "embedding_dim", ...}]
    vitrine models list-artifacts | promote ID [--force] | rollback   # see jobs/models_admin.py
"""

from __future__ import annotations

import argparse
import json
import sys
from jobs import flags


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="vitrine models", description=__doc__,
                                          formatter_class=argparse.RawDescriptionHelpFormatter)
    flags.add_json(p)
    return p


def run() -> list[dict]:
    import logging
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger("vitrine.models").setLevel(logging.WARNING)
    from tune.models import describe_models

    return describe_models()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from .models_admin import SUBCOMMANDS

    if argv and argv[0] in SUBCOMMANDS:
        from . import models_admin

        return models_admin.main(argv)
    args = build_parser().parse_args(argv)
    rows = run()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'name':<18} {'params':>12} {'input':>12} {'embedding':>9}  reference")
    for r in rows:
        shape = "x".join(map(str, r["input_shape"]))
        print(f"{r['name']:<18} {r['params']:>12,} {shape:>12} {r['embedding_dim']:>9}  {r['reference']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
