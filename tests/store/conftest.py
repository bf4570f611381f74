"""Helpers for the store tests: small HL7 v2 messages, stored as a source would store them."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import select

from router.connectors.hl7_inbound import hl7_inbound
from router.store.database import Store
from router.store.inbound import write_inbound
from router.store.schema import messages


def _er7(control_id: str, *, patient: str = "P1", kind: str = "OML^O21", app: str = "EPR") -> bytes:
    return (
        f"MSH|^~\\&|{app}|HOSP|LAB|HOSP|20240101120000||{kind}|{control_id}|P|2.5.1\r"
        f"PID|1||{patient}^^^HOSP^MR||DOE^JANE\r"
        f"ORC|NW|{control_id}-PLACER\r"
    ).encode()


Receive = Callable[..., list[int]]


@pytest.fixture
def er7() -> Callable[..., bytes]:
    """``er7(control_id, patient=, kind=, app=)``: a minimal message (MSH-10, PID-3.1)."""
    return _er7


@pytest.fixture
def receive(store: Store) -> Receive:
    """``receive(channel, *raws)``: store messages as received, in order; returns their ids."""

    def _receive(channel: str, *raws: bytes) -> list[int]:
        items = [hl7_inbound(channel, raw) for raw in raws]
        with store.begin() as conn:
            write_inbound(conn, items)
            return list(
                conn.scalars(
                    select(messages.c.id)
                    .where(messages.c.uuid.in_([i.uuid for i in items]))
                    .order_by(messages.c.id)
                )
            )

    return _receive
