"""The typed app builder that ``serve/config.yaml`` points at (``import_path: serve.app:build_app``).

    serve run serve.app:build_app storage=s3://bucket/vitrine     # Ray's CLI, args from the command line
    vitrine serve --config serve/config.yaml                      # ours: local Ray or --address
"""

# No `from __future__ import annotations`: Serve reads the builder's AppArgs annotation as a class
# to validate the config's args with it.
from ray.serve import Application

from artifacts import storage

from .args import AppArgs
from .classifier import Classifier
from .ingress import Ingress
from .search import Search


def build_app(args: AppArgs) -> Application:
    # Resolve the storage root once, here, so every replica (on any node) reads the same place.
    root = args.storage or storage.default_root()
    args = args.model_copy(update={"storage": root})
    classifier = Classifier.bind(root, keep=args.versions_kept)
    search = Search.bind(root, keep=args.versions_kept, ef=args.search_ef)
    return Ingress.bind(classifier, search, args.model_dump())
