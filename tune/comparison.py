"""Finished grid runs set against the published claims: every trial with its test accuracy next
to the number the paper behind its architecture reports, a verdict per claim, and the optimizer ×
learning-rate heatmaps, as ``vitrine compare`` writes them. Every number comes from the runs'
``grid_summary.json`` files and the claims file (``grids/claims/published.yaml``); none is typed here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from artifacts import publish, storage
from artifacts.configuration import ConfigError

from .grid import CURRENT, SUMMARY
from .report import _MISSING, format_duration, format_lr

CLAIMS_FILE = Path(__file__).resolve().parent / "grids" / "claims" / "published.yaml"


@dataclass(frozen=True)
class Claim:
    id: str
    source: str  # the paper
    model: str  # the paper's model, as it names it
    accuracy: float  # its published test accuracy, a fraction
    architectures: tuple[str, ...] = ()  # the models here that rebuild it; () = the paper gives none
    note: str = ""


def load_claims(uri: str | Path | None = None) -> list[Claim]:
    """The claims of ``uri`` (default: the shipped ``grids/claims/published.yaml``)."""
    import yaml

    uri = str(uri or CLAIMS_FILE)
    data = yaml.safe_load(storage.read_text(uri)) or {}
    claims, seen = [], set()
    for i, entry in enumerate(data.get("claims") or []):
        try:
            claim = Claim(**{**entry, "architectures": tuple(entry.get("architectures") or ()),
                             "accuracy": float(entry["accuracy"])})
        except (TypeError, KeyError, ValueError) as exc:
            raise ConfigError(f"{uri}: claim {i + 1} is not {{id, source, model, accuracy, architectures, note}}: "
                              f"{exc}") from None
        if not 0.0 < claim.accuracy <= 1.0:
            raise ConfigError(f"{uri}: claim {claim.id}: accuracy is a fraction in (0, 1], got {claim.accuracy}")
        if claim.id in seen:
            raise ConfigError(f"{uri}: claim id {claim.id} given twice")
        seen.add(claim.id)
        claims.append(claim)
    if not claims:
        raise ConfigError(f"{uri}: no claims")
    return claims


def read_run(uri: str) -> dict:
    """A finished grid run's summary, from its directory (``<storage>/tune/<grid>/<run_id>``), its
    ``grid_summary.json``, or the grid's directory (the run ``CURRENT`` names)."""
    candidates = [uri] if uri.endswith(".json") else [storage.join(uri, SUMMARY)]
    pointer = storage.join(uri, CURRENT)
    if not uri.endswith(".json") and storage.exists(pointer):
        # A pointer in storage is checked like the grid's own --resume checks it: an id, not a path.
        candidates.append(storage.join(uri, publish.check_id(storage.read_text(pointer).strip()), SUMMARY))
    for path in candidates:
        if storage.exists(path):
            summary = json.loads(storage.read_text(path))
            summary.setdefault("run_uri", uri)
            return summary
    raise FileNotFoundError(f"no finished grid run at {uri}: expected {SUMMARY} (a run directory "
                            f"<storage>/tune/<grid>/<run_id>, written when the grid finishes)")


def _max_epochs(config: dict, architecture: str) -> int | None:
    per_arch = (config.get("per_architecture") or {}).get(architecture) or {}
    return per_arch.get("epochs", (config.get("train") or {}).get("epochs"))


def trial_rows(summaries: list[dict], claims: list[Claim]) -> list[dict]:
    """One row per trial of every run, with its published claim (by architecture) and the difference."""
    by_arch = {a: c for c in claims for a in c.architectures}
    rows = []
    for s in summaries:
        config = s.get("config") or {}
        best = s.get("best") or {}
        for r in s.get("leaderboard") or []:
            test = r.get("test_accuracy")
            if test is None and best.get("trial_id") == r.get("trial_id"):
                test = best.get("test_accuracy")  # evaluate_all off: only the best trial was tested
            claim = by_arch.get(r["architecture"])
            rows.append({
                "grid": config.get("name"), "run_id": s.get("run_id"), "trial_id": r.get("trial_id"),
                "architecture": r["architecture"], "optimizer": r.get("optimizer"),
                "learning_rate": r.get("learning_rate"),
                "lr_schedule": (config.get("train") or {}).get("lr_schedule"),
                "epochs_run": r.get("epochs_run"), "max_epochs": _max_epochs(config, r["architecture"]),
                "val_accuracy": r.get("val_accuracy"), "test_accuracy": test,
                "train_seconds": r.get("train_seconds"), "status": r.get("status"),
                "claim": claim.id if claim else None,
                "published_accuracy": claim.accuracy if claim else None,
                "difference": test - claim.accuracy if claim and test is not None else None})
    return rows


def claim_rows(rows: list[dict], claims: list[Claim], tolerance: float) -> list[dict]:
    """Per claim: the trials that measure it, the best and worst test accuracy among them, and a
    verdict: ``reproduced`` (the best reaches the claim), ``within`` (short by at most
    ``tolerance``), ``not reproduced``, or ``not run`` (no trial of its architectures)."""
    out = []
    for c in claims:
        matched = [r for r in rows if r["test_accuracy"] is not None
                   and (not c.architectures or r["architecture"] in c.architectures)]
        row = {"claim": c.id, "source": c.source, "model": c.model, "published_accuracy": c.accuracy,
               "architectures": list(c.architectures), "note": c.note, "trials": len(matched)}
        if not matched:
            out.append({**row, "verdict": "not run"})
            continue
        best = max(matched, key=lambda r: r["test_accuracy"])
        worst = min(matched, key=lambda r: r["test_accuracy"])
        diff = best["test_accuracy"] - c.accuracy
        verdict = "reproduced" if diff >= 0 else "within" if -diff <= tolerance else "not reproduced"
        out.append({**row, "best": {k: best[k] for k in ("architecture", "optimizer", "learning_rate",
                                                         "test_accuracy", "grid", "run_id", "trial_id")},
                    "worst_test_accuracy": worst["test_accuracy"], "difference": diff,
                    "reaching": sum(r["test_accuracy"] >= c.accuracy for r in matched), "verdict": verdict})
    return out


