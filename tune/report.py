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


# ---------------------------------------------------------------- figures


def _new_figure(figsize):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    # A bare Figure (no pyplot) is never registered globally, so nothing leaks between reports.
    return Figure(figsize=figsize, dpi=110, layout="constrained")


def _plot_training_curves(path: pathlib.Path, trial_ids, rows, histories) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    by_id = {str(r.get("trial_id")): r for r in rows}
    labels = [_trial_label(by_id.get(t, {"architecture": t})) for t in trial_ids]
    # Identical hyper-parameter labels would make the legend ambiguous.
    labels = [f"{lab} ({t})" if labels.count(lab) > 1 else lab for lab, t in zip(labels, trial_ids)]

    fig = _new_figure((12, 5))
    ax_loss, ax_acc = fig.subplots(1, 2)
    colours = [f"C{i % 10}" for i in range(len(trial_ids))]
    for tid, label, colour in zip(trial_ids, labels, colours):
        hist = histories[tid]
        epochs = [h.get("epoch", i + 1) for i, h in enumerate(hist)]
        for ax, metric in ((ax_loss, "loss"), (ax_acc, "accuracy")):
            for prefix, style in (("", "--"), ("val_", "-")):
                pts = [(e, _num(h.get(prefix + metric))) for e, h in zip(epochs, hist)]
                pts = [(e, v) for e, v in pts if v is not None]
                if not pts:
                    continue
                xs, ys = zip(*pts)
                # Markers keep single-epoch trials visible; hollow ones tell train from val there.
                face = "white" if prefix == "" else colour
                ax.plot(xs, ys, linestyle=style, marker="o", markersize=3.5, color=colour,
                        markerfacecolor=face, linewidth=1.6)
    for ax, name in ((ax_loss, "Loss"), (ax_acc, "Accuracy")):
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.set_ylabel(name.lower())
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        lo, hi = ax.get_xlim()
        if hi - lo < 2:
            # A one-epoch range would otherwise get fractional epoch ticks.
            mid = (lo + hi) / 2
            ax.set_xlim(mid - 1, mid + 1)
    handles = [Line2D([], [], color=c, linewidth=2) for c in colours]
    handles += [
        Line2D([], [], color="0.3", linestyle="--", marker="o", markerfacecolor="white", markersize=3.5),
        Line2D([], [], color="0.3", linestyle="-", marker="o", markersize=3.5),
    ]
    fig.legend(
        handles,
        labels + ["train", "validation"],
        loc="outside lower center",
        ncol=min(len(handles), 4),
        fontsize=9,
        frameon=False,
    )
    fig.suptitle(f"Training curves (top {len(trial_ids)} by validation accuracy)")
    fig.savefig(path)


