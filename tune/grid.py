"""The architecture × optimizer × learning-rate grid on Ray Tune, its evaluation, report and export.

A grid is data (YAML, see ``tune/grids/``). Each trial is the plain training function with its
own resources (CPUs, GPUs or a fraction of one), so the same grid spreads over a laptop's cores
or a cluster's GPU workers. Results live under ``<storage>/tune/<name>/<run_id>/``; an
interrupted grid resumes (``resume: true``) without redoing finished trials. The best trial is
evaluated on the test split, reported (``report/report.md`` with plots) and exported as a model
artifact under ``<storage>/models/``.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from artifacts import model_artifact, model_gate, publish, storage
from artifacts.configuration import load_config, to_dict
from artifacts.model_card import ModelCard

from .data_parallel import TRAIN_DIR, concurrent_trials, trial_resources
from .training import BEST, OPTIMIZERS, TrainConfig

log = logging.getLogger("vitrine.grid")

CURRENT = "CURRENT"  # the run a --resume continues
SUMMARY = "grid_summary.json"


@dataclass(frozen=True)
class ResourcesConfig:
    cpu: float = 1.0  # per worker
    gpu: float = 0.0  # per worker; fractions share a GPU between trials
    # > 1: the trial trains data-parallel on this many Ray Train workers (tune/data_parallel.py)
    workers: int = 1


@dataclass(frozen=True)
class GridConfig:
    name: str = "default"
    architectures: tuple[str, ...] = ("vitrine_cnn",)
    optimizers: tuple[str, ...] = ("adam",)
    learning_rates: tuple[float, ...] = (1e-3,)
    train: TrainConfig = field(default_factory=TrainConfig)
    # architecture -> TrainConfig overrides, e.g. {"thesis_cnn": {"epochs": 5}}
    per_architecture: dict = field(default_factory=dict)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    max_concurrent_trials: int = 0  # 0 = as many as the resources allow
    storage: str = ""  # default: $VITRINE_STORAGE or ./.vitrine
    data: str = ""  # Fashion-MNIST directory or s3:// prefix; default: $FASHION_MNIST_DIR
    address: str = ""  # Ray cluster address; "" = start a local Ray
    num_cpus: int = 0  # local Ray only; 0 = all
    resume: bool = False
    smoke_test: bool = False
    export: bool = True
    # Test accuracy of every trial's best checkpoint in the leaderboard (seconds per trial);
    # model selection still uses validation accuracy only.
    evaluate_all: bool = True
    # What the exported model must reach to become models/LATEST (artifacts/model_gate.py);
    # `--set gate.min_accuracy=0.9`, or a `gate:` mapping in the grid YAML.
    gate: model_gate.GateConfig = field(default_factory=model_gate.GateConfig)
    # Test tiles per level of the best trial's robustness report (tune/robustness.py); 0 = none.
    robustness_images: int = 100
    explanation_images: int = 6  # right and as many wrong test images with heatmaps in the report; 0 = none


@dataclass
class GridResult:
    run_id: str
    run_uri: str
    leaderboard: list[dict]
    best: dict | None
    test_metrics: dict | None
    model_uri: str | None
    report_uri: str | None
    wall_time_s: float
    sum_trial_seconds: float
    published: bool = False  # whether model_uri became models/LATEST (never for smoke runs)
    publish_reason: str = ""  # why it was or was not published (smoke run, the gate's verdict, a newer LATEST)


def smoke(config: GridConfig) -> GridConfig:
    """Two trials, one epoch each, a small per-class subset: proves the whole path quickly."""
    train = dataclasses.replace(config.train, epochs=1, max_per_class=40, early_stopping_patience=0)
    return dataclasses.replace(config, name=f"{config.name}-smoke", train=train, smoke_test=True,
                               robustness_images=min(config.robustness_images, 20),
                               per_architecture={k: {kk: vv for kk, vv in v.items() if kk not in ("epochs",)}
                                                 for k, v in config.per_architecture.items()})


def trial_specs(config: GridConfig) -> list[dict]:
    """The grid as a list of trials: ``{"architecture", "optimizer", "learning_rate", "train": {...}}``."""
    from .models import get_model_info

    for arch in config.architectures:
        get_model_info(arch)  # unknown names fail before anything starts
    for opt in config.optimizers:
        if opt not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {opt!r}; valid: {', '.join(OPTIMIZERS)}")
    base = to_dict(config.train)
    specs = []
    for arch, opt, lr in itertools.product(config.architectures, config.optimizers, config.learning_rates):
        train = {**base, **config.per_architecture.get(arch, {}), "architecture": arch, "optimizer": opt,
                 "learning_rate": float(lr)}
        specs.append({"architecture": arch, "optimizer": opt, "learning_rate": float(lr), "train": train})
    if config.smoke_test:
        specs = specs[:2]
    if not specs:
        raise ValueError("the grid is empty: give at least one architecture, optimizer and learning rate")
    return specs


def _photo_banks(config: GridConfig, specs: list[dict]) -> dict:
    """The photo banks the trials train with, by key: made once here, with Ray tasks over the
    cluster, and shipped to every trial through the object store, instead of once per trial."""
    from .data import photo_bank
    from .training import bank_spec, input_spec, photos_for, prepare_data

    banks: dict = {}
    for trial in specs:
        cfg = load_config(TrainConfig, values=trial["train"])
        if not cfg.augmentation.uses_photos:
            continue
        data, spec = prepare_data(cfg, config.data or None), input_spec(cfg)
        key = photo_bank.bank_key(data.train_x, spec, bank_spec(cfg))
        if key not in banks:
            banks[key] = photos_for(cfg, data, spec)
    return banks


def run_trial(params: dict, data_source: str = "", photo_banks: dict | None = None,
              resources: ResourcesConfig | None = None, train_storage: dict | None = None) -> None:
    """The Tune trainable: one training run reporting every epoch with its checkpoint, in this
    process or (``resources.workers`` > 1) on Ray Train workers, with ``train_storage`` as theirs."""
    from ray import tune as ray_tune

    from artifacts.logs import setup_logging

    from .models.transfer import backbone_weights
    from .training import prepare_data, train

    setup_logging()
    # Ray Train logs "Checkpoint successfully created" for every epoch's report; our own epoch
    # line (vitrine.train) says what happened.
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    t0 = time.time()
    cfg = load_config(TrainConfig, values=params["trial"]["train"])
    # Said where the backbone is built (this worker's files and environment), for the card and report.
    weights = backbone_weights(cfg.architecture, cfg.model_options)
    extra = {"backbone_weights": weights} if weights else {}
    resources = resources or ResourcesConfig()
    if resources.workers > 1:
        from .data_parallel import train_on_workers

        def forward(metrics: dict, checkpoint) -> None:
            ray_tune.report({**metrics, **extra}, checkpoint=checkpoint)

        return train_on_workers(params["trial"]["train"], workers=resources.workers, cpu=resources.cpu,
                                gpu=resources.gpu, data_source=data_source, photo_banks=photo_banks,
                                storage=train_storage or {}, report=forward)
    data = prepare_data(cfg, data_source or None)
    log.info("trial %s/%s/%g: %d training and %d validation images loaded in %.1f s", cfg.architecture,
             cfg.optimizer, cfg.learning_rate, len(data.train_y), len(data.val_y), time.time() - t0)
    with tempfile.TemporaryDirectory(prefix="vitrine-trial-") as work:
        checkpoint = ray_tune.get_checkpoint()
        if checkpoint is not None:
            checkpoint.to_directory(work)

        def report(metrics: dict, workdir: Path) -> None:
            ray_tune.report({**metrics, **extra}, checkpoint=ray_tune.Checkpoint.from_directory(str(workdir)))

        train(cfg, data, workdir=work, on_epoch=report, photo_banks=photo_banks)


def _ensure_ray(config: GridConfig) -> None:
    from artifacts.ray_session import ensure_ray

    ensure_ray(config.address, config.num_cpus)


def _storage_args(uri: str) -> dict:
    """How Tune takes a storage location: an absolute local path, or bucket/prefix + S3 filesystem."""
    if storage.is_remote(uri):
        return {"storage_path": uri.split("://", 1)[1], "storage_filesystem": storage.s3_filesystem()}
    return {"storage_path": storage.resolve(uri)[1]}


def run(config: GridConfig) -> GridResult:
    """Run (or resume) the grid; evaluate, report and export the best trial."""
    from ray import tune as ray_tune

    from . import leaderboard

    if config.smoke_test and not config.name.endswith("-smoke"):
        config = smoke(config)
    specs = trial_specs(config)
    root = config.storage or storage.default_root()
    kind_uri = storage.join(root, "tune", publish.check_id(config.name))
    run_id = _run_id(config, kind_uri)
    run_uri = storage.join(kind_uri, run_id)
    _ensure_ray(config)

    res = config.resources
    trainable = ray_tune.with_resources(
        ray_tune.with_parameters(run_trial, data_source=config.data, photo_banks=_photo_banks(config, specs),
                                 resources=res, train_storage=_storage_args(storage.join(run_uri, TRAIN_DIR))),
        trial_resources(res.workers, res.cpu, res.gpu))
    started = time.time()
    tuner, resumed = _tuner(config, specs, trainable, kind_uri, run_uri, run_id)
    results = tuner.fit()
    wall = time.time() - started

    trials = leaderboard.collect(results)
    tested = _add_test_accuracy(config, results, trials.rows) if config.evaluate_all else {}
    best = test_metrics = model_uri = panel = None
    published, publish_reason = False, ""
    notes = leaderboard.timing_notes(trials, wall, resumed)
    if trials.best is not None:
        best, test_metrics, model_uri, published, publish_reason, panel = _evaluate_and_export(
            config, trials.best, root, run_id, tested.get(leaderboard.trial_id(trials.best)))
    with tempfile.TemporaryDirectory(prefix="vitrine-report-") as tmp:
        from .report import write_report

        robust_md = _robustness_report(best, Path(tmp) / "robustness")
        write_report(Path(tmp), title=f"Grid {config.name} — run {run_id}", leaderboard=trials.rows,
                     histories=trials.histories, test_metrics=test_metrics,
                     best_trial_id=best["trial_id"] if best else None, wall_time_s=wall, explanations=panel,
                     notes_md=notes + (f"\nExported model: `{model_uri}`\n" if model_uri else "") + robust_md)
        report_uri = storage.join(run_uri, "report")
        storage.upload_dir(tmp, report_uri)
    result = GridResult(run_id=run_id, run_uri=run_uri, leaderboard=trials.rows, best=best,
                        test_metrics=test_metrics, model_uri=model_uri, report_uri=report_uri,
                        wall_time_s=wall, sum_trial_seconds=trials.sum_trial_seconds, published=published,
                        publish_reason=publish_reason)
    storage.write_text(storage.join(run_uri, SUMMARY), json.dumps(
        {**dataclasses.asdict(result), "resumed": resumed, "config": to_dict(config)}, indent=2, default=str))
    return result


def _run_id(config: GridConfig, kind_uri: str) -> str:
    """The run to continue (``resume``: the one ``CURRENT`` names) or a new run's id."""
    if not config.resume:
        return publish.new_id(config.name)
    pointer = storage.join(kind_uri, CURRENT)
    if not storage.exists(pointer):
        raise FileNotFoundError(f"nothing to resume: no run of grid {config.name!r} under {kind_uri}")
    return publish.check_id(storage.read_text(pointer).strip())


