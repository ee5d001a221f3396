"""The search replica's logic without Ray: a published index (or the shards of it that this search
slot serves, see :mod:`artifacts.index_shards`) plus where each item's image lives, what the
catalogue says about it (:mod:`.item_metadata`), and each live item's stored vector ("more like this")."""

from __future__ import annotations

import logging
import time

import numpy as np

from artifacts import embeddings
from artifacts.id_lookup import IdLookup
from artifacts.index_manifest import IndexLoadError, UnknownCategoryError
from artifacts.index_shards import ShardedIndex

from .item_metadata import ItemMetadata

log = logging.getLogger("vitrine.serve")

__all__ = ["CatalogueSearcher", "UnknownCategoryError", "IndexLoadError"]


class CatalogueSearcher:
    def __init__(self, index_uri: str, *, ef: int = 0, threads: int = 1, slot: int = 0, slots: int = 1,
                 memory_budget_bytes: int = 0):
        t0 = time.time()
        # The model/index dimension match is checked by the ingress before a version serves.
        self.index = ShardedIndex.load(index_uri, slot=slot, slots=slots, num_threads=threads,
                                       memory_budget_bytes=memory_budget_bytes)
        self.slot, self.slots = slot, slots
        if ef:
            self.index.set_ef(ef)
        manifest = self.index.manifest
        self.index_id = manifest.index_id
        self.model_id = manifest.model_id
        self.dim = self.index.dim
        # Item id -> row of the image URIs (and sub-categories) of the embeddings run; compact maps
        # (artifacts/id_lookup.py), since a replica holds them for a million items, twice in a swap.
        self._locations, self._image_uris, self._sub_categories = self._item_locations(manifest.source_embeddings)
        self.metadata = self._item_metadata(manifest.source_embeddings)
        self._positions: dict | None = None  # shard -> IdLookup of its live items' rows, built on first use
        log.info("index %s loaded: %d items, dim %d, %d categories, shard(s) %s of %d (search slot %d of %d), "
                 "%.1f s", self.index_id, len(self.index), self.dim, len(self.index.category_counts()),
                 ",".join(map(str, self.index.shards)) or "none", self.index.plan.shards, slot, slots, time.time() - t0)

    def _item_locations(self, run_uri: str):
        """``(lookup, image URIs, sub-categories or None)``: item id → row of the other two, from
        the embeddings run the index was built from.

        Only ids in the lookup are ever turned into a storage read, so a request cannot name a path.
        """
        import pyarrow as pa

        empty = (IdLookup([]), pa.array([], pa.string()), None)
        if not run_uri or not len(self.index):
            return empty
        try:
            table = embeddings.read_table(run_uri, columns=["item_id", "image_uri", "sub_category"])
            if self.index.plan.shards > 1:  # only the items this slot holds: the map grows with the catalogue
                import pyarrow.compute as pc

                table = table.filter(pc.is_in(table.column("item_id"), value_set=pa.array(self.index.item_ids.astype(str))))
        except Exception as exc:  # images are a convenience; search works without them
            log.warning("index %s: cannot read image locations from %s (%s); item images will 404",
                        self.index_id, run_uri, exc)
            return empty
        subs = table.column("sub_category").combine_chunks()
        return (IdLookup(table.column("item_id")), table.column("image_uri").combine_chunks(),
                subs if subs.null_count < len(subs) else None)

    def _item_metadata(self, run_uri: str) -> ItemMetadata:
        """The catalogue manifest's extra columns for this slot's items (serve/item_metadata.py)."""
        if not run_uri or not len(self.index):
            return ItemMetadata()
        try:
            source = embeddings.read_manifest(embeddings.resolve_run(run_uri)).catalogue
            held = self.index.item_ids.astype(str) if self.index.plan.shards > 1 else None
            found = ItemMetadata.from_catalogue(source, held)
        except Exception as exc:  # metadata is a convenience; search works without it
            log.warning("index %s: cannot read item metadata from the catalogue of %s (%s); hits carry none",
                        self.index_id, run_uri, exc)
            return ItemMetadata()
        if len(found):
            log.info("index %s: metadata columns %s for %d items", self.index_id, ", ".join(found.columns), len(found))
        return found

    def item_vector(self, item_id: str) -> dict | None:
        """``{"embedding", "category"}`` of a live item this slot holds (None: not here, or
        deleted): the query of "more like this"."""
        if self._positions is None:
            # Tombstoned rows are left out, so a deleted item is unknown; a changed item's
            # live row is the one found (its old row is a tombstone).
            self._positions = {s: (shard.live_positions, IdLookup(shard.item_ids[shard.live_positions]))
                               for s, shard in self.index.shards.items()}
        for s, (live, lookup) in self._positions.items():
            row = lookup.get(item_id)
            if row is not None:
                shard, pos = self.index.shards[s], int(live[row])
                return {"embedding": np.array(shard.vectors[pos], np.float32),
                        "category": shard.categories_of(np.array([pos]))[0]}
        return None

    def search(self, embedding, k: int, category: str | None = None) -> list[dict]:
        """Top-``k`` items for one unit-length embedding, best first; ``category`` None = all."""
        return [hit for _, hit in self.search_scored(embedding, k, category)]

    def search_many(self, embeddings, ks: list[int], categories: list) -> list[list[dict]]:
        """:meth:`search` of each row of ``embeddings`` with its own k and category; the rows that
        share both go to the index as one query batch (each row gets what it would alone)."""
        embeddings = np.asarray(embeddings, np.float32)
        groups: dict[tuple, list[int]] = {}
        for i, key in enumerate(zip(ks, categories)):
            groups.setdefault(key, []).append(i)
        found: list[list[dict]] = [[] for _ in ks]
        for (k, category), rows in groups.items():
            for i, hits in zip(rows, self.index.search(embeddings[rows], k=k, category=category)):
                found[i] = [hit for _, hit in self._scored(hits)]
        return found

    def search_scored(self, embedding, k: int, category: str | None = None) -> list[tuple[float, dict]]:
        """:meth:`search` with each hit's unrounded similarity, which the ingress merges the
        answers of several search slots by."""
        return self._scored(self.index.search(np.asarray(embedding, np.float32)[None, :], k=k, category=category)[0])

    def _scored(self, hits) -> list[tuple[float, dict]]:
        ids = [h.item_id for h in hits]
        subs = self._sub_categories_of(ids)
        out = []
        for h, meta, sub in zip(hits, self.metadata.get_many(ids), subs):
            hit = {"item_id": h.item_id, "category": h.category, "distance": round(h.distance, 6),
                   "similarity": round(100.0 * max(0.0, min(1.0, h.similarity)), 2)}
            if sub is not None:  # nested catalogues only: flat ones keep their response shape
                hit["sub_category"] = sub
            if meta:  # manifest catalogues with extra columns only
                hit["metadata"] = meta
            out.append((float(h.similarity), hit))
        return out

    def _sub_categories_of(self, ids: list[str]) -> list[str | None]:
        if self._sub_categories is None:
            return [None] * len(ids)
        rows = self._locations.rows(ids)
        return [None if r < 0 else self._sub_categories[int(r)].as_py() for r in rows]

    def image_uri(self, item_id: str) -> str | None:
        row = self._locations.get(item_id)
        return None if row is None else self._image_uris[row].as_py()

    def image_location(self, item_id: str) -> dict | None:
        """``{"uri", "roots"}`` of an item's image: the URI as the index holds it and the catalogue
        roots the index recorded, which the ingress checks the URI against before opening it."""
        uri = self.image_uri(item_id)
        return None if uri is None else {"uri": uri, "roots": list(self.index.manifest.catalogue_roots or [])}

    def samples(self, per_category: int = 2, seed: int = 0) -> list[dict]:
        """A few items of each category (for the page's "pick a sample"); stable for an index."""
        rng = np.random.default_rng(seed)
        out = []
        for name in self.index.category_names:
            members = self.index.members(name)  # empty where this slot holds none of the category
            for pos in rng.choice(len(members), size=min(per_category, len(members)), replace=False):
                item = members[pos]
                if item in self._locations:
                    out.append({"item_id": item, "category": name})
        return out

    def info(self) -> dict:
        """What ``Search.warm`` answers: the index's identity and size, checked against the model."""
        m = self.index.manifest
        return {"index_id": self.index_id, "model_id": self.model_id, "items": len(self.index),
                "embedding_dim": self.dim, "categories": self.index.category_counts(),
                "recall_at_10": m.recall_at_10, "created_at": m.created_at, "ef": self.index.ef,
                "shards": sorted(self.index.shards), "of_shards": self.index.plan.shards,
                "slot": self.slot, "slots": self.slots}
