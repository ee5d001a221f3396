"""The nightly pipeline as one job: embed the catalogue → build the index → evaluate retrieval.

    vitrine nightly --catalogue .vitrine/catalogues/fashion-mnist-train
    vitrine nightly --config cluster/nightly/nightly.yaml --storage s3://bucket/vitrine --address auto
    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python -m jobs.nightly --config cluster/nightly/nightly.yaml

Each stage publishes atomically (its own ``LATEST``); a stage that fails stops the pipeline and
leaves what search reads untouched. The schedule lives in ``cluster/nightly/`` (a Kubernetes
CronJob and the equivalent crontab line). ``--set embed.max_actors=8``, ``--set index.M=32``
reach the stages' own configs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from dataclasses import dataclass, field

from artifacts.configuration import load_config, to_dict
from artifacts.logs import setup_logging

from .build_index import BuildIndexConfig
from .embed_catalogue import EmbedConfig
from .evaluate_search import EvaluateSearchConfig
from jobs import flags

log = logging.getLogger("vitrine.nightly")


@dataclass(frozen=True)
class NightlyConfig:
    catalogue: str = ""  # required: image folders or a manifest, local or s3://
    model: str = ""  # default <storage>/models (LATEST)
    storage: str = ""  # default $VITRINE_STORAGE or ./.vitrine
    address: str = ""  # Ray cluster address; "" = local Ray
    data: str = ""  # Fashion-MNIST test split for the retrieval evaluation (default $FASHION_MNIST_DIR)
    evaluate_search: bool = True  # only meaningful for a Fashion-MNIST catalogue
    search_queries: int = 0  # 0 = the whole test split
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    index: BuildIndexConfig = field(default_factory=BuildIndexConfig)


def run(config: NightlyConfig) -> dict:
    from artifacts import storage

    from . import build_index, embed_catalogue, evaluate_search

    if not config.catalogue:
        raise ValueError("nightly needs a catalogue (--catalogue URI)")
    root = config.storage or storage.default_root()
    started = time.time()
    embed_cfg = dataclasses.replace(config.embed, catalogue=config.catalogue, model=config.model or config.embed.model,
                                    out=root, address=config.address or config.embed.address)
    embedded = embed_catalogue.run(embed_cfg)
    log.info("embed: run %s %s", embedded.run_id, json.dumps(embedded.counts))
    index_cfg = dataclasses.replace(config.index, embeddings=embedded.run_uri, out=root, storage=root)
    index = build_index.run(index_cfg)
    log.info("index: %s, %d items, recall@10 %.4f", index.index_id, index.items, index.recall_at_10)
    summary = {"embed": {"run_id": embedded.run_id, "run_uri": embedded.run_uri, "counts": embedded.counts,
                         "wall_time_s": embedded.wall_time_s},
               "index": index.to_dict(), "search": None}
    if config.evaluate_search:
        search = evaluate_search.run(EvaluateSearchConfig(model=config.model,
                                                          index=index.index_uri, data=config.data, storage=root,
                                                          queries=config.search_queries))
        summary["search"] = search
    summary["wall_time_s"] = time.time() - started
    summary["config"] = to_dict(config)
    return summary


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vitrine nightly", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML with NightlyConfig keys (embed: and index: sections)")
    p.add_argument("--catalogue")
    p.add_argument("--model")
    flags.add_storage(p)
    p.add_argument("--address")
    p.add_argument("--data")
    p.add_argument("--no-evaluate", action="store_true", help="skip the retrieval evaluation")
    flags.add_overrides(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    config = load_config(NightlyConfig, yaml_path=args.config, overrides=args.overrides,
                         values={"catalogue": args.catalogue, "model": args.model, "storage": args.storage,
                                 "address": args.address, "data": args.data,
                                 "evaluate_search": False if args.no_evaluate else None})
    summary = run(config)
    print(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