def _tuner(config: GridConfig, specs: list[dict], trainable, kind_uri: str, run_uri: str, run_id: str):
    """``(tuner, resumed)``: the run restored where Tune can restore it (``resume``), else a new one
    (recorded as ``CURRENT``)."""
    from ray import tune as ray_tune

    st = _storage_args(kind_uri)
    experiment_path = run_uri if storage.is_remote(run_uri) else storage.resolve(run_uri)[1]
    resumed = bool(config.resume and ray_tune.Tuner.can_restore(
        experiment_path, storage_filesystem=st.get("storage_filesystem")))
    if resumed:
        log.info("resuming grid %s from %s", config.name, run_uri)
        return ray_tune.Tuner.restore(experiment_path, trainable, resume_errored=True,
                                      storage_filesystem=st.get("storage_filesystem")), True
    storage.write_text(storage.join(kind_uri, CURRENT), run_id + "\n")
    log.info("grid %s: %d trials, run %s", config.name, len(specs), run_uri)
    return ray_tune.Tuner(
        trainable,
        param_space={"trial": ray_tune.grid_search(specs)},
        tune_config=ray_tune.TuneConfig(
            max_concurrent_trials=concurrent_trials(config.resources.workers, config.resources.cpu,
                                                    config.resources.gpu, config.max_concurrent_trials),
            trial_dirname_creator=lambda t: f"{t.config['trial']['architecture']}_{t.config['trial']['optimizer']}"
            f"_{t.config['trial']['learning_rate']:g}_{t.trial_id}"),
        run_config=ray_tune.RunConfig(
            # Silent: Tune's status tables every 30 s and a 60-row config table per trial drown the
            # progress lines the trials log themselves (vitrine.grid, vitrine.train: every epoch).
            name=run_id, verbose=0, **st,
            checkpoint_config=ray_tune.CheckpointConfig(num_to_keep=1),
            failure_config=ray_tune.FailureConfig(max_failures=1)),
    ), False


