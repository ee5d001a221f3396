"""Write a tuning-run report: Markdown summary, leaderboard CSV and PNG figures."""

from __future__ import annotations

import csv
import math
import pathlib

from .metrics import metrics_table_markdown

LEADERBOARD_COLUMNS = [
    "trial_id",
    "architecture",
    "optimizer",
    "learning_rate",
    "batch_size",
    "epochs_run",
    "val_accuracy",
    "val_loss",
    "test_accuracy",  # filled when the grid evaluates every trial; ranking stays by validation
    "train_seconds",
    "status",
]

_HEADERS = {
    "trial_id": "Trial",
    "architecture": "Architecture",
    "optimizer": "Optimizer",
    "learning_rate": "LR",
    "batch_size": "Batch",
    "epochs_run": "Epochs",
    "val_accuracy": "Val acc",
    "val_loss": "Val loss",
    "test_accuracy": "Test acc",
    "train_seconds": "Train s",
    "status": "Status",
}

_MISSING = "–"
_BEST_MARK = "★"


# ---------------------------------------------------------------- formatting


def _num(value) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else x


def format_duration(seconds: float) -> str:
    """Format seconds as e.g. ``"45 s"``, ``"12 min 34 s"`` or ``"1 h 02 min 03 s"``."""
    total = int(round(float(seconds)))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min {secs:02d} s"
    if minutes:
        return f"{minutes} min {secs} s"
    return f"{secs} s"


def format_lr(value) -> str:
    """Format a learning rate in compact scientific form: 1e-03, 2.5e-04."""
    x = _num(value)
    if x is None:
        return _MISSING if value is None else str(value)
    mantissa, exponent = f"{x:.2e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{exponent}"


def _fmt_cell(key: str, value) -> str:
    if value is None:
        return _MISSING
    x = _num(value)
    if key == "learning_rate":
        return format_lr(value)
    if x is not None and key in ("val_accuracy", "test_accuracy"):
        return f"{100.0 * x:.2f}%"
    if x is not None and key == "val_loss":
        return f"{x:.4f}"
    if x is not None and key in ("train_seconds", "batch_size", "epochs_run"):
        return str(int(round(x)))
    text = str(value).replace("|", "\\|").replace("\n", " ")
    return text if text else _MISSING


def _sort_rows(leaderboard: list[dict]) -> list[dict]:
    # Stable sort: trials without a val_accuracy keep their relative order at the end.
    def key(row):
        acc = _num(row.get("val_accuracy"))
        return (acc is None, -(acc or 0.0))

    return sorted(leaderboard, key=key)


def _resolve_best(rows: list[dict], best_trial_id: str | None) -> str | None:
    if best_trial_id is not None:
        return str(best_trial_id)
    # No explicit winner: fall back to the top-ranked trial, if it has a score.
    if rows and _num(rows[0].get("val_accuracy")) is not None:
        return str(rows[0].get("trial_id"))
    return None


def _trial_label(row: dict) -> str:
    return "/".join(
        [
            str(row.get("architecture") or "?"),
            str(row.get("optimizer") or "?"),
            format_lr(row.get("learning_rate")) if row.get("learning_rate") is not None else "?",
        ]
    )


# ---------------------------------------------------------------- files


def _write_csv(path: pathlib.Path, rows: list[dict]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=LEADERBOARD_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in LEADERBOARD_COLUMNS})


