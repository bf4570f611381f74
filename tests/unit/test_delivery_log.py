"""A destination's failed attempts logged by episode (router/delivery_log.py): the first,
a reminder with the counts every few minutes, and the end."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from router.connectors import Delivery, SendResult
from router.delivery_log import DeliveryLog
from router.store.deliveries import Attempt

log = logging.getLogger("tie.test.deliveries")
REFUSED = SendResult("retry", error="127.0.0.1:2576: [Errno 111] Connection refused")


def attempt(delivery_id: int, attempts: int, result: SendResult = REFUSED) -> Attempt:
    delivery = Delivery(
        id=delivery_id,
        message_id=delivery_id + 100,
        message_uuid="u",
        channel="orders",
        destination="lab",
        payload=b"",
        content_type="application/hl7-v2",
        ordering_key="",
        idempotency_key=None,
        attempts=attempts,
    )
    return Attempt(delivery, result, datetime.now(UTC), 1.0)


def test_an_hour_down_is_the_first_failure_a_reminder_every_five_minutes_and_the_end(caplog):
    now = [0.0]
    lines = DeliveryLog(log, "orders", "lab", remind_every=300, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger=log.name):
        for second in range(3600):  # 10 deliveries retried every second
            lines.recorded((attempt(n, second), "retrying") for n in range(10))
            now[0] += 1
        lines.recorded([(attempt(1, 3600, SendResult("sent")), "sent")])
    logged = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert len(logged) == 1 + 11 + 1
    assert logged[1] == (
        "WARNING",
        "orders/lab still failing after 300 s: 3001 attempt(s) to be retried, 0 failed for good; "
        "last: delivery 0 (message 100) attempt 301 will be retried: " + REFUSED.error,
    )
    assert logged[-1] == (
        "INFO",
        "orders/lab works again: delivery 1 (message 101) sent after 3600 s of failures: "
        "36000 attempt(s) to be retried, 0 failed for good",
    )
