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
from jobs import flags

from embedding import ray_pipeline, run_plan
from embedding.service_client import ServiceUnavailable, embed_via_service
from embedding.stages import Embedder, decode_batch

log = logging.getLogger("vitrine.embed")

DEFAULT_CATALOGUE = ("catalogues", "fashion-mnist-train")  # under the storage root
COUNT_KEYS = ("total", "new", "changed", "unchanged", "retried", "removed", "failed", "embedded")
_ITEM_COLUMNS = ("item_id", "image_uri", "category", "sub_category", "content_sha256")
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


_LOCAL_EMBEDDER: dict[tuple[str, str], Embedder] = {}


def _local_embedder(model_uri: str, model_id: str) -> Embedder:
    """One Embedder per process for the in-process path: a scheduler or a benchmark that runs
    several incremental jobs pays TensorFlow start-up and model loading once."""
    key = (model_uri, model_id)
    if key not in _LOCAL_EMBEDDER:
        _LOCAL_EMBEDDER.clear()
        _LOCAL_EMBEDDER[key] = Embedder(model_uri, threads=0)
    return _LOCAL_EMBEDDER[key]


# ---------------------------------------------------------------------------------------------
# The job


def run(config: EmbedConfig) -> EmbedResult:
    """Embed ``config.catalogue`` with ``config.model``; returns counts and where the run lives.

    Raises :class:`EmbedFailedError` (and publishes nothing) when more than
    ``max_failure_share`` of the catalogue's items could not be embedded.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    from artifacts import (catalogue, catalogue_listing, embeddings, image_bytes, image_roots, model_artifact, publish,
                           storage)
    from artifacts.configuration import to_dict
    from artifacts.model_card import CARD_FILE

    t0 = time.perf_counter()
    timings: dict = {}
    started_at = _now_iso()
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
    errors_uri = storage.join(run_uri, embeddings.ERRORS_DIR)

    if storage.exists(storage.join(run_uri, embeddings.MANIFEST)):
        manifest = embeddings.read_manifest(run_uri)
        published = _publish_if_newer(runs_uri, run_id, manifest)
        log.info("run %s is already complete; returning it as is", run_uri)
        return EmbedResult(run_id=run_id, run_uri=run_uri, model_id=manifest.model_id, counts=manifest.counts,
                           previous_run=manifest.previous_run, published=published, reused=True,
                           wall_time_s=time.perf_counter() - t0, errors_uri=errors_uri)
    if storage.exists(run_uri):
        log.warning("removing %s: an earlier attempt of run %s did not finish (no manifest)", run_uri, run_id)
        storage.delete_dir(run_uri)

    listed = catalogue_listing.list_catalogue(config.catalogue, allowed_prefixes=config.allowed_image_prefixes,
                                              keep_refused=True, category_level=config.category_level)
    if catalogue.SUB_CATEGORY not in listed.column_names:
        listed = listed.append_column(catalogue.SUB_CATEGORY, pa.nulls(listed.num_rows, pa.string()))
    elif not pa.types.is_string(listed.schema.field(catalogue.SUB_CATEGORY).type):
        listed = listed.set_column(listed.schema.get_field_index(catalogue.SUB_CATEGORY), catalogue.SUB_CATEGORY,
                                   listed.column(catalogue.SUB_CATEGORY).cast(pa.string()))
    listed = listed.select([*_ITEM_COLUMNS, catalogue.REFUSED])
    if config.limit > 0:
        listed = listed.slice(0, config.limit)
    total = listed.num_rows
    items, refused = _split_refused(listed)
    roots = image_roots.catalogue_roots(config.catalogue, config.allowed_image_prefixes)
    if refused.num_rows:
        log.warning("catalogue %s: %d item(s) name images outside the catalogue roots %s; not reading them "
                    "(errors/ has each reason)", config.catalogue, refused.num_rows, list(roots))
    timings["list_s"] = time.perf_counter() - t0

    previous_run, previous, rejected = (None, None, None) if config.full else _previous_run(runs_uri, card)
    failed_early: list[dict] = []
    if previous is not None and items.column("content_sha256").null_count:
        # Without hashes in the catalogue, deciding what changed means reading every image once;
        # cheap next to decoding and inference (sha256 runs at ~1 GB/s).
        t = time.perf_counter()
        items, failed_early = image_bytes.fill_hashes(items, threads=config.io_threads)
        timings["hash_s"] = time.perf_counter() - t
    dim = int(card.embedding_dim)
    plan = run_plan.plan(items, previous, listed=listed.column("item_id").combine_chunks())
    not_carried = pa.concat_arrays([plan.todo.column("item_id").combine_chunks(),
                                    pa.array([f["item_id"] for f in failed_early], pa.string()),
                                    refused.column("item_id").combine_chunks()])
    counts = {"total": total, **run_plan.kinds(not_carried, None if previous is None else previous.item_ids,
                                               rejected),
              "unchanged": plan.carried, "removed": plan.removed}
    del not_carried
    log.info("catalogue %s: %d items; model %s; previous run %s: %d unchanged (carried over), %d new, "
             "%d changed, %d retried, %d removed", config.catalogue, total, card.model_id, previous_run or "none",
             counts["unchanged"], counts["new"], counts["changed"], counts["retried"], counts["removed"])

    writer = embeddings.RunWriter(run_uri, dim, config.rows_per_file, prefix="part-d-")
    error_tables = [pa.Table.from_pylist(failed_early, schema=embeddings.ERRORS_SCHEMA)] if failed_early else []
    if refused.num_rows:
        error_tables.append(refused)
    todo = plan.todo
    latest_before = _latest_run(runs_uri)  # for the error message: storage may be down by then
    embedded = failed = 0
    try:
        t = time.perf_counter()
        carried = run_plan.carry(previous, plan, items, writer) if plan.carried else 0
        previous = None  # its keys, from here on not needed
        timings["carry_s"] = time.perf_counter() - t
        t = time.perf_counter()
        if todo.num_rows:
            timings["mode"], batches = _embedding_path(todo, model_uri, card, config, run_uri)
            progress = _Progress(todo.num_rows)
            reported: dict[str, set[str]] = {embeddings.DATA_DIR: set(), embeddings.ERRORS_DIR: set()}
            for batch in batches:
                if "error" in batch.column_names:  # rows embedded here or by the service: written here
                    ok, bad = ray_pipeline.split_output(batch, dim)
                    writer.write(ok)
                    if bad.num_rows:
                        error_tables.append(bad)
                    ok_rows, bad_rows = ok.num_rows, bad.num_rows  # counted with errors, below
                    embedded += ok_rows
                else:  # the pipeline's workers wrote their rows; these are their reports
                    for key, directory in (("data_file", embeddings.DATA_DIR), ("errors_file", embeddings.ERRORS_DIR)):
                        reported[directory].update(n for n in batch.column(key).to_pylist() if n)
                    ok_rows, bad_rows = (int(pc.sum(batch.column(c)).as_py() or 0) for c in ("rows", "failed"))
                    embedded += ok_rows
                    failed += bad_rows  # rows of the workers' own errors/ files
                progress.update(ok_rows, bad_rows)
            progress.done()
            if timings["mode"] == "ray-data":
                ray_pipeline.remove_unreported(run_uri, reported)
        timings["embed_s"] = time.perf_counter() - t
        writer.close()
        errors = pa.concat_tables(error_tables) if error_tables else embeddings.ERRORS_SCHEMA.empty_table()
        embeddings.write_part(run_uri, embeddings.ERRORS_DIR, "part-d-00000.parquet", errors)
    except Exception as exc:
        # Storage gone, a node lost past Ray's retries, a model that does not load: one sentence
        # a scheduler's alert can show, with the root cause, and the fact that nothing changed.
        raise EmbedFailedError(
            f"embedding run {run_id} failed and was NOT published (LATEST unchanged: "
            f"{latest_before or 'no earlier run'}): {_root_cause(exc)}") from exc
    counts["failed"] = failed + errors.num_rows
    counts["embedded"] = embedded
    if carried + embedded + counts["failed"] != total:
        raise RuntimeError(f"internal error: {carried} rows carried + {embedded} embedded + {counts['failed']} "
                           f"failed != {total} items")

    if total and counts["failed"] / total > config.max_failure_share:
        reasons = _top_reasons(embeddings.read_errors_dir(run_uri))
        raise EmbedFailedError(
            f"{counts['failed']} of {total} items ({counts['failed'] / total:.1%}) could not be embedded, more than "
            f"max_failure_share={config.max_failure_share:.1%}; run {run_id} was NOT published "
            f"(LATEST unchanged). Most common reasons: {reasons}. All rejected items: {errors_uri}")

    manifest = embeddings.RunManifest(
        run_id=run_id, model_id=card.model_id, catalogue=config.catalogue, embedding_dim=dim, counts=counts,
        previous_run=previous_run, started_at=started_at, finished_at=_now_iso(),
        # catalogue_roots, absolute: what build-index records for the item-image route.
        config={**to_dict(config), "model": model_uri, "out": root, "catalogue_roots": list(roots)})
    storage.write_text(storage.join(run_uri, embeddings.MANIFEST), manifest.to_json())
    published = _publish_if_newer(runs_uri, run_id, manifest)
    wall = time.perf_counter() - t0
    timings["wall_s"] = wall
    log.info("%s %s in %.1f s: %s", "published" if published else "wrote (LATEST unchanged)", run_uri, wall,
             ", ".join(f"{k} {counts[k]}" for k in COUNT_KEYS))
    return EmbedResult(run_id=run_id, run_uri=run_uri, model_id=card.model_id, counts=counts,
                       previous_run=previous_run, published=published, reused=False, wall_time_s=wall,
                       errors_uri=errors_uri, timings=timings)


def _split_refused(listed):
    """``(items to consider, refused rows in the errors schema)`` of a listing with reasons."""
    import pyarrow.compute as pc

    from artifacts.catalogue import REFUSED
    from artifacts.embeddings import ERRORS_SCHEMA

    bad = pc.is_valid(listed.column(REFUSED))
    refused = listed.filter(bad).select(["item_id", "image_uri", REFUSED])
    return (listed.filter(pc.invert(bad)).select(list(_ITEM_COLUMNS)),
            refused.rename_columns(ERRORS_SCHEMA.names).cast(ERRORS_SCHEMA))


def _previous_run(runs_uri: str, card):
    """(run_id, its ids/URIs/hashes table, rejected item ids) of the model's LATEST run, or
    (None, None, None) when there is none."""
    from artifacts import embeddings, publish

    try:
        run_id = publish.latest_id(runs_uri)
    except publish.NotPublishedError:
        return None, None, None
    uri = publish.artifact_uri(runs_uri, run_id)
    manifest = embeddings.read_manifest(uri)
    if manifest.model_id != card.model_id or manifest.embedding_dim != card.embedding_dim:
        log.warning("LATEST run %s was made by %s (dim %d), not %s (dim %d): embedding everything",
                    run_id, manifest.model_id, manifest.embedding_dim, card.model_id, card.embedding_dim)
        return None, None, None
    rejected = embeddings.read_errors(uri).column("item_id").combine_chunks()
    return run_id, run_plan.previous_keys(uri), rejected


def _embedding_path(todo, model_uri: str, card, config: EmbedConfig, run_uri: str):
    """(mode, iterable of tables) for the items to embed: a small increment through the service
    when it serves this model, else here (embedder output rows, which this process writes);
    anything larger with Ray Data, whose workers write the rows (their reports)."""
    if todo.num_rows > config.local_max_items:
        return "ray-data", ray_pipeline.embed_with_ray_data(todo, model_uri, card, config, run_uri)
    if config.service_url:
        try:
            return "service", embed_via_service(todo, card, url=config.service_url, batch_size=config.batch_size,
                                                io_threads=config.io_threads, timeout_s=config.service_timeout_s)
        except ServiceUnavailable as exc:
            log.warning("not embedding through the service at %s: %s; embedding here instead", config.service_url, exc)
    return "in-process", _embed_here(todo, model_uri, card, config)


def _embed_here(todo, model_uri: str, card, config: EmbedConfig):
    embedder = _local_embedder(model_uri, card.model_id)
    spec = card.preprocess_spec.to_dict()
    for start in range(0, todo.num_rows, config.batch_size):
        yield embedder(decode_batch(todo.slice(start, config.batch_size), spec=spec, io_threads=config.io_threads))


def _latest_run(runs_uri: str) -> str | None:
    from artifacts import publish

    try:
        return publish.latest_id(runs_uri)
    except Exception:  # storage may be the very thing that is down
        return None


def _root_cause(exc: BaseException) -> str:
    """The innermost ``SomeError: message`` line: Ray wraps a worker's error in tracebacks."""
    import re

    chain, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        chain.append(exc)
        exc = exc.__cause__ or getattr(exc, "cause", None)
    pattern = re.compile(r"^\s*(?:[\w.]+\.)?(\w*(?:Error|Exception)): (\S.*)$")
    for e in reversed(chain):
        found = [m for m in map(pattern.match, str(e).splitlines()) if m]
        if found:
            return f"{found[-1].group(1)}: {found[-1].group(2)}"[:500]
    return f"{type(chain[-1]).__name__}: {str(chain[-1]).strip()[:400]}"


