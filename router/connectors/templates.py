"""Templates of outgoing headers (MESH filename and subject, email subject and body).

A template is a ``str.format`` string. It can name the delivery's own fields
(``channel``, ``destination``, ``message_id``, ``message_uuid``, ``delivery_id``,
``idempotency_key``, ``now``), the received message's metadata (for a MESH
message: ``filename``, ``workflow_id``, ``sender``, ``local_id``, ``subject``,
``mesh_message_id``) and the headers a mapping gave the output, which win.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from router.connectors import Delivery
from router.store.database import Store
from router.store.schema import messages


class TemplateError(ValueError):
    """A template names a field the delivery does not have, or is malformed."""


def template_fields(store: Store, delivery: Delivery) -> dict[str, Any]:
    """Everything a template of ``delivery`` may name."""
    with store.read() as conn:
        source = conn.scalar(select(messages.c.source).where(messages.c.id == delivery.message_id))
    fields: dict[str, Any] = {
        k: v for k, v in (json.loads(source) if source else {}).items() if isinstance(v, str)
    }
    fields.update(delivery.headers or {})
    fields.update(
        channel=delivery.channel,
        destination=delivery.destination,
        message_id=delivery.message_id,
        message_uuid=delivery.message_uuid,
        delivery_id=delivery.id,
        idempotency_key=delivery.idempotency_key or delivery.message_uuid,
        now=datetime.now(UTC),
    )
    return fields


def render(template: str, fields: dict[str, Any]) -> str:
    try:
        return template.format_map(fields)
    except (KeyError, IndexError, AttributeError, ValueError) as exc:
        raise TemplateError(f"template {template!r}: {type(exc).__name__}: {exc}") from exc
