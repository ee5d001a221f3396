"""The typed app builder that ``serve/config.yaml`` points at (``import_path: serve.app:build_app``).

    serve run serve.app:build_app storage=s3://bucket/vitrine     # Ray's CLI, args from the command line
    vitrine serve --config serve/config.yaml                      # ours: local Ray or --address
"""

# No `from __future__ import annotations`: Serve reads the builder's AppArgs annotation as a class
# to validate the config's args with it.
from ray.serve import Application

from artifacts import storage

from .args import AppArgs, search_slot_name
from .classifier import Classifier
from .ingress import Ingress
from .search import Search


def build_app(args: AppArgs) -> Application:
    # Resolve the storage root once, here, so every replica (on any node) reads the same place.
    root = args.storage or storage.default_root()
    args = args.model_copy(update={"storage": root})
    classifier = Classifier.bind(root, keep=args.versions_kept)
    # One Search deployment per slot; each serves its share of a sharded index's shards.
    searches = [Search.options(name=search_slot_name(s)).bind(root, keep=args.versions_kept, ef=args.search_ef, slot=s,
                                                         slots=args.search_shards,
                                                         memory_budget_bytes=args.search_memory_budget_bytes)
                for s in range(args.search_shards)]
    return Ingress.bind(classifier, searches, args.model_dump())
