"""One training function, used standalone and as a Ray Tune trial.

``train(config, data, workdir=...)`` builds a model from the registry, trains it with the
configured optimizer, learning rate and schedule, stops early on validation loss, and keeps in
``workdir`` the best model by validation accuracy (``best.keras``), the latest model with its
optimizer state (``last.keras``) and the run's state (``state.json``). That directory is also
the Tune checkpoint, so a trial killed mid-way resumes from its last finished epoch.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from artifacts.preprocess import PreprocessSpec, arrays_to_model_input

from .data import photo_bank
from .data.splits import Splits, load_splits
from .data.augment import AugmentConfig

log = logging.getLogger("vitrine.train")

OPTIMIZERS = ("adam", "rmsprop", "sgd", "adadelta")
BEST, LAST, STATE = "best.keras", "last.keras", "state.json"


@dataclass(frozen=True)
class TrainConfig:
    architecture: str = "vitrine_cnn"
    model_options: dict = field(default_factory=dict)
    dataset: str = "fashion-mnist"  # or image-folder (then --data is <root>/<category>/<image>)
    category_level: int = 1  # image-folder: 2 reads <root>/<category>/<sub-category>/<image>, label = category
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    momentum: float = 0.9  # SGD only
    batch_size: int = 128
    epochs: int = 15
    lr_schedule: str = "cosine"  # cosine | constant
    early_stopping_patience: int = 4  # epochs without a lower validation loss; 0 = off
    validation_fraction: float = 0.1
    max_per_class: int = 0  # > 0: a small per-class subset (smoke tests)
    augmentation: AugmentConfig = field(default_factory=AugmentConfig)
    seed: int = 0
    threads: int = 0  # TensorFlow threads; 0 = the CPUs Ray gave this trial, else all


@dataclass
class TrainOutcome:
    history: list[dict]
    best_epoch: int
    best_val_accuracy: float
    epochs_run: int
    seconds: float
    best_model_path: Path
    params: int


def configure_threads(threads: int) -> int:
    """Limit TensorFlow to ``threads`` CPU threads (Ray's CPU allocation is not enough: TF
    ignores it), so parallel trials do not fight over cores. Returns the number used."""
    if threads <= 0:
        threads = _assigned_cpus() or os.cpu_count() or 1
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        log.warning("TensorFlow already initialised; could not limit it to %d threads", threads)
    return threads


def _assigned_cpus() -> int:
    try:
        import ray

        if ray.is_initialized():
            cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 0)
            return max(1, int(round(cpus))) if cpus else 0
    except Exception:  # outside a Ray worker
        pass
    return 0


def input_spec(config: TrainConfig) -> PreprocessSpec:
    """The preprocessing a trial's model will declare, known before the model is built."""
    from .models import get_model_info

    shape = config.model_options.get("input_shape") or get_model_info(config.architecture).input_shape
    return PreprocessSpec.for_input_shape(shape, canonical=True)


def prepare_data(config: TrainConfig, source: str | None = None) -> Splits:
    """The configured dataset's train / validation / test splits (seeded, stratified)."""
    return load_splits(config.dataset, source, spec=input_spec(config), seed=config.seed,
                       validation_fraction=config.validation_fraction, max_per_class=config.max_per_class,
                       category_level=config.category_level)


def bank_spec(config: TrainConfig) -> photo_bank.BankSpec:
    a = config.augmentation
    return photo_bank.BankSpec(variants=a.photo_variants, min_size=a.photo_min_size, max_size=a.photo_max_size,
                               seed=config.seed)


def photos_for(config: TrainConfig, data: Splits, spec: PreprocessSpec,
               banks: dict[str, np.ndarray] | None = None) -> np.ndarray | None:
    """The photo bank a trial trains with (None when its augmentation uses no photos): one the
    grid driver made and shipped (``banks``, by key), else the local cache, else rendered now."""
    if not config.augmentation.uses_photos:
        return None
    bank = bank_spec(config)
    given = (banks or {}).get(photo_bank.bank_key(data.train_x, spec, bank))
    return given if given is not None else photo_bank.load_or_build(data.train_x, spec, bank)


def make_optimizer(name: str, learning_rate, momentum: float = 0.9):
    import keras

    if name == "adam":
        return keras.optimizers.Adam(learning_rate)
    if name == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate)
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=momentum, nesterov=True)
    if name == "adadelta":
        return keras.optimizers.Adadelta(learning_rate)
    raise ValueError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")


def preprocess_spec_for(model) -> PreprocessSpec:
    """The spec a model trained by this code declares: the canonical input (background from the
    border, crop, pad, stretch; artifacts/preprocess.py), recorded in its card. Models exported
    before it keep theirs: their cards lack the canonical fields, which default to off."""
    return PreprocessSpec.for_input_shape(model.input_shape[1:], canonical=True)


def predict_proba(model, images: np.ndarray, spec: PreprocessSpec, batch_size: int = 512) -> np.ndarray:
    """Class probabilities for uint8 pixels, in bounded-memory chunks."""
    out = []
    for start in range(0, len(images), 4096):
        x = arrays_to_model_input(images[start:start + 4096], spec)
        out.append(model.predict(x, batch_size=batch_size, verbose=0))
    return np.concatenate(out) if out else np.zeros((0, model.output_shape[-1]), np.float32)


def _read_state(workdir: Path) -> dict | None:
    path = workdir / STATE
    return json.loads(path.read_text()) if path.exists() else None