def _plot_confusion_matrix(path: pathlib.Path, cm, class_names: list[str]) -> None:
    import numpy as np

    cm = np.asarray(cm, dtype=np.int64)
    row_sums = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, row_sums, out=np.zeros(cm.shape, dtype=float), where=row_sums != 0)
    n = cm.shape[0]
    side = max(5.0, 0.75 * n + 2.5)
    fig = _new_figure((side + 1.2, side))
    ax = fig.subplots()
    image = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, shrink=0.8, label="fraction of true class")
    fontsize = 9 if n <= 12 else 7
    for i in range(n):
        for j in range(n):
            # White text on dark cells, black on light ones.
            colour = "white" if norm[i, j] > 0.55 else "black"
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color=colour, fontsize=fontsize)
    ax.set_xticks(range(n), labels=class_names, rotation=40, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(n), labels=class_names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title("Test confusion matrix (colour: row-normalised, text: counts)")
    fig.savefig(path)


def _plot_per_class(path: pathlib.Path, per_class: list[dict]) -> None:
    import numpy as np

    names = [str(r["class"]) for r in per_class]
    x = np.arange(len(names))
    width = 0.27
    fig = _new_figure((max(7.0, 0.9 * len(names) + 2.5), 5))
    ax = fig.subplots()
    for offset, key, label in ((-width, "precision", "precision"), (0.0, "recall", "recall"), (width, "f1", "F1")):
        ax.bar(x + offset, [float(r[key]) for r in per_class], width, label=label)
    ax.set_xticks(x, labels=names, rotation=40, ha="right", rotation_mode="anchor")
    ax.set_ylim(0.0, 1.0)
    ax.set_ylabel("score")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.set_title("Per-class test precision / recall / F1")
    # Outside the axes so the legend never hides a bar near 1.0.
    fig.legend(loc="outside upper right", ncol=3, frameon=False)
    fig.savefig(path)


def optimizer_lr_grid(rows: list[dict], metric: str = "val_accuracy"):
    """The optimizer × learning-rate table of a grid, or None unless its trials cross both (some
    optimizer ran at two learning rates and some learning rate with two optimizers: a grid that
    pairs each optimizer with its own rate has nothing to compare in a table).

    Returns ``(optimizers, learning_rates, values, counts)``: ``values[i, j]`` is the best
    ``metric`` of the trials with optimizer ``i`` and learning rate ``j`` (over whatever else
    the grid varies; NaN where none has a score), ``counts[i, j]`` how many trials that is.
    """
    import numpy as np

    cells: dict[tuple[str, float], list[float]] = {}
    for r in rows:
        lr = _num(r.get("learning_rate"))
        if r.get("optimizer") in (None, "") or lr is None:
            continue
        cells.setdefault((str(r["optimizer"]), lr), []).append(_num(r.get(metric)))
    optimizers = sorted({o for o, _ in cells})
    lrs = sorted({lr for _, lr in cells})
    crossed = (max(sum(o == x for x, _ in cells) for o in optimizers) >= 2 if optimizers else False) and \
        (max(sum(lr == y for _, y in cells) for lr in lrs) >= 2 if lrs else False)
    if not crossed:
        return None
    values = np.full((len(optimizers), len(lrs)), np.nan)
    counts = np.zeros(values.shape, np.int64)
    for (o, lr), scores in cells.items():
        i, j = optimizers.index(o), lrs.index(lr)
        counts[i, j] = len(scores)
        scored = [v for v in scores if v is not None]
        if scored:
            values[i, j] = max(scored)
    return optimizers, lrs, values, counts


def _plot_lr_heatmap(path: pathlib.Path, grid, metric_label: str) -> None:
    import numpy as np

    optimizers, lrs, values, counts = grid
    fig = _new_figure((max(5.0, 1.1 * len(lrs) + 2.5), max(3.0, 0.7 * len(optimizers) + 1.8)))
    ax = fig.subplots()
    finite = values[np.isfinite(values)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=lo, vmax=hi if hi > lo else lo + 1e-9,
                      aspect="auto")
    fig.colorbar(image, ax=ax, shrink=0.85, label=metric_label)
    several = (counts > 1).any()
    for i in range(len(optimizers)):
        for j in range(len(lrs)):
            v = values[i, j]
            text = _MISSING if math.isnan(v) else f"{100.0 * v:.2f}%"
            if several and counts[i, j]:
                text += f"\n(best of {counts[i, j]})"
            # Dark text on the bright end of viridis, white elsewhere.
            light = math.isnan(v) or hi > lo and (v - lo) / (hi - lo) > 0.6  # an empty cell is white
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color="black" if light else "white")
    ax.set_xticks(range(len(lrs)), labels=[format_lr(lr) for lr in lrs])
    ax.set_yticks(range(len(optimizers)), labels=optimizers)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("optimizer")
    ax.set_title(f"{metric_label.capitalize()} by optimizer × learning rate"
                 + ("\n(best trial per cell)" if several else ""), fontsize=10)
    fig.savefig(path)


def _class_names(test_metrics: dict, size: int) -> list[str]:
    names = test_metrics.get("class_names")
    if not names:
        names = [r.get("class") for r in test_metrics.get("per_class", [])]
    if not names or len(names) != size:
        names = [str(i) for i in range(size)]
    return [str(n) for n in names]


# ---------------------------------------------------------------- entry point


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

    md += ["## Best trial", "", _best_trial_markdown(rows, best_id, best_trial_id is not None), ""]

    md += ["## Test metrics", ""]
    if test_metrics:
        md += [metrics_table_markdown(test_metrics).rstrip("\n"), ""]
    else:
        md += ["No test-set evaluation was run.", ""]

    md += ["## Figures", ""]
    curve_ids = _curve_trials(rows, histories, top_k_curves)
    if curve_ids:
        _plot_training_curves(out / "training_curves.png", curve_ids, rows, histories)
        md += ["### Training curves", "", "![training curves](training_curves.png)", ""]
    else:
        md += ["No training histories were recorded.", ""]
    grid = optimizer_lr_grid(rows)
    if grid is not None:
        _plot_lr_heatmap(out / "optimizer_lr_heatmap.png", grid, "validation accuracy")
        md += ["### Optimizer × learning rate", "",
               "![optimizer × learning rate](optimizer_lr_heatmap.png)", "",
               "Validation accuracy of each optimizer and learning rate; where the grid varies more (architecture, "
               "batch size), a cell shows its best trial.", ""]
    if test_metrics and test_metrics.get("confusion_matrix"):
        cm = test_metrics["confusion_matrix"]
        _plot_confusion_matrix(out / "confusion_matrix.png", cm, _class_names(test_metrics, len(cm)))
        md += ["### Confusion matrix", "", "![confusion matrix](confusion_matrix.png)", ""]
    if test_metrics and test_metrics.get("per_class"):
        _plot_per_class(out / "per_class.png", test_metrics["per_class"])
        md += ["### Per-class scores", "", "![per-class scores](per_class.png)", ""]
    from .explain_report import write_panel  # the heatmap panel (an ExplanationPanel), when given

    md += write_panel(explanations, out)

    text = "\n".join(md)
    if notes_md:
        text += "\n" + notes_md
    path = out / "report.md"
    path.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
    return path