def _leaderboard_markdown(rows: list[dict], best_id: str | None) -> str:
    header = "| # | " + " | ".join(_HEADERS[k] for k in LEADERBOARD_COLUMNS) + " |"
    align = "|--:|" + "|".join(":--" if k in ("trial_id", "architecture", "optimizer", "status") else "--:"
                               for k in LEADERBOARD_COLUMNS) + "|"
    lines = [header, align]
    for rank, row in enumerate(rows, start=1):
        cells = [_fmt_cell(k, row.get(k)) for k in LEADERBOARD_COLUMNS]
        if best_id is not None and str(row.get("trial_id")) == best_id:
            cells[0] = f"{_BEST_MARK} **{cells[0]}**"
        lines.append(f"| {rank} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _best_trial_markdown(rows: list[dict], best_id: str | None, explicit: bool) -> str:
    if best_id is None:
        return "No best trial was selected."
    row = next((r for r in rows if str(r.get("trial_id")) == best_id), None)
    origin = "" if explicit else " (highest validation accuracy)"
    if row is None:
        return f"`{best_id}`{origin} — not in the leaderboard."
    parts = [
        f"architecture {_fmt_cell('architecture', row.get('architecture'))}",
        f"optimizer {_fmt_cell('optimizer', row.get('optimizer'))}",
        f"learning rate {_fmt_cell('learning_rate', row.get('learning_rate'))}",
        f"batch size {_fmt_cell('batch_size', row.get('batch_size'))}",
    ]
    result = (
        f"validation accuracy {_fmt_cell('val_accuracy', row.get('val_accuracy'))}, "
        f"validation loss {_fmt_cell('val_loss', row.get('val_loss'))} "
        f"after {_fmt_cell('epochs_run', row.get('epochs_run'))} epochs"
    )
    return f"`{best_id}`{origin}: " + ", ".join(parts) + f" — {result}."


def _curve_trials(rows: list[dict], histories: dict[str, list[dict]], top_k: int) -> list[str]:
    by_id = {str(r.get("trial_id")): r for r in rows}

    def score(tid: str):
        acc = _num(by_id.get(tid, {}).get("val_accuracy"))
        if acc is None:
            # Trials missing from the leaderboard are ranked by their best recorded epoch.
            vals = [_num(h.get("val_accuracy")) for h in histories[tid]]
            vals = [v for v in vals if v is not None]
            acc = max(vals) if vals else None
        return (acc is None, -(acc or 0.0))

    candidates = [str(t) for t, h in histories.items() if h]
    return sorted(candidates, key=score)[: max(int(top_k), 0)]


def _class_names(test_metrics: dict, size: int) -> list[str]:
    names = test_metrics.get("class_names")
    if not names:
        names = [r.get("class") for r in test_metrics.get("per_class", [])]
    if not names or len(names) != size:
        names = [str(i) for i in range(size)]
    return [str(n) for n in names]


# ---------------------------------------------------------------- entry point


def _figures(out: pathlib.Path, rows: list[dict], histories: dict, test_metrics: dict | None, top_k: int) -> list[str]:
    """Draw the figures the data allows into ``out``; the Markdown lines that link them."""
    from . import report_figures as figures  # imports this module: loaded once it is complete

    md: list[str] = []
    curve_ids = _curve_trials(rows, histories, top_k)
    if curve_ids:
        figures.plot_training_curves(out / "training_curves.png", curve_ids, rows, histories)
        md += ["### Training curves", "", "![training curves](training_curves.png)", ""]
    else:
        md += ["No training histories were recorded.", ""]
    grid = figures.optimizer_lr_grid(rows)
    if grid is not None:
        figures.plot_lr_heatmap(out / "optimizer_lr_heatmap.png", grid, "validation accuracy")
        md += ["### Optimizer × learning rate", "",
               "![optimizer × learning rate](optimizer_lr_heatmap.png)", "",
               "Validation accuracy of each optimizer and learning rate; where the grid varies more (architecture, "
               "batch size), a cell shows its best trial.", ""]
    if test_metrics and test_metrics.get("confusion_matrix"):
        cm = test_metrics["confusion_matrix"]
        figures.plot_confusion_matrix(out / "confusion_matrix.png", cm, _class_names(test_metrics, len(cm)))
        md += ["### Confusion matrix", "", "![confusion matrix](confusion_matrix.png)", ""]
    if test_metrics and test_metrics.get("per_class"):
        figures.plot_per_class(out / "per_class.png", test_metrics["per_class"])
        md += ["### Per-class scores", "", "![per-class scores](per_class.png)", ""]
    return md


def _summary(title: str, rows: list[dict], best_id: str | None, explicit_best: bool, test_metrics: dict | None,
             wall_time_s: float | None) -> list[str]:
    """The report's Markdown down to its figures: wall time, leaderboard, best trial, test metrics."""
    md = [f"# {title}", ""]
    if wall_time_s is not None:
        md += [f"Wall time: **{format_duration(wall_time_s)}**", ""]

    md += ["## Leaderboard", ""]
    if rows:
        md += [
            f"{len(rows)} trial{'s' if len(rows) != 1 else ''}, ranked by validation accuracy; {_BEST_MARK} marks the best trial. "
            "Also in [leaderboard.csv](leaderboard.csv).",
            "",
            _leaderboard_markdown(rows, best_id),
            "",
        ]
    else:
        md += ["No trials were recorded.", ""]

    md += ["## Best trial", "", _best_trial_markdown(rows, best_id, explicit_best), ""]

    md += ["## Test metrics", ""]
    if test_metrics:
        md += [metrics_table_markdown(test_metrics).rstrip("\n"), ""]
    else:
        md += ["No test-set evaluation was run.", ""]

    return md


def write_report(
    out_dir,
    *,
    title: str,
    leaderboard: list[dict],
    histories: dict[str, list[dict]],
    test_metrics: dict | None,
    best_trial_id: str | None,
    wall_time_s: float | None = None,
    notes_md: str = "",
    top_k_curves: int = 4,
    explanations=None,
) -> pathlib.Path:
    """Write report.md, leaderboard.csv and PNG figures into ``out_dir``; return report.md's path.

    Rows are ranked by ``val_accuracy`` (missing last). ``training_curves.png`` is
    only written when some history has epochs, ``optimizer_lr_heatmap.png`` only when
    the trials cross optimizer and learning rate, and the confusion-matrix and
    per-class figures only when ``test_metrics`` is given; the Markdown links
    exactly the images that were written. Without ``best_trial_id`` the top-ranked
    trial is marked as best.
    """
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = _sort_rows(list(leaderboard or []))
    histories = {str(k): list(v or []) for k, v in (histories or {}).items()}
    best_id = _resolve_best(rows, best_trial_id)

    _write_csv(out / "leaderboard.csv", rows)

    md = _summary(title, rows, best_id, best_trial_id is not None, test_metrics, wall_time_s)
    md += ["## Figures", ""] + _figures(out, rows, histories, test_metrics, top_k_curves)
    from .explain_report import write_panel  # the heatmap panel (an ExplanationPanel), when given

    md += write_panel(explanations, out)

    text = "\n".join(md)
    if notes_md:
        text += "\n" + notes_md
    path = out / "report.md"
    path.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
    return path
