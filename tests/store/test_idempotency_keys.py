"""The API's replay idempotency keys in the store: claimed once per actor, kept, expired."""

from __future__ import annotations

from datetime import timedelta

from router.store.idempotency import KEY_LIFETIME, Seen, claim, expire, give_up, keep
from router.store.inbound import utcnow

ROUTE = "/api/deliveries/resend"


def test_a_key_is_claimed_once_per_actor_and_anew_once_expired(store):
    first = utcnow()
    with store.begin() as conn:
        assert claim(conn, "sam", "k1", ROUTE, "a" * 64, first) is None
        assert claim(conn, "sue", "k1", ROUTE, "b" * 64, first) is None, "keys are per actor"
    with store.begin() as conn:
        assert claim(conn, "sam", "k1", ROUTE, "a" * 64, first) == Seen(
            ROUTE, "a" * 64, first, None, None
        ), "still being answered"
        keep(conn, "sam", "k1", 200, '{"count": 1}')
        give_up(conn, "sam", "k1")  # a kept answer stays
    with store.begin() as conn:
        seen = claim(conn, "sam", "k1", ROUTE, "c" * 64, first + timedelta(seconds=30))
    assert seen == Seen(ROUTE, "a" * 64, first, 200, '{"count": 1}')

    later = first + KEY_LIFETIME + timedelta(seconds=1)  # past its lifetime: free again
    with store.begin() as conn:
        assert claim(conn, "sam", "k1", ROUTE, "c" * 64, later) is None
        give_up(conn, "sam", "k1")
        assert claim(conn, "sam", "k1", ROUTE, "d" * 64, later) is None
        assert expire(conn, first + KEY_LIFETIME) == 1, "sue's, claimed a lifetime ago"
        assert expire(conn, later) == 0
