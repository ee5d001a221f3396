"""Filling an embedding run with rows: the previous run's unchanged rows carried over
(:func:`embedding.run_plan.carry`), then the new and changed items embedded by the path that fits
the increment (Ray Data, whose workers write their rows; the search service; or this process),
with progress in the log. Rows this process writes go through a
:class:`artifacts.embeddings.RunWriter`; rejected rows become the run's ``errors/``."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from . import ray_pipeline, run_plan
from .service_client import ServiceUnavailable, embed_via_service
from .stages import Embedder, decode_batch

log = logging.getLogger("vitrine.embed")


@dataclass
class Filled:
    carried: int  # rows carried over from the previous run
    embedded: int  # rows embedded by this run
    failed: int  # rejected rows: the workers' own errors/ files plus ``errors``
    errors: pa.Table  # the rejected rows this process wrote to errors/


def fill_run(run_uri: str, *, plan, items, model_uri: str, card, config, early_errors: list[pa.Table],
             timings: dict) -> Filled:
    """Carry, embed, write; the run's files are complete when this returns (its manifest is not).
    The plan's previous run (its keys: hundreds of MB at a million items) is let go once carried."""
    from artifacts import embeddings

    dim = int(card.embedding_dim)
    writer = embeddings.RunWriter(run_uri, dim, config.rows_per_file, prefix="part-d-")
    error_tables = list(early_errors)
    t = time.perf_counter()
    carried = run_plan.carry(plan.previous, plan, items, writer) if plan.carried else 0
    plan.previous = None
    timings["carry_s"] = time.perf_counter() - t
    t = time.perf_counter()
    embedded = failed = 0
    todo = plan.todo
    if todo.num_rows:
        timings["mode"], batches = embedding_path(todo, model_uri, card, config, run_uri)
        progress = Progress(todo.num_rows)
        reported: dict[str, set[str]] = {embeddings.DATA_DIR: set(), embeddings.ERRORS_DIR: set()}
        for batch in batches:
            if "error" in batch.column_names:  # rows embedded here or by the service: written here
                ok, bad = ray_pipeline.split_output(batch, dim)
                writer.write(ok)
                if bad.num_rows:
                    error_tables.append(bad)
                ok_rows, bad_rows = ok.num_rows, bad.num_rows  # counted with errors, below
            else:  # the pipeline's workers wrote their rows; these are their reports
                for key, directory in (("data_file", embeddings.DATA_DIR), ("errors_file", embeddings.ERRORS_DIR)):
                    reported[directory].update(n for n in batch.column(key).to_pylist() if n)
                ok_rows, bad_rows = (int(pc.sum(batch.column(c)).as_py() or 0) for c in ("rows", "failed"))
                failed += bad_rows  # rows of the workers' own errors/ files
            embedded += ok_rows
            progress.update(ok_rows, bad_rows)
        progress.done()
        if timings["mode"] == "ray-data":
            ray_pipeline.remove_unreported(run_uri, reported)
    timings["embed_s"] = time.perf_counter() - t
    writer.close()
    errors = pa.concat_tables(error_tables) if error_tables else embeddings.ERRORS_SCHEMA.empty_table()
    embeddings.write_part(run_uri, embeddings.ERRORS_DIR, "part-d-00000.parquet", errors)
    return Filled(carried=carried, embedded=embedded, failed=failed + errors.num_rows, errors=errors)


_LOCAL_EMBEDDER: dict[tuple[str, str], Embedder] = {}


def local_embedder(model_uri: str, model_id: str) -> Embedder:
    """One Embedder per process for the in-process path: a scheduler or a benchmark that runs
    several incremental jobs pays TensorFlow start-up and model loading once."""
    key = (model_uri, model_id)
    if key not in _LOCAL_EMBEDDER:
        _LOCAL_EMBEDDER.clear()
        _LOCAL_EMBEDDER[key] = Embedder(model_uri, threads=0)
    return _LOCAL_EMBEDDER[key]


def embedding_path(todo, model_uri: str, card, config, run_uri: str):
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
    return "in-process", embed_here(todo, model_uri, card, config)


def embed_here(todo, model_uri: str, card, config):
    embedder = local_embedder(model_uri, card.model_id)
    spec = card.preprocess_spec.to_dict()
    for start in range(0, todo.num_rows, config.batch_size):
        yield embedder(decode_batch(todo.slice(start, config.batch_size), spec=spec, io_threads=config.io_threads))


class Progress:
    """Items/s and failures, logged every ``every_s`` seconds and at the end."""

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