class _Progress:
    def __init__(self, total: int, every_s: float = 5.0):
        self.total, self.every_s = total, every_s
        self.ok = self.bad = 0
        self.t0 = self.last = time.perf_counter()

    def update(self, ok: int, bad: int) -> None:
        self.ok += ok
        self.bad += bad
        now = time.perf_counter()
        if now - self.last >= self.every_s:
            self.last = now
            done = self.ok + self.bad
            log.info("embedded %d/%d (%d failed), %.0f items/s", done, self.total, self.bad,
                     done / max(now - self.t0, 1e-9))

    def done(self) -> None:
        dt = time.perf_counter() - self.t0
        log.info("embedded %d/%d (%d failed) in %.1f s, %.0f items/s", self.ok + self.bad, self.total, self.bad,
                 dt, (self.ok + self.bad) / max(dt, 1e-9))


def _top_reasons(errors, k: int = 3) -> str:
    from collections import Counter

    reasons = Counter(r.split(":", 1)[0] for r in errors.column("reason").to_pylist())
    return "; ".join(f"{r} ({n})" for r, n in reasons.most_common(k)) or "none"


def _publish_if_newer(runs_uri: str, run_id: str, manifest) -> bool:
    """Move LATEST to a complete run unless it covers part of the catalogue only (``--limit``,
    smoke) or is older than the run LATEST names; a re-run finishes a publication a crash
    interrupted. Runs are ordered by when they started (the catalogue snapshot they embed)."""
    import calendar

    from artifacts import embeddings, publish

    limit = int((manifest.config or {}).get("limit") or 0)
    if limit > 0 or (manifest.config or {}).get("smoke_test"):
        log.info("not publishing %s: a partial run (limit %d%s) never moves LATEST", run_id, limit,
                 ", smoke test" if (manifest.config or {}).get("smoke_test") else "")
        return False
    started = None  # manifests without started_at: publish falls back to the id's time or the file's
    if manifest.started_at:
        head, _, frac = manifest.started_at.rstrip("Z").partition(".")
        started = calendar.timegm(time.strptime(head, "%Y-%m-%dT%H:%M:%S")) + float(f"0.{frac or 0}")
    try:
        publish.publish(runs_uri, run_id, manifest_name=embeddings.MANIFEST, created_at=started)
    except publish.StaleArtifactError as exc:
        log.warning("%s", exc)
        return False
    return True


def _now_iso() -> str:
    # Milliseconds: _publish_if_newer orders runs by started_at.
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"


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
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
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
