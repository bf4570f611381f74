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
