"""A finished grid's trials (Ray Tune results) as a leaderboard: one row per trial, best
validation accuracy first, each trial's per-epoch history, the sum of the trials' run times, and
the best trial that left a checkpoint; plus the notes on timing the grid report opens with."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

_HISTORY_COLUMNS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "seconds")


@dataclass
class Trials:
    rows: list[dict]  # the leaderboard, best validation accuracy first
    histories: dict[str, list[dict]]  # trial id -> its epochs
    sum_trial_seconds: float
    best: object | None  # the ray.tune Result with the best validation accuracy and a checkpoint


def trial_id(result) -> str:
    return (result.metrics or {}).get("trial_id") or Path(result.path).name


def collect(results) -> Trials:
    """The leaderboard of a grid's ``results`` (a ``ray.tune.ResultGrid``)."""
    rows, histories, sum_trial = [], {}, 0.0
    best_result, best_acc = None, -1.0
    for result in results:
        spec = result.config["trial"]
        m = result.metrics or {}
        tid = trial_id(result)
        row = {"trial_id": tid, "architecture": spec["architecture"], "optimizer": spec["optimizer"],
               "learning_rate": spec["learning_rate"], "batch_size": spec["train"]["batch_size"],
               "epochs_run": m.get("epoch"), "val_accuracy": m.get("best_val_accuracy"),
               "val_loss": m.get("val_loss"), "train_seconds": m.get("time_total_s"),
               "status": "error" if result.error else ("early-stopped" if m.get("early_stopped") else "done")}
        if m.get("backbone_weights"):
            row["backbone_weights"] = m["backbone_weights"]
        rows.append(row)
        histories[tid] = _history(result)
        # Tune's time_total_s runs from the trial's start (data loading included) to its last report.
        sum_trial += float(m.get("time_total_s") or 0.0)
        if result.checkpoint is not None and (m.get("best_val_accuracy") or -1) > best_acc:
            best_result, best_acc = result, m["best_val_accuracy"]
    rows.sort(key=lambda r: -(r["val_accuracy"] if r["val_accuracy"] is not None else -1))
    return Trials(rows=rows, histories=histories, sum_trial_seconds=sum_trial, best=best_result)


def _history(result) -> list[dict]:
    df = result.metrics_dataframe
    if df is None or df.empty:
        return []
    cols = [c for c in _HISTORY_COLUMNS if c in df.columns]
    return [{k: (float(v) if k != "epoch" else int(v)) for k, v in row.items()} for row in df[cols].to_dict("records")]


def timing_notes(trials: Trials, wall: float, resumed: bool) -> str:
    """Markdown: the grid's wall time against the sum of its trials' times, and each trial's backbone weights."""
    sum_trial = trials.sum_trial_seconds
    notes = (f"Grid wall time {wall:.0f} s; sum of trial times {sum_trial:.0f} s; "
             f"ratio {wall / sum_trial:.2f}.\n" if sum_trial else "")
    if resumed:
        notes += "\nResumed run: the wall time covers this invocation only, trial times the whole run.\n"
    notes += "".join(f"\nBackbone weights of {r['architecture']}/{r['optimizer']}/{r['learning_rate']:g}: "
                     f"{r['backbone_weights']}\n" for r in trials.rows if r.get("backbone_weights"))
    return notes
