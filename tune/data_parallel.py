"""Multi-worker trials: a Tune trial whose ``resources.workers`` > 1 trains on Ray Train.

The trial (tune/grid.py ``run_trial``) stays the Tune trainable and reserves nothing itself; it
starts a ``TensorflowTrainer`` with ``workers`` Ray Train workers of ``cpu`` CPUs and ``gpu`` GPUs
each (one placement group, on any nodes), which run tune/worker_loop.py under
``MultiWorkerMirroredStrategy``, and turns every epoch that Ray Train records into the trial's
own Tune report with its checkpoint (Train V2 refuses ``Tuner(trainer)``, and its own
``TuneReportCallback`` hands Tune the checkpoint only as a path). Tune therefore sees the same
metrics and checkpoint directory (``best.keras``, ``last.keras``, ``state.json``) as from a
one-worker trial, and the grid evaluates, reports and exports it the same way.

Ray Train writes its run under the grid run's storage (``train/<trial id>``; several nodes need
it shared, as Tune's does). A resumed trial finds it there under the same name, or is given
Tune's last checkpoint.
"""

from __future__ import annotations

import logging
import queue as queue_lib
import threading
from typing import Callable

from .worker_loop import BANKS, DATA, RESUME, TRAIN, train_worker

log = logging.getLogger("vitrine.grid")

TRAIN_DIR = "train"  # under the grid run's storage: Ray Train's runs, one per multi-worker trial


# What a multi-worker trial's own process reserves: no CPU (its workers reserve theirs, all at
# once, when it starts them; a CPU held here could leave a 2-CPU cluster one short for two
# workers), and Tune refuses an empty reservation, so some of Ray's logical memory.
DRIVER_MEMORY = 256 * 1024 ** 2


def trial_resources(workers: int, cpu: float, gpu: float) -> dict:
    """What Tune reserves for a trial: its CPUs/GPU when it trains in its own process; only
    ``DRIVER_MEMORY`` when Ray Train workers train it."""
    return {"cpu": cpu, "gpu": gpu} if workers <= 1 else {"cpu": 0, "memory": DRIVER_MEMORY}


def concurrent_trials(workers: int, cpu: float, gpu: float, requested: int) -> int | None:
    """Tune's ``max_concurrent_trials``: as requested, else (multi-worker trials, whose workers Tune
    does not see) as many trials as the cluster holds all the workers of; None = no limit."""
    if requested or workers <= 1:
        return requested or None
    import ray

    total = ray.cluster_resources()
    fits = [int(total.get("CPU", 0) // (workers * cpu))] if cpu > 0 else []
    fits += [int(total.get("GPU", 0) // (workers * gpu))] if gpu > 0 else []
    return max(1, min(fits)) if fits else None


def train_on_workers(train_values: dict, *, workers: int, cpu: float, gpu: float, data_source: str,
                     photo_banks: dict | None, storage: dict, report: Callable[[dict, object], None]) -> None:
    """Train one trial's model on ``workers`` Ray Train workers; ``report(metrics, checkpoint)``
    (a ``ray.tune.Checkpoint``) runs in the trial for every epoch, as the workers finish it.
    ``storage``: ``storage_path`` (and ``storage_filesystem``) of Ray Train's run."""
    import ray
    from ray import tune as ray_tune
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.tensorflow import TensorflowTrainer
    from ray.util.queue import Queue

    epochs = Queue(actor_options={"num_cpus": 0})
    trainer = TensorflowTrainer(
        train_worker,
        train_loop_config={TRAIN: train_values, DATA: data_source, RESUME: ray_tune.get_checkpoint(),
                           # Put once: every worker reads the same objects instead of a copy each.
                           BANKS: {key: ray.put(bank) for key, bank in (photo_banks or {}).items()}},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpu > 0,
                                     resources_per_worker={"CPU": cpu, **({"GPU": gpu} if gpu > 0 else {})}),
        run_config=RunConfig(name=ray_tune.get_context().get_trial_id(), callbacks=[_forward_epochs(epochs)],
                             checkpoint_config=CheckpointConfig(num_to_keep=1),
                             failure_config=FailureConfig(max_failures=0),  # Tune's retry resumes it
                             **storage))
    outcome: dict = {}
    runner = threading.Thread(target=_fit, args=(trainer, outcome), name="vitrine-ray-train", daemon=True)
    runner.start()
    # Tune's report must run in the trial's own thread: the trainer runs beside it.
    while runner.is_alive() or not epochs.empty():
        try:
            metrics, checkpoint = epochs.get(timeout=1.0)
        except queue_lib.Empty:
            continue
        report(metrics, checkpoint and ray_tune.Checkpoint(path=checkpoint.path, filesystem=checkpoint.filesystem))
    runner.join()
    epochs.shutdown()
    if "error" in outcome:
        raise outcome["error"]


def _fit(trainer, outcome: dict) -> None:
    try:
        outcome["result"] = trainer.fit()
    except BaseException as error:  # raised again in the trial's thread
        outcome["error"] = error


def _forward_epochs(epochs):
    """The Ray Train callback that forwards every epoch to ``epochs`` (a queue actor); made here
    so that importing this module does not import Ray Train."""
    from ray.train import UserCallback

    class ForwardEpochs(UserCallback):
        """Runs in Ray Train's controller: hands every report (worker 0's metrics and checkpoint)
        to the trial through a queue actor."""

        def __init__(self, epochs):
            self.epochs = epochs

        def after_report(self, run_context, metrics, checkpoint):
            self.epochs.put((metrics[0], checkpoint))

    return ForwardEpochs(epochs)