def train(config: TrainConfig, data: Splits, *, workdir: str | Path,
          on_epoch: Callable[[dict, Path], None] | None = None, resume: bool = True,
          spec: PreprocessSpec | None = None, photo_banks: dict[str, np.ndarray] | None = None) -> TrainOutcome:
    """Train one model; see the module docstring. ``on_epoch(metrics, workdir)`` runs after each
    epoch, once ``workdir`` holds that epoch's checkpoint files. ``spec`` overrides the input
    pipeline (default :func:`preprocess_spec_for`; benchmarks/preprocess_ablation.py trains an
    old-pipeline model with ``PreprocessSpec()``). ``photo_banks``: see :func:`photos_for`."""
    import keras

    from .data.pipeline import make_dataset

    started = time.time()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    configure_threads(config.threads)
    keras.utils.set_random_seed(config.seed)

    model, state = model_and_state(config, data, workdir, resume)
    spec = spec or preprocess_spec_for(model)
    train_ds = make_dataset(data.train_x, data.train_y, spec, batch_size=config.batch_size, shuffle=True,
                            seed=config.seed + state["epoch"], augment=config.augmentation,
                            photos=photos_for(config, data, spec, photo_banks))
    val_ds = make_dataset(data.val_x, data.val_y, spec, batch_size=max(config.batch_size, 256))

    remaining_patience_ok = not (0 < config.early_stopping_patience <= state["wait"])
    if state["epoch"] < config.epochs and remaining_patience_ok:
        model.fit(train_ds, validation_data=val_ds, epochs=config.epochs, initial_epoch=state["epoch"],
                  callbacks=[epoch_tracker(config, state, workdir, started, on_epoch)], verbose=0,
                  shuffle=False)  # the dataset shuffles itself
    return TrainOutcome(history=state["history"], best_epoch=state["best_epoch"],
                        best_val_accuracy=state["best_val_accuracy"], epochs_run=state["epoch"],
                        seconds=time.time() - started, best_model_path=workdir / BEST,
                        params=int(model.count_params()))


def model_and_state(config: TrainConfig, data: Splits, workdir: Path, resume: bool):
    """``(model, training state)``: the last checkpoint in ``workdir`` and its state when resuming,
    else a new compiled model and a fresh state."""
    import keras

    from artifacts import heads

    from .models import build_model

    state = _read_state(workdir) if resume else None
    if state and (workdir / LAST).exists():
        model = keras.models.load_model(workdir / LAST, custom_objects=heads.CUSTOM_OBJECTS)
        log.info("resuming %s from epoch %d", config.architecture, state["epoch"])
        return model, state
    state = {"epoch": 0, "history": [], "best_val_accuracy": -1.0, "best_epoch": 0,
             "best_val_loss": float("inf"), "wait": 0}
    model = build_model(config.architecture, num_classes=len(data.class_names), **config.model_options)
    steps = max(1, int(np.ceil(len(data.train_y) / config.batch_size))) * config.epochs
    if config.lr_schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(config.learning_rate, decay_steps=steps, alpha=0.01)
    elif config.lr_schedule == "constant":
        lr = config.learning_rate
    else:
        raise ValueError(f"unknown lr_schedule {config.lr_schedule!r}; valid: cosine, constant")
    model.compile(optimizer=make_optimizer(config.optimizer, lr, config.momentum),
                  loss=heads.loss_for(model), metrics=["accuracy"])
    return model, state


def epoch_tracker(config: TrainConfig, state: dict, workdir: Path, started: float,
                   on_epoch: Callable[[dict, Path], None] | None):
    """The Keras callback that, after each epoch, updates ``state``, saves the best and last
    models and the state to ``workdir``, reports to ``on_epoch`` and stops early on patience."""
    import keras

    class Tracker(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.time()

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            row = {"epoch": epoch + 1, "seconds": round(time.time() - self.t0, 3),
                   **{k: float(logs[k]) for k in ("loss", "accuracy", "val_loss", "val_accuracy") if k in logs}}
            state["history"].append(row)
            state["epoch"] = epoch + 1
            if row["val_accuracy"] > state["best_val_accuracy"]:
                state["best_val_accuracy"], state["best_epoch"] = row["val_accuracy"], epoch + 1
                self.model.save(workdir / BEST)
            if row["val_loss"] < state["best_val_loss"]:
                state["best_val_loss"], state["wait"] = row["val_loss"], 0
            else:
                state["wait"] += 1
            stop = 0 < config.early_stopping_patience <= state["wait"]
            self.model.save(workdir / LAST)
            (workdir / STATE).write_text(json.dumps(state))
            log.info("%s %s lr=%g epoch %d/%d: loss %.4f acc %.4f val_loss %.4f val_acc %.4f (%.1fs)",
                     config.architecture, config.optimizer, config.learning_rate, epoch + 1, config.epochs,
                     row.get("loss", 0), row.get("accuracy", 0), row["val_loss"], row["val_accuracy"], row["seconds"])
            if on_epoch is not None:
                on_epoch({**row, "best_val_accuracy": state["best_val_accuracy"], "best_epoch": state["best_epoch"],
                          "trial_seconds": round(time.time() - started, 3), "early_stopped": stop}, workdir)
            if stop:
                log.info("early stop: validation loss has not improved for %d epochs", state["wait"])
                self.model.stop_training = True

    return Tracker()
