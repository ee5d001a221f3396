"""Finished grid runs against the published claims, as Markdown and heatmaps: every trial's test
accuracy beside the paper's number for its architecture, a verdict per claim, the classical
baselines (``vitrine baselines``) and one optimizer × learning-rate heatmap per architecture.

    vitrine compare .vitrine/tune/baselines/baselines-20261128T120000-ab12 .vitrine/tune/default
    vitrine compare RUN... --baselines .vitrine/evaluations/baselines/<run_id> --out /tmp/compare
    vitrine compare RUN... --markdown docs/RESULTS.md --section published   # splice into the docs
    vitrine compare --baselines DIR --markdown docs/RESULTS.md --section baselines  # baselines alone
    python -m jobs.compare_runs RUN... --claims my-claims.yaml --set tolerance=0.005 --json

A RUN is a grid run's directory (``<storage>/tune/<grid>/<run_id>``, holding ``grid_summary.json``),
that file, or a grid's directory (its ``CURRENT`` run). The claims are
``tune/grids/claims/published.yaml`` unless ``--claims`` names another file. Writes
``comparison.md``, ``comparison.json`` and the ``heatmap-<architecture>.png`` files to ``--out``
(default ``<storage>/evaluations/compare/<id>``); ``--markdown FILE`` also replaces the text between
``<!-- compare:SECTION:begin -->`` and ``<!-- compare:SECTION:end -->`` in FILE (appended when absent),
with figure links relative to FILE.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from artifacts.logs import setup_logging
from jobs import flags

MARKDOWN_FILE, RESULT_FILE = "comparison.md", "comparison.json"


@dataclass(frozen=True)
class CompareConfig:
    runs: tuple[str, ...] = ()
    claims: str = ""  # default: tune/grids/claims/published.yaml
    baselines: tuple[str, ...] = ()  # `vitrine baselines` result directories
    # A claim missed by at most this much (a fraction: 0.01 = 1 point) is "within", not "not reproduced".
    tolerance: float = 0.01
    out: str = ""
    storage: str = ""
    markdown: str = ""  # a local Markdown file to splice the table into
    section: str = "published"  # its markers: <!-- compare:SECTION:begin/end -->


def markers(section: str) -> tuple[str, str]:
    return f"<!-- compare:{section}:begin -->", f"<!-- compare:{section}:end -->"


def splice(path: Path, section: str, text: str) -> None:
    """Replace ``section``'s block in the Markdown file ``path`` with ``text`` (appended if absent)."""
    begin, end = markers(section)
    block = f"{begin}\n{text.rstrip()}\n{end}"
    old = path.read_text() if path.exists() else ""
    if begin in old and end in old.split(begin, 1)[1]:
        head, rest = old.split(begin, 1)
        new = head + block + rest.split(end, 1)[1]
    else:
        new = old.rstrip("\n") + ("\n\n" if old else "") + block + "\n"
    path.write_text(new)


def run(config: CompareConfig, command: str = "") -> dict:
    """Compare ``config.runs`` with the claims; write the Markdown, JSON and heatmaps to ``out``."""
    from artifacts import publish, storage
    from artifacts.configuration import ConfigError, to_dict
    from tune import classical, comparison

    if not config.runs and not config.baselines:
        raise ConfigError("nothing to compare: give grid RUN directories and/or --baselines")
    if not 0.0 <= config.tolerance < 1.0:
        raise ConfigError(f"tolerance is a fraction in [0, 1), got {config.tolerance}")
    claims = comparison.load_claims(config.claims or None)
    summaries = [comparison.read_run(uri) for uri in config.runs]
    baselines = [classical.read_result(uri) for uri in config.baselines]
    rows = comparison.trial_rows(summaries, claims)
    verdicts = comparison.claim_rows(rows, claims, config.tolerance)
    out = config.out or storage.join(config.storage or storage.default_root(), "evaluations", "compare",
                                     publish.new_id("compare"))
    result = {"out": out, "runs": [{"run_id": s.get("run_id"), "grid": (s.get("config") or {}).get("name"),
                                    "run_uri": s.get("run_uri"), "wall_time_s": s.get("wall_time_s"),
                                    "sum_trial_seconds": s.get("sum_trial_seconds")} for s in summaries],
              "trials": rows, "claims": verdicts, "baselines": [b["run_id"] for b in baselines],
              "command": command, "config": to_dict(config)}
    with tempfile.TemporaryDirectory(prefix="vitrine-compare-") as tmp:
        figures = comparison.heatmaps(rows, Path(tmp))
        result["figures"] = [name for _, name in figures]
        intro = f"Command: `{command}`\n\n" if command else ""
        md = intro + comparison.markdown(summaries, rows, verdicts, config.tolerance, figures, baselines)
        Path(tmp, MARKDOWN_FILE).write_text(md)
        Path(tmp, RESULT_FILE).write_text(json.dumps(result, indent=2, default=str) + "\n")
        storage.upload_dir(tmp, out)
        if config.markdown:
            target = Path(config.markdown)
            prefix = "" if storage.is_remote(out) else \
                os.path.relpath(storage.resolve(out)[1], target.resolve().parent).replace(os.sep, "/") + "/"
            splice(target, config.section, intro + comparison.markdown(
                summaries, rows, verdicts, config.tolerance, figures, baselines, figure_prefix=prefix))
    result["markdown"] = md
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vitrine compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="*", metavar="RUN", help="grid run directories (or grid_summary.json files)")
    p.add_argument("--baselines", action="append", help="a `vitrine baselines` result directory (repeatable)")
    p.add_argument("--claims", help="claims YAML (default tune/grids/claims/published.yaml)")
    p.add_argument("--out", help="directory (or URI) for comparison.md/.json and the heatmaps "
                                 "(default <storage>/evaluations/compare/<id>)")
    p.add_argument("--markdown", help="also splice the table into this Markdown file, between its section markers")
    p.add_argument("--section", help="the markers' name in --markdown (default published)")
    flags.add_storage(p)
    p.add_argument("--config", help="YAML file over the defaults")
    flags.add_overrides(p)
    flags.add_json(p)
    return p


def main(argv: list[str] | None = None) -> int:
    from artifacts.configuration import load_config

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    setup_logging()
    config = load_config(CompareConfig, yaml_path=args.config, overrides=args.overrides, values={
        "runs": tuple(args.runs), "baselines": tuple(args.baselines) if args.baselines else None,
        "claims": args.claims, "out": args.out, "storage": args.storage, "markdown": args.markdown,
        "section": args.section})
    result = run(config, command=shlex.join(["vitrine", "compare", *argv]))
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "markdown"}, indent=2, default=str))
    else:
        print(result["markdown"] + f"\nWritten to {result['out']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