def heatmaps(rows: list[dict], out: Path) -> list[tuple[str, str]]:
    """One optimizer × learning-rate heatmap of test accuracy per architecture whose trials cross
    both (several runs' trials of one cell: the best); ``[(architecture, file name)]``."""
    from .report_figures import optimizer_lr_grid, plot_lr_heatmap

    written = []
    for arch in sorted({r["architecture"] for r in rows}):
        grid = optimizer_lr_grid([r for r in rows if r["architecture"] == arch], metric="test_accuracy")
        if grid is None:
            continue
        name = f"heatmap-{arch}.png"
        plot_lr_heatmap(out / name, grid, f"test accuracy of {arch}")
        written.append((arch, name))
    return written


def _pct(x) -> str:
    return _MISSING if x is None else f"{100.0 * x:.2f}%"


def _points(x) -> str:
    return _MISSING if x is None else f"{100.0 * x:+.2f}".replace("-", "−")


def _seconds(x) -> str:
    return _MISSING if x is None else f"{float(x):.0f} s"


def markdown(summaries: list[dict], rows: list[dict], claims: list[dict], tolerance: float,
             figures: list[tuple[str, str]] = (), baselines: list[dict] = (), figure_prefix: str = "") -> str:
    """The comparison as Markdown: the runs, every trial against its claim, the verdict per claim,
    the classical baselines and links to the heatmaps (``figure_prefix`` + file name)."""
    from .classical import markdown as baselines_markdown

    if not summaries:  # the classical baselines alone
        return "\n\n".join(baselines_markdown(b).rstrip("\n") for b in baselines) + "\n"
    lines = ["| Grid run | Trials | Epochs (max) | LR schedule | Grid wall time | Sum of trial times |",
             "|:--|--:|--:|:--|--:|--:|"]
    for s in summaries:
        c = s.get("config") or {}
        train = c.get("train") or {}
        lines.append(f"| {c.get('name')} `{s.get('run_id')}` | {len(s.get('leaderboard') or [])} "
                     f"| {train.get('epochs', _MISSING)} | {train.get('lr_schedule', _MISSING)} "
                     f"| {format_duration(s['wall_time_s']) if s.get('wall_time_s') else _MISSING} "
                     f"| {format_duration(s['sum_trial_seconds']) if s.get('sum_trial_seconds') else _MISSING} |")
    lines += ["", "| Model | Optimizer | LR | Epochs run | Val acc | **Test acc** | Published | Difference (points) "
              "| Trial time | Grid |", "|:--|:--|--:|--:|--:|--:|--:|--:|--:|:--|"]
    ordered = sorted(rows, key=lambda r: -(r["test_accuracy"] if r["test_accuracy"] is not None else -1))
    for r in ordered:
        lines.append(f"| {r['architecture']} | {r['optimizer']} | {format_lr(r['learning_rate'])} "
                     f"| {_MISSING if r['epochs_run'] is None else r['epochs_run']} / {r['max_epochs'] or _MISSING} "
                     f"| {_pct(r['val_accuracy'])} | **{_pct(r['test_accuracy'])}** | {_pct(r['published_accuracy'])} "
                     f"| {_points(r['difference'])} | {_seconds(r['train_seconds'])} | {r['grid']} |")
    lines += ["", f"| Published claim | Architectures here | Trials | Best here (test) | Range here | Difference "
              f"(best, points) | Trials reaching it | Verdict (within = short by ≤ {100 * tolerance:g} points) |",
              "|:--|:--|--:|--:|--:|--:|--:|:--|"]
    for c in claims:
        archs = ", ".join(f"`{a}`" for a in c["architectures"]) or "every model compared"
        head = f"{_pct(c['published_accuracy'])} — {c['source']}, {c['model']}"
        if c["verdict"] == "not run":
            lines.append(f"| {head} | {archs} | 0 | {_MISSING} | {_MISSING} | {_MISSING} | {_MISSING} | not run |")
            continue
        b = c["best"]
        lines.append(f"| {head} | {archs} | {c['trials']} | {_pct(b['test_accuracy'])} ({b['architecture']}, "
                     f"{b['optimizer']} {format_lr(b['learning_rate'])}) | {_pct(c['worst_test_accuracy'])}–"
                     f"{_pct(b['test_accuracy'])} | {_points(c['difference'])} | {c['reaching']} of {c['trials']} "
                     f"| {c['verdict']} |")
    for b in baselines:
        lines += ["", baselines_markdown(b).rstrip("\n")]
    if figures:
        lines += [""] + [f"![{arch}: test accuracy by optimizer × learning rate]({figure_prefix}{name})"
                         for arch, name in figures]
    else:
        lines += ["", "No architecture was run at two learning rates with two optimizers: no heatmap."]
    return "\n".join(lines) + "\n"
