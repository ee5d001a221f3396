"""Embed a catalogue with Ray Data into Parquet, incrementally, and publish the run atomically.

    vitrine embed                     # <storage>/catalogues/fashion-mnist-train with <storage>/models
    vitrine embed --catalogue .vitrine/catalogues/fashion-mnist-train --model .vitrine/models
    vitrine embed --catalogue s3://bucket/catalogues/shop --model s3://bucket/vitrine/models \\
        --storage s3://bucket/vitrine --address auto --set max_actors=8 --set gpus_per_actor=0.5
    vitrine embed --catalogue ... --full                  # ignore the previous run, embed everything
    vitrine embed --catalogue ... --run-id nightly-20261128 --config embed.yaml
    vitrine embed --catalogue ... --smoke-test            # 64 items through the whole Ray Data path
    vitrine embed --catalogue ... --set service_url=http://127.0.0.1:8000   # small increments via the service
    vitrine embed --catalogue shop/ --category-level 2    # <category>/<sub-category>/<image> folders
    ray job submit --working-dir . -- python -m jobs.embed_catalogue --catalogue s3://... \\
        --model s3://bucket/vitrine/models --storage s3://bucket/vitrine

``--catalogue`` defaults to ``<storage>/catalogues/fashion-mnist-train`` (what ``vitrine
export-catalogue`` writes by default); ``--model`` is a model directory or a models/ directory
with LATEST (default ``<storage>/models``);
``--storage`` is the storage root (default ``$VITRINE_STORAGE`` or ``./.vitrine``; the config key is ``out``).
Flags override the YAML; ``--set key=value`` overrides anything (keys: the fields of
:class:`EmbedConfig`).

A run writes ``<storage>/embeddings/<model_id>/<run_id>/`` (``data/``, ``errors/``, then
``manifest.json``) and only then moves that model's ``LATEST``. Items whose content hash is the
same as in the LATEST run of the same model are copied over without being read, decoded or
embedded; new and changed items go through Ray Data (bytes → :mod:`artifacts.preprocess` in
tasks → the model in an actor pool), or, when only a few are left
(``local_max_items``), through the running search service when it serves the same model
(``service_url``, :mod:`embedding.service_client`), else through the same code in this process,
without starting actors.
Items the previous run rejected are tried again. An item is carried over only when its
``image_uri`` is also the one the previous run read; one whose URI moved is read, verified
against its hash and embedded again (a hash is a claim of the manifest, not a proof: carrying it
to a new URI unread would let a manifest point a served item at any file).
Every ``image_uri`` must lie under the catalogue's own root (the manifest's directory, or the
image folders) or under one of ``allowed_image_prefixes``; the others (``file://``, another
bucket, ``..``, a symlink out of the root) are never read and become rows of ``errors/``
with the reason, carried items included.
The manifest and the result count ``total``,
``new``, ``changed``, ``unchanged`` (carried over), ``retried``, ``removed``, ``failed`` and
``embedded``. A bad image is a row in ``errors/`` with its reason; only when more than
``max_failure_share`` of the catalogue fails does the job fail, publishing nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from dataclasses import dataclass, field

from artifacts.logs import setup_logging
from embedding import catalogue_items, run_outcome, run_plan, run_rows
from jobs import flags

log = logging.getLogger("vitrine.embed")

DEFAULT_CATALOGUE = ("catalogues", "fashion-mnist-train")  # under the storage root
COUNT_KEYS = ("total", "new", "changed", "unchanged", "retried", "removed", "failed", "embedded")
@dataclass(frozen=True)
class EmbedConfig:
    # Image folders, a directory with a manifest, or a manifest file (local or s3://);
    # default <out>/catalogues/fashion-mnist-train.
    catalogue: str = ""
    model: str = ""  # model directory or models/ directory with LATEST; default <out>/models
    out: str = ""  # storage root; default $VITRINE_STORAGE or ./.vitrine
    run_id: str = ""  # default: a new sortable id; an existing complete run is returned as is
    full: bool = False  # embed everything, ignoring the previous run
    limit: int = 0  # only the first N catalogue items; 0 = all
    smoke_test: bool = False  # limit 64, always through the Ray Data actor pool
    address: str = ""  # Ray cluster address; "" = the running Ray or a local one
    num_cpus: int = 0  # local Ray only; 0 = all
    batch_size: int = 1024  # rows per decode task and per model call
    min_actors: int = 1
    max_actors: int = 2
    # Rounded up, also each actor's TensorFlow thread count. 1.5 + one 0.5-CPU decode task fills a
    # 2-CPU machine: the actor is the bottleneck, and its model runs 1.9x faster on two threads
    # (0.13 ms an image against 0.26; a full 60k-image run 17.5-17.8 s against 21.8-22.7 s), while
    # decoding (0.07 ms an image) needs far less than a core (benchmarks/embed_parts.py). A
    # smaller local Ray gets an actor that fits it; on a cluster of 1-CPU nodes, set 1.
    cpus_per_actor: float = 1.5
    gpus_per_actor: float = 0.0
    # Per decode task. Unequal to cpus_per_actor (the default), decoding runs in its own tasks and
    # overlaps the seconds an actor spends starting TensorFlow; equal and without GPUs, Ray fuses
    # decoding into the actors (no core reserved for an actor waiting on input: better for long
    # runs on CPU-only clusters).
    decode_cpus: float = 0.5
    io_threads: int = 16  # concurrent reads per task (object storage) and when hashing
    # At most this many items to embed: run them here, without actors. A fresh actor costs seconds
    # (process, TensorFlow import, model load) while a small increment takes well under one in a
    # process that holds the model (a long-lived scheduler keeps it between runs): 2,000 items is
    # ~1 s of work here. 0 = always the actor pool.
    local_max_items: int = 2000
    # The search service (its base URL, e.g. http://vitrine-serve-svc:8000): when it serves this
    # run's model, increments of up to local_max_items go through its POST /v1/embed, whose
    # replicas hold the model already, so a fresh job process needs no TensorFlow. "" = never.
    service_url: str = ""
    service_timeout_s: float = 60.0
    max_failure_share: float = 0.05  # of the catalogue's items; above it the run fails unpublished
    rows_per_file: int = 250_000  # files this process writes (carried rows, small increments)
    # Rows per part file a Ray Data worker writes (16 MB at 256 dims): the driver never holds them.
    rows_per_worker_file: int = 16_384
    # Pass this process's storage settings (endpoint, region, profile) to the Ray workers; never
    # key values (artifacts.secrets): runtime_envs show in the dashboard and job metadata, and
    # nodes get credentials from their role or their own environment.
    forward_storage_env: bool = True
    # Prefixes (s3://bucket/images, /mnt/photos) whose images a catalogue may name besides its own
    # root; anything else is refused into errors/. Empty: the catalogue's own root only.
    allowed_image_prefixes: tuple[str, ...] = ()
    # Image folders: 1 = <category>/<image>; 2 = <category>/<sub-category>/<image>, the sub-category
    # travels into the rows (a manifest's sub_category column does at either level).
    category_level: int = 1


@dataclass
class EmbedResult:
    run_id: str
    run_uri: str
    model_id: str
    counts: dict
    previous_run: str | None
    published: bool
    reused: bool  # the run was already complete and is returned as is
    wall_time_s: float
    errors_uri: str
    timings: dict = field(default_factory=dict)


class EmbedFailedError(RuntimeError):
    """Too many items failed; the run was not published."""


# ---------------------------------------------------------------------------------------------
# The job


def run(config: EmbedConfig) -> EmbedResult:
    """Embed ``config.catalogue`` with ``config.model``; returns counts and where the run lives.

    Raises :class:`EmbedFailedError` (and publishes nothing) when more than
    ``max_failure_share`` of the catalogue's items could not be embedded.
    """
    from artifacts import embeddings, model_artifact, publish, storage
    from artifacts.model_card import CARD_FILE

    t0 = time.perf_counter()
    timings: dict = {}
    started_at = run_outcome.now_iso()
    if config.smoke_test:
        config = dataclasses.replace(config, limit=config.limit or 64, local_max_items=0)
    if not 0.0 <= config.max_failure_share <= 1.0:
        raise ValueError(f"max_failure_share must be in [0, 1], got {config.max_failure_share}")
    root = config.out or storage.default_root()
    config = dataclasses.replace(config, catalogue=config.catalogue or storage.join(root, *DEFAULT_CATALOGUE))
    model_uri = publish.resolve(config.model or model_artifact.models_root(root), manifest_name=CARD_FILE)
    card = model_artifact.read_card(model_uri)
    runs_uri = embeddings.model_runs_uri(root, card.model_id)
    run_id = publish.check_id(config.run_id) if config.run_id else publish.new_id("run")
    run_uri = publish.artifact_uri(runs_uri, run_id)
    done = _complete_run(runs_uri, run_id, run_uri)
    if done is not None:
        return dataclasses.replace(done, wall_time_s=time.perf_counter() - t0)

    listing = catalogue_items.list_items(config.catalogue, allowed_prefixes=config.allowed_image_prefixes,
                                         category_level=config.category_level, limit=config.limit)
    timings["list_s"] = time.perf_counter() - t0
    previous_run, plan, items, counts, early = _plan_run(config, runs_uri, card, listing, timings)
    latest_before = run_outcome.latest_run(runs_uri)  # for the error message: storage may be down by then
    try:
        filled = run_rows.fill_run(run_uri, plan=plan, items=items, model_uri=model_uri,
                                   card=card, config=config, early_errors=early, timings=timings)
    except Exception as exc:
        # Storage gone, a node lost past Ray's retries, a model that does not load: one sentence
        # a scheduler's alert can show, with the root cause, and the fact that nothing changed.
        raise EmbedFailedError(
            f"embedding run {run_id} failed and was NOT published (LATEST unchanged: "
            f"{latest_before or 'no earlier run'}): {run_outcome.root_cause(exc)}") from exc
    counts.update(failed=filled.failed, embedded=filled.embedded)
    _check_counts(filled, listing.total, config, run_id, run_uri)
    published = _write_manifest(run_uri, runs_uri, run_id, config, card, model_uri, root, counts, previous_run,
                                started_at, listing.roots)
    wall = time.perf_counter() - t0
    timings["wall_s"] = wall
    log.info("%s %s in %.1f s: %s", "published" if published else "wrote (LATEST unchanged)", run_uri, wall,
             ", ".join(f"{k} {counts[k]}" for k in COUNT_KEYS))
    return EmbedResult(run_id=run_id, run_uri=run_uri, model_id=card.model_id, counts=counts,
                       previous_run=previous_run, published=published, reused=False, wall_time_s=wall,
                       errors_uri=storage.join(run_uri, embeddings.ERRORS_DIR), timings=timings)


def _plan_run(config: EmbedConfig, runs_uri: str, card, listing, timings: dict):
    """What to carry over from the model's previous run and what to embed, with the counts and the
    rows already rejected: ``(previous run id, plan, items, counts, error tables)``."""
    import pyarrow as pa

    from artifacts import embeddings, image_bytes

    items = listing.items
    previous_run, previous, rejected = (None, None, None) if config.full else run_plan.previous_run(runs_uri, card)
    failed_early: list[dict] = []
    if previous is not None and items.column("content_sha256").null_count:
        # Without hashes in the catalogue, deciding what changed means reading every image once;
        # cheap next to decoding and inference (sha256 runs at ~1 GB/s).
        t = time.perf_counter()
        items, failed_early = image_bytes.fill_hashes(items, threads=config.io_threads)
        timings["hash_s"] = time.perf_counter() - t
    plan = run_plan.plan(items, previous, listed=listing.listed_ids)
    counts = _plan_counts(listing, plan, previous, rejected, failed_early)
    log.info("catalogue %s: %d items; model %s; previous run %s: %d unchanged (carried over), %d new, "
             "%d changed, %d retried, %d removed", config.catalogue, listing.total, card.model_id,
             previous_run or "none", counts["unchanged"], counts["new"], counts["changed"], counts["retried"],
             counts["removed"])
    early = [pa.Table.from_pylist(failed_early, schema=embeddings.ERRORS_SCHEMA)] if failed_early else []
    early += [listing.refused] if listing.refused.num_rows else []
    return previous_run, plan, items, counts, early


def _complete_run(runs_uri: str, run_id: str, run_uri: str) -> EmbedResult | None:
    """A run of this id that finished earlier, returned as is (publishing it if a crash stopped
    that); an unfinished one is removed, to be made again."""
    from artifacts import embeddings, storage

    if storage.exists(storage.join(run_uri, embeddings.MANIFEST)):
        manifest = embeddings.read_manifest(run_uri)
        published = run_outcome.publish_if_newer(runs_uri, run_id, manifest)
        log.info("run %s is already complete; returning it as is", run_uri)
        return EmbedResult(run_id=run_id, run_uri=run_uri, model_id=manifest.model_id, counts=manifest.counts,
                           previous_run=manifest.previous_run, published=published, reused=True, wall_time_s=0.0,
                           errors_uri=storage.join(run_uri, embeddings.ERRORS_DIR))
    if storage.exists(run_uri):
        log.warning("removing %s: an earlier attempt of run %s did not finish (no manifest)", run_uri, run_id)
        storage.delete_dir(run_uri)
    return None


def _plan_counts(listing, plan, previous, rejected, failed_early: list[dict]) -> dict:
    import pyarrow as pa

    not_carried = pa.concat_arrays([plan.todo.column("item_id").combine_chunks(),
                                    pa.array([f["item_id"] for f in failed_early], pa.string()),
                                    listing.refused.column("item_id").combine_chunks()])
    return {"total": listing.total,
            **run_plan.kinds(not_carried, None if previous is None else previous.item_ids, rejected),
            "unchanged": plan.carried, "removed": plan.removed}


def _check_counts(filled, total: int, config: EmbedConfig, run_id: str, run_uri: str) -> None:
    from artifacts import embeddings, storage

    if filled.carried + filled.embedded + filled.failed != total:
        raise RuntimeError(f"internal error: {filled.carried} rows carried + {filled.embedded} embedded + "
                           f"{filled.failed} failed != {total} items")
    if total and filled.failed / total > config.max_failure_share:
        reasons = run_outcome.top_reasons(embeddings.read_errors_dir(run_uri))
        raise EmbedFailedError(
            f"{filled.failed} of {total} items ({filled.failed / total:.1%}) could not be embedded, more than "
            f"max_failure_share={config.max_failure_share:.1%}; run {run_id} was NOT published "
            f"(LATEST unchanged). Most common reasons: {reasons}. All rejected items: "
            f"{storage.join(run_uri, embeddings.ERRORS_DIR)}")


def _write_manifest(run_uri, runs_uri, run_id, config, card, model_uri, root, counts, previous_run, started_at,
                    roots) -> bool:
    """The manifest, last of the run's files; then LATEST moves (when the run is newer)."""
    from artifacts import embeddings, storage
    from artifacts.configuration import to_dict

    manifest = embeddings.RunManifest(
        run_id=run_id, model_id=card.model_id, catalogue=config.catalogue,
        embedding_dim=int(card.embedding_dim), counts=counts, previous_run=previous_run, started_at=started_at,
        finished_at=run_outcome.now_iso(),
        # catalogue_roots, absolute: what build-index records for the item-image route.
        config={**to_dict(config), "model": model_uri, "out": root, "catalogue_roots": list(roots)})
    storage.write_text(storage.join(run_uri, embeddings.MANIFEST), manifest.to_json())
    return run_outcome.publish_if_newer(runs_uri, run_id, manifest)


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="vitrine embed", description=__doc__,
                                          formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--catalogue", help="catalogue URI: image folders, a directory with a manifest, or a manifest file")
    p.add_argument("--model", help="model directory or models/ directory with LATEST (default <storage>/models)")
    flags.add_storage(p)
    flags.refuse_renamed(p, "--out", "--storage", "the storage root that receives embeddings/")
    p.add_argument("--config", help="YAML file with EmbedConfig fields")
    p.add_argument("--run-id", help="run id (default: a new one); an existing complete run is returned as is")
    p.add_argument("--full", action="store_true", help="embed everything, ignoring the previous run")
    p.add_argument("--limit", type=int, help="only the first N catalogue items")
    p.add_argument("--smoke-test", action="store_true", help="64 items through the whole Ray Data path")
    p.add_argument("--category-level", type=int, choices=(1, 2),
                   help="image folders: 1 = <category>/<image> (default), 2 = <category>/<sub-category>/<image>")
    p.add_argument("--address", help="Ray cluster address (default: start a local Ray)")
    flags.add_overrides(p)
    flags.add_json(p)
    return p


def load_embed_config(path: str | None = None, overrides=(), **flags) -> EmbedConfig:
    from artifacts.configuration import load_config

    return load_config(EmbedConfig, yaml_path=path, overrides=overrides, values=flags)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    config = load_embed_config(args.config, args.overrides, catalogue=args.catalogue, model=args.model,
                               out=args.storage, run_id=args.run_id, full=args.full or None,
                               limit=args.limit, smoke_test=args.smoke_test or None, address=args.address,
                               category_level=args.category_level)
    try:
        result = run(config)
    except EmbedFailedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(dataclasses.asdict(result), indent=2))
    else:
        c = result.counts
        print(f"run {result.run_id} ({'already complete' if result.reused else f'{result.wall_time_s:.1f} s'}): "
              + ", ".join(f"{k} {c.get(k, 0)}" for k in COUNT_KEYS))
        print(f"embeddings: {result.run_uri}")
        if c.get("failed"):
            print(f"rejected items: {result.errors_uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
