"""Build the HNSW search index of an embeddings run and publish it atomically.

    vitrine build-index                                          # LATEST model's LATEST embeddings run
    vitrine build-index --embeddings .vitrine/embeddings/<model_id> --storage .vitrine
    vitrine build-index --embeddings s3://bucket/vitrine/embeddings/<model_id>/<run_id> \\
        --storage s3://bucket/vitrine --set M=32 --set ef=128
    vitrine build-index --config index.yaml --smoke-test         # 2,000 items, LATEST untouched
    vitrine build-index --full                                   # rebuild instead of updating LATEST
    ray job submit --working-dir . -- python -m jobs.build_index --embeddings s3://...

Writes ``<storage>/indexes/<index_id>/`` (see :mod:`artifacts.hnsw_index`; the manifest last, after
the upload) and then moves ``<storage>/indexes/LATEST`` to it. Any failure before that (empty or
malformed embeddings, recall below ``min_recall``, an upload error) leaves ``LATEST`` where it
was. The index is built in memory; for ``s3://`` its files go to a local temporary directory,
are uploaded, and only then is the manifest written.

By default the ``LATEST`` index under ``<storage>/indexes`` is updated rather than rebuilt
(:mod:`artifacts.index_update`): items with the same id, content hash and category keep their
position, removed and changed ones become tombstones, new and changed ones are appended. Only
ids, categories and hashes are read to decide that, then the vectors of the rows that are added.
It rebuilds instead (``mode: full`` with the reason, in the log, the result and the manifest's
``update``) with ``--full``, for a smoke test, when there is no previous index, when it is of
another model or dimension, has other build parameters or fails to load, and when tombstones
would pass ``compact_deleted_share`` of the rows (compaction).

Recall@10 against exact search is measured on ``recall_queries`` catalogue vectors (default
1,000), unfiltered and restricted to each query's own category, and recorded in the manifest.

Why filtered search uses per-category graphs: ``benchmarks/filter_strategies.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from dataclasses import dataclass

import numpy as np

from artifacts.logs import setup_logging
from jobs import flags

log = logging.getLogger("vitrine.build_index")

SMOKE_ITEMS = 2000


@dataclass(frozen=True)
class BuildIndexConfig:
    embeddings: str = ""  # run dir or <root>/embeddings/<model_id>; default: the LATEST model's
    out: str = ""  # storage root receiving indexes/; default: storage
    storage: str = ""  # default: $VITRINE_STORAGE or ./.vitrine
    M: int = 16
    ef_construction: int = 200
    ef: int = 64
    exact_below: int = 1000  # categories this small are searched exactly, without a sub-index
    num_threads: int = 0  # hnswlib threads for build and recall measurement; 0 = every core
    seed: int = 100
    recall_queries: int = 1000
    min_recall: float = 0.9  # refuse to publish an index whose recall@10 is below this
    publish: bool = True
    smoke_test: bool = False  # the first 2,000 items, fewer recall queries, LATEST untouched
    incremental: bool = True  # update the LATEST index when it allows; False (--full) rebuilds
    compact_deleted_share: float = 0.2  # rebuild once tombstones would pass this share of the rows
    # An index larger than one Search replica's memory is built as shards (artifacts/index_shards.py)
    # of at most this many bytes of files (estimated) or items each; both 0 = one plain index.
    shard_max_bytes: int = 0
    shard_max_items: int = 0


@dataclass
class BuildIndexResult:
    index_id: str
    index_uri: str
    published: bool
    embeddings_run: str
    model_id: str
    items: int
    embedding_dim: int
    categories: dict
    recall_at_10: float
    filtered_recall_at_10: float
    build_seconds: float
    wall_seconds: float
    mode: str = "full"  # or "incremental"
    reason: str = ""  # why this mode
    added: int = 0
    deleted: int = 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def storage_root(config: BuildIndexConfig) -> str:
    from artifacts import storage

    return config.out or config.storage or storage.default_root()


def resolve_embeddings(config: BuildIndexConfig) -> str:
    """The embeddings run to index: as given, or the LATEST run of the LATEST model."""
    from artifacts import embeddings, model_artifact, publish

    if config.embeddings:
        return embeddings.resolve_run(config.embeddings)
    root = config.storage or storage_root(config)
    try:
        model_id = publish.latest_id(model_artifact.models_root(root))
    except publish.NotPublishedError:
        raise ValueError(f"no --embeddings given and no model published under {root}/models") from None
    return embeddings.resolve_run(embeddings.model_runs_uri(root, model_id))


def read_embeddings(run_uri: str, max_items: int = 0) -> tuple[list[str], list[str | None], np.ndarray, object]:
    """``(item_ids, categories, vectors, run_manifest)`` of a complete embeddings run."""
    from artifacts import embeddings
    from artifacts.index_update import check_row_count

    run_uri = embeddings.resolve_run(run_uri)
    manifest = embeddings.read_manifest(run_uri)
    table = embeddings.read_table(run_uri, columns=["item_id", "category", "embedding"])
    check_row_count(run_uri, manifest, table.num_rows)
    if max_items:
        table = table.slice(0, max_items)
    dim = int(manifest.embedding_dim)
    column = table.column("embedding").combine_chunks()
    if column.null_count:
        raise ValueError(f"{run_uri}: {column.null_count} rows have no embedding")
    vectors = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, dim)
    return table.column("item_id").to_pylist(), table.column("category").to_pylist(), vectors, manifest


def catalogue_roots_of(run_manifest) -> tuple[str, ...]:
    """The catalogue roots of an embeddings run: its catalogue's own root plus the
    ``allowed_image_prefixes`` it ran with (:func:`artifacts.image_roots.catalogue_roots`)."""
    from artifacts.image_roots import catalogue_roots

    recorded = (run_manifest.config or {}).get("catalogue_roots")
    if recorded:  # absolute, as the job saw them (older runs: derived below)
        return tuple(recorded)
    prefixes = (run_manifest.config or {}).get("allowed_image_prefixes") or ()
    return catalogue_roots(run_manifest.catalogue, prefixes) if run_manifest.catalogue else tuple(prefixes)


def build_or_update(config: BuildIndexConfig, run_uri: str, indexes: str):
    """``(index, update)``: the ``LATEST`` index under ``indexes`` updated to the run when it
    allows, else a full build; ``update`` says which, why, and what changed (the manifest's)."""
    from artifacts import embeddings, index_update
    from artifacts.hnsw_index import HnswIndex
    from artifacts.index_manifest import IndexBuildError

    run_manifest = embeddings.read_manifest(run_uri)
    previous, plan = None, None
    if config.smoke_test:
        reason = "smoke test (the first items only)"
    elif config.shard_max_bytes or config.shard_max_items:
        reason = "a sharded index (shard_max_bytes / shard_max_items) is built in full"
    elif not config.incremental:
        reason = "incremental updates are off (--full)"
    else:
        params = {"M": config.M, "ef_construction": config.ef_construction, "exact_below": config.exact_below,
                  "seed": config.seed}
        previous, reason = index_update.open_previous(indexes, model_id=run_manifest.model_id,
                                                      dim=run_manifest.embedding_dim, params=params,
                                                      num_threads=config.num_threads)
    ids, cats, hashes, _ = index_update.read_keys(run_uri)
    if not ids:
        raise IndexBuildError(f"embeddings run {run_uri} holds no items; nothing to index")
    if previous is not None:
        plan = index_update.plan_update(previous, ids, cats, hashes)
        if plan.deleted_share > config.compact_deleted_share:
            reason = (f"compacting: tombstones would be {plan.deleted_share:.1%} of the rows "
                      f"(> compact_deleted_share {config.compact_deleted_share})")
            previous, plan = None, None
    if plan is not None:
        vectors = index_update.read_rows(run_uri, plan.add_rows, plan.add_ids)
        previous_id = previous.manifest.index_id
        index, stats = index_update.apply_update(previous, plan, vectors, num_threads=config.num_threads)
        index.set_ef(config.ef)
        return index, {"mode": "incremental", "reason": f"updated the previous index {previous_id}",
                       "previous_index": previous_id, **stats.to_dict()}
    log.info("full rebuild: %s", reason)
    if config.smoke_test:
        ids, cats, hashes = ids[:SMOKE_ITEMS], cats[:SMOKE_ITEMS], hashes[:SMOKE_ITEMS]
    vectors = index_update.read_rows(run_uri, np.arange(len(ids)), ids)
    log.info("indexing %d items (dim %d) of embeddings run %s", len(ids), vectors.shape[1], run_uri)
    if config.shard_max_bytes or config.shard_max_items:
        from artifacts.index_shards import ShardedIndex

        index = ShardedIndex.build(ids, cats, vectors, max_bytes_per_shard=config.shard_max_bytes,
                                   max_items_per_shard=config.shard_max_items, M=config.M,
                                   ef_construction=config.ef_construction, ef=config.ef,
                                   exact_below=config.exact_below, seed=config.seed, num_threads=config.num_threads)
        return index, {"mode": "full", "reason": reason, "added": len(ids), "deleted": 0}
    index = HnswIndex.build(ids, cats, vectors, M=config.M, ef_construction=config.ef_construction, ef=config.ef,
                            exact_below=config.exact_below, seed=config.seed, num_threads=config.num_threads,
                            content_hashes=hashes)
    return index, {"mode": "full", "reason": reason, "added": len(ids), "deleted": 0}


def run(config: BuildIndexConfig) -> BuildIndexResult:
    """Read the embeddings, build or update, measure recall, write ``indexes/<id>/`` and publish it."""
    from artifacts import embeddings, publish
    from artifacts.configuration import to_dict
    from artifacts.index_manifest import MANIFEST, IndexBuildError, indexes_root

    t0 = time.time()
    if config.smoke_test:
        config = dataclasses.replace(config, recall_queries=min(config.recall_queries, 200), publish=False)
    run_uri = resolve_embeddings(config)
    run_manifest = embeddings.read_manifest(run_uri)
    root = storage_root(config)
    indexes = indexes_root(root)
    index, update = build_or_update(config, run_uri, indexes)
    recall = index.measure_recall(k=10, sample=config.recall_queries, seed=config.seed)
    filtered = index.measure_recall(k=10, sample=config.recall_queries, seed=config.seed, category="own")
    log.info("recall@10 vs exact on %d catalogue queries: %.4f (within own category: %.4f)",
             min(config.recall_queries, len(index)), recall, filtered)
    if not recall >= config.min_recall:
        raise IndexBuildError(f"recall@10 {recall:.4f} is below min_recall {config.min_recall}; not publishing "
                              f"(raise ef or M, or lower min_recall)")

    model_id = run_manifest.model_id
    # Recorded for the item-image route: the roots the embedding job confined this catalogue to.
    roots = catalogue_roots_of(run_manifest)
    index_id = publish.new_id(f"hnsw-{model_id}"[:100])
    uri = publish.artifact_uri(indexes, index_id)
    index.save(uri, index_id=index_id, model_id=model_id, source_embeddings=run_uri,
               embeddings_run_id=run_manifest.run_id,
               recall={"recall_at_10": round(recall, 5), "filtered_recall_at_10": round(filtered, 5), "k": 10,
                       "queries": min(config.recall_queries, len(index)), "seed": config.seed,
                       "queries_from": "catalogue vectors", "ties": "a hit at the exact k-th similarity counts"},
               config=to_dict(config), catalogue_roots=roots, update=update)
    published = False
    if config.publish:
        try:
            publish.publish(indexes, index_id, manifest_name=MANIFEST)
            published = True
            log.info("published %s as %s/LATEST", uri, indexes)
        except publish.StaleArtifactError as exc:
            log.warning("%s", exc)
    return BuildIndexResult(index_id=index_id, index_uri=uri, published=published, embeddings_run=run_uri,
                            model_id=model_id, items=len(index), embedding_dim=index.dim,
                            categories=index.category_counts(), recall_at_10=recall, filtered_recall_at_10=filtered,
                            build_seconds=index.build_seconds, wall_seconds=time.time() - t0,
                            mode=update["mode"], reason=update["reason"], added=int(update["added"]),
                            deleted=int(update["deleted"]))


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="vitrine build-index", description=__doc__,
                                          formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--embeddings", help="embeddings run dir, or <root>/embeddings/<model_id> (its LATEST run)")
    flags.add_storage(p)
    flags.refuse_renamed(p, "--out", "--storage", "the storage root that receives indexes/")
    p.add_argument("--config", help="YAML file with BuildIndexConfig keys")
    p.add_argument("--threads", type=int, dest="num_threads", help="hnswlib threads (0 = every core)")
    p.add_argument("--recall-queries", type=int, help="catalogue queries for the recall check (default 1000)")
    p.add_argument("--smoke-test", action="store_true", help="first 2,000 items; does not move LATEST")
    p.add_argument("--no-publish", action="store_true", help="write the index but leave LATEST alone")
    p.add_argument("--full", action="store_true", help="rebuild from scratch instead of updating LATEST")
    flags.add_overrides(p)
    flags.add_json(p)
    return p


def main(argv: list[str] | None = None) -> int:
    from artifacts.configuration import load_config

    args = build_parser().parse_args(argv)
    setup_logging()
    values = {"embeddings": args.embeddings, "storage": args.storage, "num_threads": args.num_threads,
              "recall_queries": args.recall_queries, "smoke_test": args.smoke_test or None,
              "publish": False if args.no_publish else None, "incremental": False if args.full else None}
    config = load_config(BuildIndexConfig, yaml_path=args.config, overrides=args.overrides, values=values)
    result = run(config)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(f"index {result.index_id}: {result.items} items, dim {result.embedding_dim}, "
              f"{len(result.categories)} categories, {result.mode} in {result.build_seconds:.1f} s "
              f"(+{result.added} -{result.deleted}; {result.reason})")
        print(f"recall@10 vs exact: {result.recall_at_10:.4f} (within own category {result.filtered_recall_at_10:.4f})")
        print(f"{'published' if result.published else 'written (LATEST unchanged)'}: {result.index_uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
