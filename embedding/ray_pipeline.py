"""The embedding job's Ray Data pipeline: catalogue rows → decode tasks → model actors → part
files written by workers.

The last stage writes each bundle of embedded rows as one Parquet file of the run's ``data/``
(and its rejected rows as one of ``errors/``) and returns a single small row: the file names and
the counts. The job's driver therefore sees only those rows, never an embedding, and its memory
does not grow with the catalogue; on a cluster the vectors go from the actors' nodes straight to
object storage.

A task Ray retried after it wrote its file leaves a file that no returned row names;
:func:`remove_unreported` deletes those before the run's manifest is written, so a run holds each
item once. ``artifacts.embeddings`` owns the file format; this module only decides who writes.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import uuid

import pyarrow as pa
import pyarrow.compute as pc

from .stages import Embedder, decode_batch

log = logging.getLogger("vitrine.embed")

WORKER_PREFIX = "part-w-"  # files written by the pipeline's workers; the driver's have other names
REPORT_SCHEMA = pa.schema([("data_file", pa.string()), ("rows", pa.int64()),
                           ("errors_file", pa.string()), ("failed", pa.int64())])


def split_output(batch, dim: int):
    """An embedder output batch → (rows in the embeddings schema, rows for the errors table)."""
    from artifacts.embeddings import ERRORS_SCHEMA, embeddings_schema

    schema = embeddings_schema(dim)
    ok_mask = pc.is_null(batch.column("error"))
    ok = batch.filter(ok_mask).select(schema.names).cast(schema)
    bad = batch.filter(pc.invert(ok_mask)).select(["item_id", "image_uri", "error"])
    return ok, bad.rename_columns(ERRORS_SCHEMA.names).cast(ERRORS_SCHEMA)


def write_block(batch, *, run_uri: str, dim: int):
    """Ray Data stage: write one bundle of embedder output rows as part files of the run; return
    one report row (file names relative to ``data/`` and ``errors/``, row counts)."""
    from artifacts import embeddings

    ok, bad = split_output(batch, dim)
    name = f"{WORKER_PREFIX}{uuid.uuid4().hex}.parquet"
    data_file = errors_file = None
    if ok.num_rows:
        embeddings.write_part(run_uri, embeddings.DATA_DIR, name, ok)
        data_file = name
    if bad.num_rows:
        embeddings.write_part(run_uri, embeddings.ERRORS_DIR, name, bad)
        errors_file = name
    return pa.Table.from_pylist([{"data_file": data_file, "rows": ok.num_rows, "errors_file": errors_file,
                                  "failed": bad.num_rows}], schema=REPORT_SCHEMA)


def remove_unreported(run_uri: str, reported: dict[str, set[str]]) -> int:
    """Delete workers' part files that no report names (left by a retried task); returns how many."""
    from artifacts import embeddings, storage

    removed = 0
    for directory in (embeddings.DATA_DIR, embeddings.ERRORS_DIR):
        for name in embeddings.part_files(run_uri, directory):
            if name.startswith(WORKER_PREFIX) and name not in reported.get(directory, set()):
                storage.delete_file(storage.join(run_uri, directory, name))
                removed += 1
    if removed:
        log.warning("removed %d part file(s) of retried tasks from %s", removed, run_uri)
    return removed


