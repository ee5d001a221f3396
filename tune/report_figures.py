"""The grid report's figures (tune/report.py links them): training curves, the optimizer ×
learning-rate heatmap, the confusion matrix and per-class scores, on bare matplotlib Figures."""

from __future__ import annotations

import math
import pathlib

from .report import _MISSING, _num, _trial_label, format_lr



def new_figure(figsize):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    # A bare Figure (no pyplot) is never registered globally, so nothing leaks between reports.
    return Figure(figsize=figsize, dpi=110, layout="constrained")


def plot_training_curves(path: pathlib.Path, trial_ids, rows, histories) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    by_id = {str(r.get("trial_id")): r for r in rows}
    labels = [_trial_label(by_id.get(t, {"architecture": t})) for t in trial_ids]
    # Identical hyper-parameter labels would make the legend ambiguous.
    labels = [f"{lab} ({t})" if labels.count(lab) > 1 else lab for lab, t in zip(labels, trial_ids)]

    fig = new_figure((12, 5))
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


def plot_confusion_matrix(path: pathlib.Path, cm, class_names: list[str]) -> None:
    import numpy as np

    cm = np.asarray(cm, dtype=np.int64)
    row_sums = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, row_sums, out=np.zeros(cm.shape, dtype=float), where=row_sums != 0)
    n = cm.shape[0]
    side = max(5.0, 0.75 * n + 2.5)
    fig = new_figure((side + 1.2, side))
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


def plot_per_class(path: pathlib.Path, per_class: list[dict]) -> None:
    import numpy as np

    names = [str(r["class"]) for r in per_class]
    x = np.arange(len(names))
    width = 0.27
    fig = new_figure((max(7.0, 0.9 * len(names) + 2.5), 5))
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


def plot_lr_heatmap(path: pathlib.Path, grid, metric_label: str) -> None:
    import numpy as np

    optimizers, lrs, values, counts = grid
    fig = new_figure((max(5.0, 1.1 * len(lrs) + 2.5), max(3.0, 0.7 * len(optimizers) + 1.8)))
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
