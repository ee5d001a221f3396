"""The training loop of one Ray Train worker in a multi-worker (data-parallel) trial.

Every worker of a trial runs :func:`train_worker` under ``TensorflowTrainer``, which sets
``TF_CONFIG`` so that ``tf.distribute.MultiWorkerMirroredStrategy`` joins the workers. Keras 3's
``model.fit`` breaks under that strategy with two workers (``ValueError: Attempt to convert a
value (PerReplica...)``; ray#47464, keras#20585), so the epochs here are a short loop of our own
that calls Keras's own ``train_step`` and ``test_step`` inside ``strategy.run``: the same loss,
metrics, optimizer and learning-rate schedule as the one-worker trial (tune/training.py, whose
model builder, resume and per-epoch checkpoint code this reuses), with gradients all-reduced
across workers by the strategy.

Data: every worker reads the dataset, keeps its own equal share of the training split (so every
worker runs the same number of steps: a collective step with one worker missing would hang) and
batches it at ``batch_size / workers``; the global batch, steps per epoch and schedule match one
worker's. Every worker evaluates the whole validation split; the metrics' sums are all-reduced,
which leaves the means unchanged and identical on every worker, so the early-stopping decision
is the same everywhere. Every worker saves its models into a directory of its own (reading
synchronised variables is collective); worker 0 reports its directory as the checkpoint, the same
``best.keras`` / ``last.keras`` / ``state.json`` a one-worker trial keeps.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("vitrine.train")

# Keys of the train_loop_config a trial passes to every worker.
TRAIN, DATA, BANKS, RESUME = "train", "data", "photo_banks", "resume_from"


def shard(arrays: list, rank: int, workers: int) -> list:
    """Worker ``rank``'s share of row-aligned arrays (None passes through): every ``workers``-th
    row from ``rank``, the same number of rows on every worker (up to ``workers - 1`` rows of the
    split are left out, as with a sampler that drops the remainder)."""
    n = len(next(a for a in arrays if a is not None))
    per_worker = n // workers
    if per_worker == 0:
        raise ValueError(f"{n} training images cannot be shared among {workers} workers")
    return [None if a is None else a[rank:per_worker * workers:workers] for a in arrays]


def worker_batch_size(batch_size: int, workers: int) -> int:
    """Each worker's batch: the configured (global) batch split evenly."""
    if batch_size % workers:
        raise ValueError(f"train.batch_size={batch_size} is not a multiple of resources.workers={workers}")
    return batch_size // workers


def train_worker(loop_config: dict) -> None:
    """The ``train_loop_per_worker`` of a multi-worker trial (see the module docstring)."""
    import ray
    import ray.train
    import tensorflow as tf

    from artifacts.configuration import load_config
    from artifacts.logs import setup_logging

    from .training import TrainConfig, configure_threads, prepare_data

    setup_logging()
    # The trial logs one line per epoch (vitrine.train); Ray Train's per-report lines and
    # TensorFlow's collective set-up lines would repeat it per worker.
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    tf.get_logger().setLevel(logging.WARNING)
    started = time.time()
    cfg = load_config(TrainConfig, values=loop_config[TRAIN])
    context = ray.train.get_context()
    rank, workers = context.get_world_rank(), context.get_world_size()
    configure_threads(cfg.threads)  # before the strategy starts TensorFlow's runtime
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    data = prepare_data(cfg, loop_config[DATA] or None)
    banks = {key: ray.get(ref) for key, ref in (loop_config.get(BANKS) or {}).items()}
    with tempfile.TemporaryDirectory(prefix=f"vitrine-worker{rank}-") as work:
        # Ray Train's own latest checkpoint (a restarted run of the same name), else Tune's.
        checkpoint = ray.train.get_checkpoint() or loop_config.get(RESUME)
        if checkpoint is not None:
            checkpoint.to_directory(work)
        _run_epochs(cfg, data, strategy, Path(work), rank, workers, started, banks)