def embed_with_ray_data(todo, model_uri: str, card, config, run_uri: str):
    """Embed ``todo`` (catalogue rows) with Ray Data, the workers writing the run's part files;
    yields the report rows (``REPORT_SCHEMA`` tables) as blocks finish. ``config`` is the job's
    ``EmbedConfig``."""
    import ray

    from artifacts import storage

    _ensure_ray(config)
    # The job logs its own progress (embedding/run_rows.Progress: done, failed, items/s every 5 s);
    # Ray Data's progress bars, log lines per operator every few seconds without a terminal, drown it.
    ray.data.DataContext.get_current().enable_progress_bars = False
    remote_args = {}
    uses_s3 = (storage.is_remote(model_uri) or storage.is_remote(run_uri)
               or pc.any(pc.match_substring_regex(todo.column("image_uri"), "^(?i)s3a?://")).as_py())
    env = storage.worker_env()
    if uses_s3 and env and config.forward_storage_env:
        # Workers get the environment Ray started with, not this process's current one.
        remote_args["runtime_env"] = {"env_vars": env}
    config = _fit_to_cluster(config)
    bs = config.batch_size
    pool = ray.data.ActorPoolStrategy(min_size=max(1, config.min_actors),
                                      max_size=max(1, config.min_actors, config.max_actors))
    ds = ray.data.from_arrow([todo.slice(i, bs) for i in range(0, todo.num_rows, bs)])
    ds = ds.map_batches(decode_batch,
                        fn_kwargs={"spec": card.preprocess_spec.to_dict(), "io_threads": config.io_threads},
                        batch_size=bs, batch_format="pyarrow", zero_copy_batch=True,
                        num_cpus=config.decode_cpus, **remote_args)
    ds = ds.map_batches(Embedder, fn_constructor_kwargs={"model_uri": model_uri,
                                                         "threads": max(1, math.ceil(config.cpus_per_actor))},
                        batch_size=bs, batch_format="pyarrow", zero_copy_batch=True,
                        compute=pool,
                        num_cpus=config.cpus_per_actor, num_gpus=config.gpus_per_actor or None, **remote_args)
    # Writing is Parquet encoding of uncompressed vectors (milliseconds a file) and I/O: no CPU of
    # its own is reserved for it, so it never waits behind actors that hold every CPU.
    ds = ds.map_batches(write_block, fn_kwargs={"run_uri": run_uri, "dim": int(card.embedding_dim)},
                        batch_size=max(bs, config.rows_per_worker_file), batch_format="pyarrow",
                        zero_copy_batch=True, num_cpus=0, **remote_args)
    yield from ds.iter_batches(batch_size=None, batch_format="pyarrow")


def _fit_to_cluster(config):
    """``config`` with an actor that fits this machine's local Ray, and warnings where the
    cluster must grow before the job can run."""
    import ray

    cpus = ray.cluster_resources().get("CPU", 0)
    biggest = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")), default=0)
    fused = config.decode_cpus == config.cpus_per_actor and not config.gpus_per_actor
    decode_share = 0.0 if fused else config.decode_cpus
    if not config.address and not os.environ.get("RAY_ADDRESS") and config.cpus_per_actor + decode_share > biggest:
        # The local Ray this process runs cannot grow: fit one actor and one decode task to it
        # (a 1-CPU machine gets a 0.5-CPU actor) rather than wait for CPUs that never come.
        fitted = max(0.25, biggest - decode_share)
        log.info("this machine's Ray has %g CPUs: one actor of %g CPUs instead of cpus_per_actor=%g",
                 biggest, fitted, config.cpus_per_actor)
        config = dataclasses.replace(config, cpus_per_actor=fitted, decode_cpus=fitted if fused else config.decode_cpus)
        fused = config.decode_cpus == config.cpus_per_actor and not config.gpus_per_actor
    if config.cpus_per_actor > biggest:
        log.warning("no node has cpus_per_actor=%g CPUs (the biggest has %g): the job waits until the cluster "
                    "adds a bigger node; lower cpus_per_actor to run now", config.cpus_per_actor, biggest)
    if not fused and config.min_actors * config.cpus_per_actor + config.decode_cpus > cpus:
        # Unless the cluster grows, the actors hold every CPU and no decode task can run.
        log.warning("min_actors=%d x cpus_per_actor=%g leaves no CPU for decode tasks (decode_cpus=%g) on a "
                    "cluster with %g CPUs now: the job waits until the cluster scales up", config.min_actors,
                    config.cpus_per_actor, config.decode_cpus, cpus)
    return config


def _ensure_ray(config) -> None:
    from artifacts.ray_session import ensure_ray

    ensure_ray(config.address, config.num_cpus)
