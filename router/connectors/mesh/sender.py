"""The MESH destination: sends a delivery's payload to a mailbox, chunked and streamed.

Headers (recipient, workflow id, filename, subject, local id) come from the
destination's templates; the content type is the payload's (a mapping's Output says it),
so a FHIR Bundle arrives as application/fhir+json, not MESH's application/octet-stream.
The MESH message id is kept with the attempt and in ``mesh_sent``, so a later
non-delivery report can fail this delivery. A 417 (e.g. code 12, unregistered
recipient) fails the delivery; transport errors and server errors retry.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import requests
from mesh_client import MeshClient, MeshError
from urllib3.exceptions import HTTPError as Urllib3Error

from router.config.mesh import MeshMailbox, MeshTarget, SecretUnavailable
from router.connectors import Delivery, SendResult, media_type
from router.connectors.mesh.client import open_client
from router.connectors.templates import TemplateError, render, template_fields
from router.store.database import Store
from router.store.inbound import utcnow
from router.store.schema import mesh_sent

log = logging.getLogger(__name__)


class MeshSender:
    def __init__(self, target: MeshTarget, mailbox: MeshMailbox, store: Store) -> None:
        self._target = target
        self._mailbox = mailbox
        self._store = store
        self._client: MeshClient | None = None
        self._secrets: tuple[str, str] | None = None  # those ``_client`` was opened with

    async def send(self, delivery: Delivery) -> SendResult:
        return await asyncio.to_thread(self._send, delivery)

    def _headers(self, delivery: Delivery) -> tuple[str, dict[str, Any]]:
        fields = template_fields(self._store, delivery)
        t = self._target
        optional = {
            "workflow_id": t.workflow_id,
            "filename": t.filename,
            "subject": t.subject,
            "local_id": t.local_id,
        }
        headers = {k: render(v, fields) for k, v in optional.items() if v is not None}
        headers["content_type"] = media_type(delivery.content_type)
        # A directory lookup resolved the recipient's mailbox when the message was processed.
        if delivery.address:
            return delivery.address.strip().upper(), headers
        if t.to is None:
            raise TemplateError("no recipient: the destination has no 'to' and no address")
        return render(t.to, fields).strip().upper(), headers

    def _send(self, delivery: Delivery) -> SendResult:
        try:
            to, headers = self._headers(delivery)
        except TemplateError as exc:
            return SendResult("fail", error=str(exc))
        body = delivery.body
        try:
            client = self._session()
            with body.open() as data:
                # A real file lets mesh-client size and split it without reading it whole.
                mesh_id = client.send_message(
                    to,
                    data if body.is_blob else body.inline,
                    compress=self._target.compress,
                    **headers,
                )
        except MeshError as exc:
            return _refused(exc)
        except SecretUnavailable as exc:
            return SendResult("retry", error=f"MESH mailbox {self._mailbox.mailbox}: {exc}")
        except requests.HTTPError as exc:
            self.close_now()
            status = exc.response.status_code if exc.response is not None else None
            return SendResult("retry", _body(exc.response), f"MESH HTTP {status}: {exc}")
        except (requests.RequestException, Urllib3Error, OSError) as exc:
            self.close_now()
            return SendResult("retry", error=f"MESH transport: {type(exc).__name__}: {exc}")
        self._remember(mesh_id, delivery, to)
        answer = {"mesh_message_id": mesh_id, "to": to, **headers}
        return SendResult("sent", json.dumps(answer).encode())

    def _session(self) -> MeshClient:
        """The open client, or a new one when a secret changed since it was opened: a
        rotated password or key is used from the next send on (docs/mesh.md)."""
        secrets = (self._mailbox.password.value(), self._mailbox.shared_key.value())
        if self._client is None or secrets != self._secrets:
            self.close_now()
            self._client = open_client(self._mailbox)
            self._secrets = secrets
        return self._client

    def _remember(self, mesh_id: str, delivery: Delivery, to: str) -> None:
        try:
            with self._store.begin() as conn:
                conn.execute(
                    mesh_sent.insert().values(
                        mesh_message_id=mesh_id,
                        delivery_id=delivery.id,
                        mailbox=self._mailbox.mailbox,
                        recipient=to,
                        sent_at=utcnow(),
                    )
                )
        except Exception:
            log.exception("MESH message %s sent for delivery %s not recorded", mesh_id, delivery.id)

    def close_now(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    async def close(self) -> None:
        self.close_now()


def _refused(exc: MeshError) -> SendResult:
    """MESH refused the message with a DTS error code (417, e.g. 12 unregistered recipient):
    sending it again would fail the same way. Anything else may be passing (auth, throttling).
    """
    detail = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], dict) else {}
    first = (detail.get("detail") or [{}])[0]  # API v2: {"detail": [{"event", "code", "msg"}]}
    code = str(detail.get("errorCode") or first.get("code") or "")
    text = detail.get("errorDescription") or first.get("msg") or (exc.args[0] if exc.args else "")
    answer = json.dumps(detail).encode() if detail else None
    if not code.isdigit():
        return SendResult("retry", answer, f"MESH refused: {text}")
    return SendResult("fail", answer, f"MESH refused (code {code}): {text}")


def _body(response: requests.Response | None) -> bytes | None:
    return response.content[:4096] if response is not None else None