def _add_test_accuracy(config: GridConfig, results, leaderboard: list[dict]) -> dict[str, dict]:
    """Test metrics of every trial's best checkpoint, by trial id; accuracy goes into the rows."""
    import keras

    from artifacts import heads

    from .evaluation import evaluate
    from .training import prepare_data, preprocess_spec_for

    rows = {r["trial_id"]: r for r in leaderboard}
    tested: dict[str, dict] = {}
    splits: dict[tuple, object] = {}  # trials usually share one dataset: read it once
    for result in results:
        m = result.metrics or {}
        row = rows.get(m.get("trial_id") or Path(result.path).name)
        if row is None or result.checkpoint is None:
            continue
        train_cfg = load_config(TrainConfig, values=result.config["trial"]["train"])
        key = (train_cfg.dataset, train_cfg.category_level, train_cfg.seed, train_cfg.validation_fraction,
               train_cfg.max_per_class,
               tuple(train_cfg.model_options.get("input_shape") or ()), train_cfg.architecture
               if train_cfg.dataset == "image-folder" else "")
        if key not in splits:
            splits[key] = prepare_data(train_cfg, config.data or None)
        ds = splits[key]
        with result.checkpoint.as_directory() as ckpt:
            model = keras.models.load_model(Path(ckpt) / BEST, compile=False, custom_objects=heads.CUSTOM_OBJECTS)
        tested[row["trial_id"]] = evaluate(model, preprocess_spec_for(model), ds.test_x, ds.test_y, ds.class_names)
        row["test_accuracy"] = tested[row["trial_id"]]["accuracy"]
    return tested


