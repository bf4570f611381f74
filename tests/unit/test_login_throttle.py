"""The login throttle: a wait that doubles with each failure past the free ones, bounded memory."""

from __future__ import annotations

from router.auth.throttle import LoginThrottle


def test_the_wait_starts_after_the_free_failures_and_doubles_up_to_the_longest():
    throttle = LoginThrottle(free=2, first=10.0, longest=30.0)
    throttle.failed("a")
    assert throttle.wait("a") == 0.0
    throttle.failed("a")
    assert 9.0 < throttle.wait("a") <= 10.0
    throttle.failed("a")
    assert 19.0 < throttle.wait("a") <= 20.0
    throttle.failed("a")
    assert 29.0 < throttle.wait("a") <= 30.0
    assert throttle.wait("b") == 0.0, "names are counted apart"
    throttle.succeeded("a")
    assert throttle.wait("a") == 0.0


def test_only_the_most_recent_names_are_remembered():
    throttle = LoginThrottle(free=1, first=60.0, capacity=3)
    for name in ("a", "b", "c", "d"):
        throttle.failed(name)
    assert throttle.wait("a") == 0.0, "the least recent name was forgotten"
    assert all(throttle.wait(n) > 0 for n in ("b", "c", "d"))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_tries_refused_while_a_name_waits_are_counted_one_row_a_minute():
    clock = Clock()
    throttle = LoginThrottle(free=1, first=600.0, note_every=60.0, clock=clock)
    throttle.failed("ada")
    first = throttle.refused("ada", "10.0.0.1")
    assert first is not None and (first.count, first.addresses) == (1, ["10.0.0.1"])
    for i in range(500):
        assert throttle.refused("ada", f"10.0.0.{i % 3}") is None, "within the minute"
    clock.now += 60.0
    due = throttle.refused("ada", "10.0.0.9")
    assert due is not None and due.count == 501
    assert due.addresses == ["10.0.0.0", "10.0.0.1", "10.0.0.2", "10.0.0.9"]
    assert throttle.refused("ada", "10.0.0.9") is None
    left = throttle.unnoted("ada")
    assert left is not None and left.count == 1, "for the name's next row"
    assert throttle.unnoted("ada") is None


def test_the_addresses_kept_with_a_count_are_bounded():
    throttle = LoginThrottle(free=1, first=600.0, clock=Clock())
    throttle.failed("ada")
    throttle.refused("ada", "first")
    for i in range(1000):
        throttle.refused("ada", f"10.0.{i // 256}.{i % 256}")
    left = throttle.unnoted("ada")
    assert left is not None and left.count == 1000 and len(left.addresses) == 10


def test_a_name_guessed_at_thousands_of_times_still_waits_the_longest_not_an_error():
    """2**over overflowed a float after 1024 failures past the free ones: every further
    sign-in of that name, its owner's too, was a 500 until the name was forgotten."""
    throttle = LoginThrottle(free=5, first=1.0, longest=300.0)
    for _ in range(2000):
        throttle.failed("ada")
    assert 299.0 < throttle.wait("ada") <= 300.0
