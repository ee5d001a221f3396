"""IdLookup: the same answers as a dict of ids, for ASCII and non-ASCII ids, absent ids, ids longer
than every stored one and prefixes of stored ones, with a fraction of a dict's memory."""

import numpy as np
import pyarrow as pa
import pytest

from artifacts.id_lookup import IdLookup, fixed_width


def test_answers_as_a_dict_would():
    rng = np.random.default_rng(0)
    ids = [f"item-{i:07d}" for i in rng.permutation(5000)] + ["é-sku", "漢字-1", "a", "ab"]
    lookup = IdLookup(pa.array(ids))
    by_dict = {item: row for row, item in enumerate(ids)}
    asked = ids[::7] + ["item-9999999", "item-000000", "item-00000001", "abc", "", "é", "漢字-1x", "x" * 40]
    assert lookup.rows(asked).tolist() == [by_dict.get(i, -1) for i in asked]
    assert lookup.get("a") == by_dict["a"] and lookup.get("nope") is None and "ab" in lookup
    assert len(lookup) == len(ids)


def test_inputs_of_every_kind_and_sliced_arrow_arrays():
    ids = [f"sku-{i}" for i in range(300)]
    for given in (ids, np.array(ids, dtype=object), pa.chunked_array([ids[:100], ids[100:]]),
                  pa.array(["pad"] * 7 + ids).slice(7)):
        assert IdLookup(given).rows(["sku-0", "sku-299", "sku-300"]).tolist() == [0, 299, -1]
    assert fixed_width(pa.array(["ab", "é", ""])).tolist() == [b"ab", "é".encode(), b""]


def test_empty_and_null():
    assert IdLookup([]).rows(["x"]).tolist() == [-1]
    assert IdLookup(["", ""]).rows(["", "x"]).tolist() == [-1, -1]  # no id is empty; nothing matches it
    with pytest.raises(ValueError, match="null"):
        IdLookup(pa.array(["a", None]))


def test_a_million_ids_take_a_fraction_of_a_dict():
    ids = pa.array([f"item-{i:07d}" for i in range(1_000_000)])
    lookup = IdLookup(ids)
    assert lookup.nbytes < 25 * 2**20  # 12 bytes an id + its row; a dict of str -> int takes ~100 MB
    assert lookup.rows(["item-0123456", "item-1000000"]).tolist() == [123456, -1]
