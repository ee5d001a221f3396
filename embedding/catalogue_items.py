"""The catalogue as the embedding job sees it: every listed item with its id, image URI,
category, sub-category (a string, or null) and content hash; the items whose image lies outside
the catalogue's roots split off as rows of the run's ``errors/`` with the reason."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pyarrow as pa

log = logging.getLogger("vitrine.embed")

ITEM_COLUMNS = ("item_id", "image_uri", "category", "sub_category", "content_sha256")


@dataclass
class Listing:
    total: int  # items listed (refused ones included)
    listed_ids: pa.Array  # every listed item's id, refused ones included (failures, not removals)
    items: pa.Table  # ITEM_COLUMNS of the items that may be read
    refused: pa.Table  # the others, in the errors schema
    roots: tuple  # where the catalogue's images may be read


def list_items(catalogue_uri: str, *, allowed_prefixes=(), category_level: int = 1, limit: int = 0) -> Listing:
    from artifacts import catalogue, catalogue_listing, image_roots

    listed = catalogue_listing.list_catalogue(catalogue_uri, allowed_prefixes=allowed_prefixes, keep_refused=True,
                                              category_level=category_level)
    if catalogue.SUB_CATEGORY not in listed.column_names:
        listed = listed.append_column(catalogue.SUB_CATEGORY, pa.nulls(listed.num_rows, pa.string()))
    elif not pa.types.is_string(listed.schema.field(catalogue.SUB_CATEGORY).type):
        listed = listed.set_column(listed.schema.get_field_index(catalogue.SUB_CATEGORY), catalogue.SUB_CATEGORY,
                                   listed.column(catalogue.SUB_CATEGORY).cast(pa.string()))
    listed = listed.select([*ITEM_COLUMNS, catalogue.REFUSED])
    if limit > 0:
        listed = listed.slice(0, limit)
    items, refused = split_refused(listed)
    roots = image_roots.catalogue_roots(catalogue_uri, allowed_prefixes)
    if refused.num_rows:
        log.warning("catalogue %s: %d item(s) name images outside the catalogue roots %s; not reading them "
                    "(errors/ has each reason)", catalogue_uri, refused.num_rows, list(roots))
    return Listing(total=listed.num_rows, listed_ids=listed.column("item_id").combine_chunks(), items=items,
                   refused=refused, roots=tuple(roots))


def split_refused(listed):
    """``(items to consider, refused rows in the errors schema)`` of a listing with reasons."""
    import pyarrow.compute as pc

    from artifacts.catalogue import REFUSED
    from artifacts.embeddings import ERRORS_SCHEMA

    bad = pc.is_valid(listed.column(REFUSED))
    refused = listed.filter(bad).select(["item_id", "image_uri", REFUSED])
    return (listed.filter(pc.invert(bad)).select(list(ITEM_COLUMNS)),
            refused.rename_columns(ERRORS_SCHEMA.names).cast(ERRORS_SCHEMA))
