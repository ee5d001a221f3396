"""The ``vitrine`` command: one sub-command per job.

    vitrine models [--json]
    vitrine models list-artifacts | promote ID [--force] | rollback
    vitrine tune --grid FILE [--smoke-test] [--storage URI] [--address RAY_ADDRESS] [--resume]
    vitrine evaluate --model DIR_OR_URI [--json] [--robustness [--compare URI ...]]
    vitrine explain --model DIR_OR_URI IMAGE... --out DIR [--method gradcam|saliency]
    vitrine compare RUN... [--baselines DIR] [--out DIR] [--markdown FILE --section NAME]
    vitrine baselines [--models NAME ...] [--data DIR] [--out DIR]
    vitrine quantize --model DIR_OR_URI --variant int8|float16 [--out MODELS_URI]
    vitrine export-catalogue | embed | build-index | evaluate-search | nightly ...
    vitrine serve [--config serve/config.yaml] [--port 8000] [--address ...]
    vitrine submit [--address http://HEAD:8265] JOB [ARGS...]     # through the Ray Jobs API
    vitrine jobs list | status ID | logs ID | stop ID
    vitrine --version

A mistake in what was asked (a missing file, a bad config value, nothing published yet) prints one
line, ``vitrine <command>: error: ...``, and exits 2; ``VITRINE_DEBUG=1`` shows the traceback.

Every command shares one storage root: ``--storage URI`` or ``$VITRINE_STORAGE``
(default ``./.vitrine``).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# sub-command -> (module, one-line help); modules load only when their command runs.
COMMANDS = {
    "models": ("jobs.list_models", "list the model architectures; list-artifacts, promote, rollback models/LATEST"),
    "tune": ("jobs.tune_grid", "run a Ray Tune grid, report and export the best model"),
    "evaluate": ("jobs.evaluate_model", "reload a model artifact and reproduce its test metrics"),
    "explain": ("jobs.explain", "heatmaps (Grad-CAM or saliency) of what a model's prediction rests on, over images"),
    "compare": ("jobs.compare_runs", "finished grid runs against the published claims: Markdown table and heatmaps"),
    "baselines": ("jobs.fit_baselines", "classical scikit-learn baselines (SVC, random forest, k-NN, logistic regression) on the grids' split"),
    "quantize": ("jobs.quantize_model", "write a model's int8 / float16 TFLite variant as a model artifact with its own card"),
    "export-catalogue": ("jobs.export_catalogue", "write Fashion-MNIST as an image catalogue (tile PNGs or photo-style JPEGs + manifest)"),
    "embed": ("jobs.embed_catalogue", "embed a catalogue with Ray Data into Parquet (incremental)"),
    "build-index": ("jobs.build_index", "build and publish the HNSW index of an embeddings run"),
    "evaluate-search": ("jobs.evaluate_search", "retrieval mAP / precision@10 and HNSW recall"),
    "nightly": ("jobs.nightly", "the nightly pipeline: embed, build the index, evaluate retrieval"),
    "submit": ("jobs.submit", "submit a job to a Ray cluster (Jobs API), follow its logs, exit with its status"),
    "jobs": ("jobs.ray_jobs", "list the cluster's jobs; a job's status, logs; stop one"),
    "serve": ("jobs.serve_app", "start the search service (Ray Serve app + web page) and print its URL"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="vitrine", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=sorted(COMMANDS), help="; ".join(f"{k}: {v[1]}" for k, v in COMMANDS.items()))
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else 2
    if argv[0] == "--version":
        print(version())
        return 0
    args, rest = parser.parse_known_args(argv[:1])
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        return module.main(argv[1:])
    except Exception as exc:
        if os.environ.get("VITRINE_DEBUG") or not isinstance(exc, user_errors()):
            raise
        print(f"vitrine {args.command}: error: {exc}", file=sys.stderr)
        return 2


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors that describe what the user asked for, not a bug: shown as one line."""
    from artifacts.catalogue import CatalogueError
    from artifacts.configuration import ConfigError
    from artifacts.index_manifest import IndexBuildError, IndexLoadError
    from artifacts.publish import StaleArtifactError
    from artifacts.storage import StorageError

    return (ConfigError, CatalogueError, IndexBuildError, IndexLoadError, StaleArtifactError, StorageError,
            FileNotFoundError)


def version() -> str:
    from importlib import metadata

    def v(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    return f"vitrine {v('vitrine')} (ray {v('ray')}, keras {v('keras')}, python {sys.version.split()[0]})"


if __name__ == "__main__":
    sys.exit(main())