def _evaluate_and_export(config: GridConfig, result, root: str, run_id: str,
                         test_metrics: dict | None = None) -> tuple[dict, dict, str | None, bool, str, object]:
    import keras

    from artifacts import heads

    from .evaluation import evaluate
    from .training import prepare_data, preprocess_spec_for

    spec_trial = result.config["trial"]
    m = result.metrics
    train_cfg = load_config(TrainConfig, values=spec_trial["train"])
    ds = prepare_data(train_cfg, config.data or None)  # same seed, same splits as the trial
    with result.checkpoint.as_directory() as ckpt:
        model = keras.models.load_model(Path(ckpt) / BEST, compile=False, custom_objects=heads.CUSTOM_OBJECTS)
    spec = preprocess_spec_for(model)
    if test_metrics is None:  # not already measured by evaluate_all
        test_metrics = evaluate(model, spec, ds.test_x, ds.test_y, ds.class_names)
    best = {"trial_id": m.get("trial_id"), "architecture": spec_trial["architecture"],
            "optimizer": spec_trial["optimizer"], "learning_rate": spec_trial["learning_rate"],
            "val_accuracy": m.get("best_val_accuracy"), "best_epoch": m.get("best_epoch"),
            "test_accuracy": test_metrics["accuracy"]}
    if config.robustness_images > 0 and train_cfg.dataset == "fashion-mnist":
        from .robustness import measure_model

        best["robustness"] = measure_model(model, spec, ds.test_x, ds.test_y, images=config.robustness_images,
                                           model_id=str(best["trial_id"]), architecture=best["architecture"])
    from .explain_report import explanation_panel

    panel = explanation_panel(model, spec, ds.test_x, ds.test_y, ds.class_names, per_row=config.explanation_images)
    log.info("best trial %s (%s/%s/%g): val %.4f, test %.4f", best["trial_id"], best["architecture"],
             best["optimizer"], best["learning_rate"], best["val_accuracy"], test_metrics["accuracy"])
    if not config.export:
        return best, test_metrics, None, False, "export: false", panel
    from .models import EMBEDDING_LAYER

    model_id = publish.new_id(spec_trial["architecture"].replace("_", "-"))
    emb = model.get_layer(EMBEDDING_LAYER)
    card = ModelCard(
        model_id=model_id, architecture=spec_trial["architecture"], class_names=list(ds.class_names),
        input_shape=list(spec.input_shape), preprocessing=spec.to_dict(), embedding_layer=EMBEDDING_LAYER,
        embedding_dim=int(emb.output.shape[-1]), params=int(model.count_params()),
        training_config={**spec_trial["train"], "grid": config.name, "run_id": run_id,
                         "best_epoch": m.get("best_epoch"), "objective": heads.objective(model),
                         **({"backbone_weights": m["backbone_weights"]} if m.get("backbone_weights") else {})},
        test_metrics=test_metrics,
        dataset={**ds.describe(), "seed": train_cfg.seed, "validation_fraction": train_cfg.validation_fraction},
        created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        framework={"keras": keras.__version__})
    models = model_artifact.models_root(root)
    uri = model_artifact.save(model, card, models, make_latest=False)
    if config.smoke_test:
        # A smoke run's model is a pipeline check on a few hundred images: it must never be served.
        published, reason = False, "not published: smoke-test run"
    else:
        published, reason = model_gate.publish_if_passing(models, model_id, config.gate)
    log.log(logging.INFO if published else logging.WARNING, "exported %s; %s", uri, reason)
    return best, test_metrics, uri, published, reason, panel


def _robustness_report(best: dict | None, out: Path) -> str:
    """The best trial's robustness files in the report and its Markdown section ("" if none)."""
    if not best or not best.get("robustness"):
        return ""
    from .robustness import markdown, write_report

    write_report(best["robustness"], out)
    return ("\n## Robustness of the best trial\n\n" + markdown(best["robustness"])
            + "\n![accuracy against perturbation strength](robustness/robustness.png)\n")


def load_grid_config(path: str | None, overrides=(), **flags) -> GridConfig:
    return load_config(GridConfig, yaml_path=path, overrides=overrides, values=flags)