def _run_epochs(cfg, data, strategy, workdir: Path, rank: int, workers: int, started: float, banks: dict) -> None:
    import keras
    import ray.train

    from .training import epoch_tracker, model_and_state, preprocess_spec_for

    keras.utils.set_random_seed(cfg.seed)
    with strategy.scope():
        model, state = model_and_state(cfg, data, workdir, resume=True)
        spec = preprocess_spec_for(model)
        _build(model, data, spec)
    train_fn, test_fn = _step_functions(model, strategy)
    train_ds, val_ds = _datasets(cfg, data, spec, strategy, rank, workers, state["epoch"], banks)

    def report(metrics: dict, directory: Path) -> None:
        # Every worker reports (Ray Train waits for all); worker 0's directory is the checkpoint.
        checkpoint = ray.train.Checkpoint.from_directory(str(directory)) if rank == 0 else None
        ray.train.report({**metrics, "workers": workers}, checkpoint=checkpoint)

    if rank:  # the epoch line once per trial, from worker 0
        logging.getLogger("vitrine.train").setLevel(logging.WARNING)
    tracker = epoch_tracker(cfg, state, workdir, started, report)
    tracker.set_model(model)
    for epoch in range(state["epoch"], cfg.epochs):
        if 0 < cfg.early_stopping_patience <= state["wait"]:
            break
        tracker.on_epoch_begin(epoch)
        logs = {**_run(model, train_fn, train_ds), **{f"val_{k}": v for k, v in _run(model, test_fn, val_ds).items()}}
        tracker.on_epoch_end(epoch, logs)
        if model.stop_training:
            break


def _build(model, data, spec) -> None:
    """Create the optimizer's, the loss's and the metrics' variables now, under the strategy's
    scope, from one real batch: what ``fit`` does first (``Trainer._symbolic_build``, private), but
    without its cross-worker reduce of the whole input batch, where ``fit`` breaks."""
    from artifacts.preprocess import arrays_to_model_input

    x = arrays_to_model_input(data.train_x[:2], spec)
    model._symbolic_build(data_batch=(x, data.train_y[:2].astype(np.int32)))
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)


def _step_functions(model, strategy):
    """One training and one evaluation step over a distributed batch, each a ``tf.function``."""
    import tensorflow as tf

    @tf.function
    def train_fn(batch):
        strategy.run(model.train_step, args=(batch,))

    @tf.function
    def test_fn(batch):
        strategy.run(model.test_step, args=(batch,))

    return train_fn, test_fn


def _run(model, step_fn, dataset) -> dict:
    """One pass over ``dataset``; the metrics (all-reduced across workers when read)."""
    model.reset_metrics()
    for batch in dataset:
        step_fn(batch)
    return {k: float(v) for k, v in model.get_metrics_result().items()}


def _datasets(cfg, data, spec, strategy, rank: int, workers: int, epoch: int, banks: dict):
    """This worker's share of the training split and the whole validation split, as datasets
    the strategy hands out as they are (no automatic sharding)."""
    from .data.pipeline import make_dataset
    from .training import photos_for

    photos = photos_for(cfg, data, spec, banks)
    train_x, train_y, train_photos = shard([data.train_x, data.train_y, photos], rank, workers)
    batch = worker_batch_size(cfg.batch_size, workers)
    # Worker 0 shuffles and augments as a one-worker trial does; the others with seeds of their own.
    seed = cfg.seed + epoch + 7919 * rank

    def train_input(_context):
        return make_dataset(train_x, train_y, spec, batch_size=batch, shuffle=True, seed=seed,
                            augment=cfg.augmentation, photos=train_photos)

    def val_input(_context):
        return make_dataset(data.val_x, data.val_y, spec, batch_size=max(cfg.batch_size, 256))

    return (strategy.distribute_datasets_from_function(train_input),
            strategy.distribute_datasets_from_function(val_input))
