"""The MESH source: polls a mailbox, stores each message, and only then acknowledges it.

One poller serves one mailbox for every channel it feeds; a channel takes the
messages whose workflow id it lists (or, with no list, the rest). Each message
is streamed into the store (large ones into the blob store, so memory is
bounded by the chunk size), committed, and then acknowledged on MESH
(DESIGN.md §3.1). A message already stored (the acknowledgement was lost, or
the engine died between commit and acknowledgement) is only acknowledged
again, so it is processed once. A REPORT (non-delivery report) fails the
delivery it names through ``Mex-LinkedMsgID``; one whose delivery the store no longer
has (retention removed it) is offered to ``on_unknown_report``, else kept as an error.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from mesh_client import MeshClient, Message
from sqlalchemy import Connection, select, update

from router import metrics
from router.config import ChannelConfig
from router.config.mesh import MeshMailbox
from router.connectors.mesh.client import open_client
from router.repeat_log import RepeatLog
from router.store.database import Store
from router.store.deliveries import OnFailed
from router.store.inbound import Inbound, Receipt, utcnow, write_inbound
from router.store.leader import leader
from router.store.schema import attempts, correlations, deliveries, mesh_sent, messages

log = logging.getLogger(__name__)
# Told, in the transaction that stores it, of a report (its source metadata, its reason)
# about a MESH message no stored delivery sent: tie did not send it, or retention removed its
# delivery. What claims it says what it belongs to, as a correlation key and value.
OnUnknownReport = Callable[[Connection, dict[str, Any], str], tuple[str, str] | None]
# Long enough that a message MESH offers again (it keeps unacknowledged ones 5 days) is known.
REDELIVERY_WINDOW = 30 * 86400.0
METADATA = {
    "sender": "from",
    "recipient": "to",
    "workflow_id": "workflowid",
    "filename": "filename",
    "local_id": "localid",
    "subject": "subject",
    "mesh_message_id": "messageid",
    "message_type": "messagetype",
    "content_type": "content-type",
}


class MailboxPoller:
    """Polls one mailbox on behalf of the channels it feeds (``channels``, in config order)."""

    def __init__(
        self,
        name: str,
        mailbox: MeshMailbox,
        channels: list[ChannelConfig],
        store: Store,
        submit: Callable[[Inbound], Receipt],
        on_failed: OnFailed | None = None,
        on_unknown_report: OnUnknownReport | None = None,
    ) -> None:
        self.name = name
        self._on_failed = on_failed
        self._on_unknown_report = on_unknown_report
        self.mailbox = mailbox
        self.channels = channels
        polls = [c.source.mesh for c in channels if c.source.mesh is not None]
        self.interval = min(p.interval for p in polls)
        self.handshake_every = min(p.handshake_every for p in polls)
        self._page_size = min(p.page_size for p in polls)
        self._store = store
        self._submit = submit
        self._stopping = threading.Event()
        self._running = threading.Lock()
        self.last_handshake: Exception | bool | None = None
        self._failed_polls = 0
        self._repeats = RepeatLog(log)

    def stop(self) -> None:
        """Finish the message in hand and take no more."""
        self._stopping.set()

    def handshake(self) -> bool:
        """Tell MESH this client is alive (on start and daily, as MESH asks)."""
        try:
            with self._client() as client:
                client.handshake()
        except Exception as exc:
            log.error("MESH handshake for mailbox %s failed: %s", self.mailbox.mailbox, exc)
            self.last_handshake = exc
            return False
        self.last_handshake = True
        return True

    def poll(self) -> int:
        """One pass over the inbox (every page); returns how many messages were taken."""
        if not self._running.acquire(blocking=False):
            return 0
        try:
            # On PostgreSQL one node polls a mailbox at a time (DESIGN.md §9).
            lock = f"tie-mesh:{self.mailbox.url}:{self.mailbox.mailbox}"
            with leader(self._store, lock) as leading:
                if not leading:
                    return 0
                with self._client() as client:
                    taken = self._drain(client)
        except Exception as exc:
            self._poll_failed(exc)
            return 0
        finally:
            self._running.release()
        self._poll_worked()
        return taken

    def _poll_failed(self, exc: Exception) -> None:
        """Counted in ``tie_mesh_poll_failures_total``; the first of a run is logged with
        its traceback, the next ones briefly every few minutes (a poll a minute for hours
        of a refused certificate was a traceback each)."""
        mailbox = self.mailbox.mailbox
        metrics.MESH_POLL_FAILURES.labels(mailbox).inc()
        self._failed_polls += 1
        if self._failed_polls == 1:
            log.error(
                "MESH poll of mailbox %s failed; next poll retries (further failures are "
                "counted until a poll works)",
                mailbox,
                exc_info=exc,
            )
        else:
            self._repeats.warning(
                "poll",
                "MESH poll of mailbox %s failed again (%d in a row): %s",
                mailbox,
                self._failed_polls,
                f"{type(exc).__name__}: {exc}",
            )

    def _poll_worked(self) -> None:
        if self._failed_polls:
            log.info(
                "MESH poll of mailbox %s works again after %d failed poll(s)",
                self.mailbox.mailbox,
                self._failed_polls,
            )
            self._failed_polls = 0

    def _drain(self, client: MeshClient) -> int:
        taken = 0
        for mesh_id in client.iterate_message_ids(batch_size=self._page_size):
            if self._stopping.is_set():
                break
            try:
                taken += self._take(client, mesh_id)
            except Exception:
                log.exception("MESH message %s not taken; next poll retries", mesh_id)
        return taken

    def _take(self, client: MeshClient, mesh_id: str) -> int:
        if self._already_stored(mesh_id):
            client.acknowledge_message(mesh_id)
            log.info("MESH message %s was stored before: acknowledged again", mesh_id)
            return 0
        message = client.retrieve_message(mesh_id)
        try:
            meta = _metadata(message)
            if meta.get("message_type") == "REPORT":
                self._report(mesh_id, meta, message)
            else:
                channel = self._channel_for(meta.get("workflow_id"))
                if channel is None:
                    log.warning(
                        "MESH message %s (workflow %s) is for no channel: left in the inbox",
                        mesh_id,
                        meta.get("workflow_id"),
                    )
                    return 0
                self._store_data(channel, mesh_id, meta, message)
        finally:
            message.close()
        client.acknowledge_message(mesh_id)
        return 1

    def _store_data(
        self, channel: ChannelConfig, mesh_id: str, meta: dict[str, Any], message: Message
    ) -> None:
        with self._store.blobs.spool() as spool:
            spool.copy_from(message)
            payload = spool.finish()
        self._submit(
            Inbound(
                channel.name,
                payload,
                content_type=meta.get("content_type") or "application/octet-stream",
                message_type=meta.get("workflow_id"),
                control_id=mesh_id,
                sender=f"MESH/{meta.get('sender') or ''}",
                source=meta,
                idempotency_window=REDELIVERY_WINDOW,
            )
        )

    def _report(self, mesh_id: str, meta: dict[str, Any], message: Message) -> None:
        """Fail the delivery the report is about, and keep the report as a settled message."""
        linked = (message.mex_header("linkedmsgid") or "").upper()
        code = message.mex_header("statuscode") or ""
        description = message.mex_header("statusdescription") or ""
        meta.update(linked_message_id=linked, status_code=code, status_description=description)
        reason = f"MESH non-delivery report {code}: {description}".strip()
        now = utcnow()
        with self._store.begin() as conn:
            target = conn.execute(
                select(deliveries.c.id, deliveries.c.channel, deliveries.c.attempts)
                .join(mesh_sent, mesh_sent.c.delivery_id == deliveries.c.id)
                .where(mesh_sent.c.mesh_message_id == linked)
            ).first()
            claimed = None
            if target is None:
                channel, status = self.channels[0].name, "error"
                what = f"MESH message {linked}" + (
                    f" (local id {meta['local_id']})" if meta.get("local_id") else ""
                )
                if self._on_unknown_report is not None:
                    claimed = self._on_unknown_report(conn, meta, reason)
                if claimed is None:
                    error = (
                        f"non-delivery report for {what}, which no delivery in the store sent:"
                        " tie did not send it, or retention has removed its delivery (and any"
                        f" job it names): {reason}"
                    )
                else:
                    status = "filtered"
                    error = (
                        f"non-delivery report for {what} of {claimed[0]} {claimed[1]}, whose"
                        f" delivery retention removed: {reason}"
                    )
            else:
                channel, status = target.channel, "filtered"
                error = f"non-delivery report for delivery {target.id}: {reason}"
                _fail_delivery(conn, target, reason, json.dumps(meta).encode(), now)
                if self._on_failed is not None:
                    self._on_failed(conn, target.channel, [target.id])
            report = Inbound(
                channel,
                json.dumps(meta).encode(),
                content_type="application/json",
                message_type="REPORT",
                control_id=mesh_id,
                sender="MESH/REPORT",
                source=meta,
                status=status,
                error=error,
            )
            write_inbound(conn, [report])
            if claimed is not None:
                stored = conn.scalar(select(messages.c.id).where(messages.c.uuid == report.uuid))
                conn.execute(
                    correlations.insert().values(
                        message_id=stored, key=claimed[0], value=claimed[1]
                    )
                )
        log.warning("MESH %s", error)

    def _channel_for(self, workflow_id: str | None) -> ChannelConfig | None:
        for channel in self.channels:
            assert channel.source.mesh is not None
            if workflow_id and workflow_id in channel.source.mesh.workflows:
                return channel
        return next((c for c in self.channels if not c.source.mesh.workflows), None)  # type: ignore[union-attr]

    def _already_stored(self, mesh_id: str) -> bool:
        names = [c.name for c in self.channels]
        with self._store.read() as conn:
            found = conn.scalar(
                select(messages.c.id)
                .where(messages.c.control_id == mesh_id, messages.c.channel.in_(names))
                .limit(1)
            )
        if found is not None:
            return True
        with self._store.read() as conn:
            return (
                conn.scalar(
                    select(messages.c.id)
                    .where(messages.c.control_id == mesh_id, messages.c.message_type == "REPORT")
                    .limit(1)
                )
                is not None
            )

    @contextmanager
    def _client(self) -> Iterator[MeshClient]:
        client = open_client(self.mailbox)
        try:
            yield client
        finally:
            client.close()


def _fail_delivery(conn: Any, target: Any, reason: str, answer: bytes, now: Any) -> None:
    number = target.attempts + 1
    conn.execute(
        attempts.insert().values(
            delivery_id=target.id,
            number=number,
            started_at=now,
            duration_ms=0.0,
            outcome="failed",
            response=answer,
            error=reason,
        )
    )
    conn.execute(
        update(deliveries)
        .where(deliveries.c.id == target.id)
        .values(
            status="failed",
            attempts=number,
            last_error=reason,
            lease_until=None,
            lease_owner=None,
            updated_at=now,
        )
    )


def _metadata(message: Message) -> dict[str, Any]:
    """The MESH headers kept with the message (DESIGN: source metadata)."""
    meta: dict[str, Any] = {"protocol": "mesh"}
    for key, header in METADATA.items():
        value = message.mex_header(header)
        if value:
            meta[key] = value
    if "content_type" not in meta and message.content_type:
        meta["content_type"] = message.content_type
    return meta
