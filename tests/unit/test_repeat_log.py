"""A warning a peer can cause over and over: once per key a window, then the count
(router/repeat_log.py)."""

from __future__ import annotations

import logging

from router.repeat_log import RepeatLog

log = logging.getLogger("tie.test.repeat")


def test_repeats_within_the_window_are_counted_and_told_with_the_next_line_after_it(caplog):
    now = [0.0]
    lines = RepeatLog(log, every=300, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger=log.name):
        for second in range(600):  # one bad connection a second from each of two hosts
            now[0] = float(second)
            lines.warning(("10.0.0.1", "closed"), "closed after %d bytes from %s", 9, "10.0.0.1:1")
            lines.warning(("10.0.0.2", "closed"), "closed after %d bytes from %s", 9, "10.0.0.2:1")
    assert [r.getMessage() for r in caplog.records] == [
        "closed after 9 bytes from 10.0.0.1:1",
        "closed after 9 bytes from 10.0.0.2:1",
        "closed after 9 bytes from 10.0.0.1:1 (and 299 more like it in the 300 s before)",
        "closed after 9 bytes from 10.0.0.2:1 (and 299 more like it in the 300 s before)",
    ]
