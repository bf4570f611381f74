"""A bulk replay's pace: batches a tenth of a second's worth at the rate, pauses to keep to it."""

from __future__ import annotations

import pytest

from router.replay import BATCH, Pace


@pytest.mark.parametrize(
    ("rate", "size"), [(0, BATCH), (1000, 100), (200, 20), (5, 1), (10**9, BATCH)]
)
def test_a_batch_is_a_tenth_of_a_seconds_worth_within_bounds(rate, size):
    assert Pace(rate).size == size


def test_the_batches_take_every_id_once_in_order():
    ids = list(range(1, 26))
    assert [len(b) for b in Pace(100).batches(ids)] == [10, 10, 5]
    assert [i for b in Pace(100).batches(ids) for i in b] == ids


def test_no_rate_never_pauses_and_a_rate_pauses_for_what_ran_ahead():
    assert Pace(0).pause(BATCH) == 0.0
    slow = Pace(0.5)  # one item every two seconds
    first = slow.pause(1)
    assert 0 < first <= 2.0
    assert slow.pause(1) > first, "two items are owed four seconds from the start"
