"""The line a failed synchronous hop logs: where and why, never what it carried."""

from __future__ import annotations

import logging

import pytest

from router.fhir.hop_log import HopLog, origin


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "https://user:secret@provider.nhs.uk:8443/STU3/Slot?patient=9000000009",
            "https://provider.nhs.uk:8443",
        ),
        ("http://[::1]/fhir/$process-message", "http://[::1]"),
        ("https://receiver.example", "https://receiver.example"),
    ],
)
def test_the_origin_leaves_out_user_info_path_and_query(url: str, expected: str) -> None:
    assert origin(url) == expected


def test_a_flood_to_one_receiver_is_one_line_and_the_url_is_cut_to_its_origin(caplog) -> None:
    now = [0.0]
    hops = HopLog(logging.getLogger("hop-test"), every=300, clock=lambda: now[0])
    url = "https://provider.example/STU3/Patient/9000000009"
    with caplog.at_level(logging.WARNING, logger="hop-test"):
        for _ in range(3):
            hops.failed("proxy", "provider", url, "m-1", 502, f"broke off at {url}")
        hops.failed("proxy", "provider", "https://other.example/x", "m-2", 504, "slow")
        now[0] = 301.0
        hops.failed("proxy", "provider", url, "m-3", 502, "refused")
    assert [r.getMessage() for r in caplog.records] == [
        "proxy/provider: message m-1 not delivered to https://provider.example, the sender "
        "was answered 502 and repeats it if it will: broke off at https://provider.example",
        "proxy/provider: message m-2 not delivered to https://other.example, the sender "
        "was answered 504 and repeats it if it will: slow",
        "proxy/provider: message m-3 not delivered to https://provider.example, the sender "
        "was answered 502 and repeats it if it will: refused (and 2 more like it in the 301 s "
        "before)",
    ]
    assert all(r.levelname == "WARNING" for r in caplog.records)
