"""A FHIR source while the store cannot commit or be read: every request is answered 503,
and the log has one line for the channel, not one a request (router/repeat_log.py)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import psycopg
import pytest
from sqlalchemy.exc import OperationalError

from router.config.http import HttpSource
from router.fhir.intake import FhirIntake, FhirRequest
from router.fhir.outcome import Rejected
from router.fhir.senders import Senders
from router.store.database import StoreUnavailable

REQUESTS = 40


class _Validators:
    """Models that always pass (the store is what this is about)."""

    async def start(self) -> None:
        return None

    async def validate(self, body: bytes, version: str) -> None:
        return None


async def _store_down(item: Any) -> Any:
    raise StoreUnavailable("store unavailable: the group-commit writer stopped")


def _request(number: int) -> FhirRequest:
    return FhirRequest(
        channel="referrals",
        source=HttpSource(auth="none"),
        operation="create",
        body=b'{"resourceType": "Patient", "id": "p%d"}' % number,
        headers={},
        remote=f"10.0.0.5:{40000 + number}",
        path="/fhir/referrals/Patient",
        resource_type="Patient",
    )


def _errors(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger and r.levelno >= 40]


def test_requests_refused_while_the_store_cannot_commit_are_logged_once(caplog):
    intake = FhirIntake(_store_down, None, _Validators(), release=None)  # type: ignore[arg-type]

    async def send_all() -> list[int]:
        return [(await intake.accept(_request(n))).status for n in range(REQUESTS)]

    with caplog.at_level(logging.INFO):
        statuses = asyncio.run(send_all())
    assert statuses == [503] * REQUESTS
    assert _errors(caplog, "router.fhir.intake") == [
        "channel referrals: answering 503 to 10.0.0.5:40000: store unavailable: the "
        "group-commit writer stopped (the next ones while it lasts are counted)"
    ]


class _UnreachableStore:
    def read(self) -> Any:
        refused = psycopg.OperationalError("connection failed: Connection refused")
        raise OperationalError("SELECT 1", {}, refused)


def test_tokens_that_cannot_be_checked_while_the_store_is_down_are_logged_once(caplog):
    senders = Senders(_UnreachableStore())  # type: ignore[arg-type]

    async def check_all() -> list[int]:
        statuses = []
        for n in range(REQUESTS):
            try:
                await senders.check(f"Bearer tie_{n}", "referrals", HttpSource(), peer="10.0.0.5:1")
            except Rejected as exc:
                statuses.append(exc.status)
        return statuses

    with caplog.at_level(logging.INFO):
        statuses = asyncio.run(check_all())
    assert statuses == [503] * REQUESTS
    assert _errors(caplog, "router.fhir.senders") == [
        "channel referrals: answering 503: a sender's token could not be checked: store "
        "unavailable: OperationalError: connection failed: Connection refused (the next ones "
        "while it lasts are counted)"
    ]
