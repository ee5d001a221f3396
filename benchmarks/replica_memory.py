"""Where a search replica's memory goes: its RSS after each step of loading an index as
serve.searcher.CatalogueSearcher does (the index, the image locations, the item metadata).

    python benchmarks/replica_memory.py --index <storage>/indexes        # or an index directory
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--index", required=True, help="an index directory, or an indexes/ directory with LATEST")
    args = p.parse_args(argv)
    from benchmarks.memory import rss_bytes

    def mb() -> int:
        return round(rss_bytes(os.getpid()) / 2**20)

    steps = [("start", mb())]
    from artifacts.index_shards import ShardedIndex
    from serve.searcher import CatalogueSearcher

    steps.append(("imports", mb()))
    index = ShardedIndex.load(args.index, num_threads=1)
    steps.append(("index loaded", mb()))
    searcher = CatalogueSearcher.__new__(CatalogueSearcher)  # its steps one at a time, as __init__ runs them
    searcher.index, searcher.index_id, searcher.slot, searcher.slots = index, index.manifest.index_id, 0, 1
    source = index.manifest.source_embeddings
    searcher._locations, searcher._image_uris, searcher._sub_categories = searcher._item_locations(source)
    steps.append(("image locations", mb()))
    searcher.metadata = searcher._item_metadata(source)
    gc.collect()
    steps.append((f"item metadata ({len(searcher.metadata)} items)", mb()))
    graphs = sum(int(s["bytes"]) for s in index.shard_info) if getattr(index, "shard_info", None) else 0
    print(f"{len(index):,} items; index files {graphs / 2**20:,.0f} MB")
    print("| step | RSS MB |\n|---|--:|")
    for name, value in steps:
        print(f"| {name} | {value:,} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
