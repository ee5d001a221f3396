"""Multiclass classification metrics computed from a confusion matrix (numpy only)."""

from __future__ import annotations

import numpy as np


def _as_labels(values, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        return arr.astype(np.int64)
    if arr.dtype.kind == "b" or arr.dtype.kind not in "iuf":
        raise ValueError(f"{name} must hold integer class indices, got dtype {arr.dtype}")
    if arr.dtype.kind == "f":
        # Labels that went through a float array (e.g. from a DataFrame) are fine if integral.
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError(f"{name} must hold integer class indices, got non-integral values")
    return arr.astype(np.int64)


def _validate(y_true, y_pred, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
        raise ValueError(f"num_classes must be an int, got {num_classes!r}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    t = _as_labels(y_true, "y_true")
    p = _as_labels(y_pred, "y_pred")
    if t.shape[0] != p.shape[0]:
        raise ValueError(f"y_true and y_pred differ in length: {t.shape[0]} != {p.shape[0]}")
    if t.shape[0] == 0:
        raise ValueError("y_true and y_pred are empty; need at least one sample")
    for name, arr in (("y_true", t), ("y_pred", p)):
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= num_classes:
            bad = lo if lo < 0 else hi
            raise ValueError(f"{name} contains label {bad} outside [0, {num_classes - 1}]")
    return t, p


def confusion_matrix(y_true, y_pred, num_classes) -> np.ndarray:
    """Return the int64 (C, C) confusion matrix; rows are true classes, columns predictions."""
    t, p = _validate(y_true, y_pred, num_classes)
    c = int(num_classes)
    counts = np.bincount(t * c + p, minlength=c * c)
    return counts.reshape(c, c).astype(np.int64)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    # Undefined ratios become 0.0, matching sklearn's zero_division=0.
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.zeros(np.broadcast(num, den).shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


def classification_metrics(y_true, y_pred, class_names: list[str]) -> dict:
    """Compute accuracy, macro/weighted scores, Cohen's kappa, informedness and per-class stats.

    Every class in ``class_names`` counts towards the macro averages, including
    classes absent from both arrays (their undefined ratios are 0.0). The result
    holds only plain Python types so it can go straight into ``json.dumps``.
    """
    names = [str(n) for n in class_names]
    if not names:
        raise ValueError("class_names must not be empty")
    cm = confusion_matrix(y_true, y_pred, len(names))
    n = int(cm.sum())

    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    fp = predicted - tp
    fn = support - tp
    tn = n - tp - fp - fn

    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, support)
    f1 = _safe_div(2 * tp, 2 * tp + fp + fn)
    specificity = _safe_div(tn, tn + fp)

    accuracy = float(tp.sum() / n)
    expected = float((support * predicted).sum() / (n * n))
    # expected == 1 only when every label and prediction is the same single class:
    # kappa is undefined there, so report 0.0 like the other zero divisions.
    kappa = (accuracy - expected) / (1.0 - expected) if expected < 1.0 else 0.0

    per_class = [
        {
            "class": names[i],
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "specificity": float(specificity[i]),
            "support": int(support[i]),
        }
        for i in range(len(names))
    ]
    return {
        "accuracy": accuracy,
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
        "macro_f1": float(f1.mean()),
        "weighted_f1": float((f1 * support).sum() / n),
        "cohen_kappa": float(kappa),
        "informedness": float((recall + specificity - 1.0).mean()),
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
        "num_samples": n,
        "class_names": names,
    }


def _pct(x) -> str:
    return f"{100.0 * float(x):.2f}%"


def _md_cell(text) -> str:
    # A literal pipe would split the cell in Markdown.
    return str(text).replace("|", "\\|")


def metrics_table_markdown(metrics: dict) -> str:
    """Render ``classification_metrics`` output as a Markdown per-class table plus a summary line."""
    lines = [
        "| Class | Precision | Recall | F1 | Support |",
        "|:--|--:|--:|--:|--:|",
    ]
    for row in metrics.get("per_class", []):
        lines.append(
            f"| {_md_cell(row['class'])} | {_pct(row['precision'])} | {_pct(row['recall'])} "
            f"| {_pct(row['f1'])} | {int(row['support'])} |"
        )
    total = metrics.get("num_samples", sum(int(r["support"]) for r in metrics.get("per_class", [])))
    lines.append(
        f"| **macro avg** | {_pct(metrics['macro_precision'])} | {_pct(metrics['macro_recall'])} "
        f"| {_pct(metrics['macro_f1'])} | {int(total)} |"
    )
    summary = (
        f"Accuracy: **{_pct(metrics['accuracy'])}** · "
        f"Cohen's kappa: **{float(metrics['cohen_kappa']):.4f}** · "
        f"Informedness: **{float(metrics['informedness']):.4f}**"
    )
    if "weighted_f1" in metrics:
        summary += f" · Weighted F1: {_pct(metrics['weighted_f1'])}"
    return "\n".join(lines) + "\n\n" + summary + "\n"
