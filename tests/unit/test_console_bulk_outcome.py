"""The address of a bulk action's result: its copies' ids as runs, read back within bounds."""

from __future__ import annotations

from router.console.bulk_outcome import decode_ids, encode_ids


def test_ids_travel_as_runs_and_come_back_the_same():
    ids = [7, 3, 4, 5, 12, 9, 10, 4]
    assert encode_ids(ids) == "3-5,7,9-10,12"
    assert decode_ids(encode_ids(ids), 1000) == [3, 4, 5, 7, 9, 10, 12]
    assert encode_ids([]) == "" and decode_ids("", 1000) == []


def test_a_crafted_address_yields_at_most_the_limit_and_skips_what_is_not_an_id():
    assert decode_ids("1-99999999999", 5) == [1, 2, 3, 4, 5]
    assert decode_ids("9-3,x,²,0,-4,4-,2", 5) == [2]
    assert decode_ids("1-3,10-20", 5) == [1, 2, 3, 10, 11]
