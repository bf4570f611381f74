"""Tables of the message store. Alembic migrations in ``migrations/`` must match this.

Times are UTC. ``messages.id`` is the receive order; ``messages.uuid`` is the
public identity (``urn:tie:message:<uuid>``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
    text,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

Id = BigInteger().with_variant(Integer, "sqlite")
# A payload's size in bytes: MESH files reach 20 GB (SQLite's INTEGER is 64-bit already).
ByteCount = BigInteger().with_variant(Integer, "sqlite")
# A blob's sha256 (hex); the row's inline bytes are then empty (router/store/blobs.py).
BlobHash = String(64)


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in Python; timestamptz on PostgreSQL, UTC text on SQLite."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use UTC-aware datetimes")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


PENDING = ("queued", "sending", "retrying")
HELD = "held"  # awaiting release approval (router/governance/holds.py); never claimed

messages = Table(
    "messages",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("uuid", String(36), nullable=False, unique=True),
    Column("channel", String(64), nullable=False),
    Column("received_at", UtcDateTime(), nullable=False),
    Column("status", String(16), nullable=False),
    Column("content_type", String(64), nullable=False),
    Column("message_type", String(64)),
    Column("control_id", String(199)),
    Column("sender", String(255)),
    Column("size", ByteCount, nullable=False),
    Column("raw", LargeBinary, nullable=False),
    Column("blob_sha256", BlobHash),
    Column("source", Text),
    Column("ack", LargeBinary),
    Column("error", Text),
    Column("processed_at", UtcDateTime()),
    Column("reprocessed_from", Id, ForeignKey("messages.id")),
    Column("duplicate_of", Id, ForeignKey("messages.id")),
    Column("origin_delivery_id", Id),
    # The channel revision (channel_revisions.number) whose pipeline settled the message:
    # which configuration, and so which mapping code, made its outcome (null: not yet, or
    # settled before revisions were recorded on messages).
    Column("revision", Integer),
    Index(None, "channel", "status", "received_at"),
    Index(None, "received_at"),
    # MSH-10 first: one index serves the search by control id and the idempotent
    # receiver's lookup (channel, sender and control id), one entry a message fewer.
    Index(None, "control_id", "channel", "sender"),
    # Bytewise on PostgreSQL, so that a LIKE prefix (``--type ORU``: ``ORU^%``) can use it
    # whatever the database's collation (migration search_0001).
    Index(None, "message_type", "received_at", postgresql_ops={"message_type": "text_pattern_ops"}),
    # Only messages fed by another channel's delivery have one.
    Index(
        "ix_messages_origin_delivery_id",
        "origin_delivery_id",
        sqlite_where=text("origin_delivery_id IS NOT NULL"),
        postgresql_where=text("origin_delivery_id IS NOT NULL"),
    ),
    # Newest first by one status or one channel (API and console searches, cursor by id).
    Index(None, "status", "id"),
    Index(None, "channel", "id"),
    Index(
        "ix_messages_blob_sha256",
        "blob_sha256",
        sqlite_where=text("blob_sha256 IS NOT NULL"),
        postgresql_where=text("blob_sha256 IS NOT NULL"),
    ),
    # The links to an earlier message, for the foreign keys' and retention's question "does
    # any row still name it?" when one is removed (migration retention_0002).
    Index(
        "ix_messages_reprocessed_from",
        "reprocessed_from",
        sqlite_where=text("reprocessed_from IS NOT NULL"),
        postgresql_where=text("reprocessed_from IS NOT NULL"),
    ),
    Index(
        "ix_messages_duplicate_of",
        "duplicate_of",
        sqlite_where=text("duplicate_of IS NOT NULL"),
        postgresql_where=text("duplicate_of IS NOT NULL"),
    ),
    Index(
        "ix_messages_unprocessed",
        "id",
        sqlite_where=text("status = 'received'"),
        postgresql_where=text("status = 'received'"),
    ),
    # SQLite only (SQLITE_ONLY_INDEXES): the writer's check that a channel has no message
    # still waiting before it settles a new one on receipt (router.store.settled).
    Index(
        "ix_messages_received_by_channel",
        "channel",
        "id",
        sqlite_where=text("status = 'received'"),
    ).ddl_if(dialect="sqlite"),
)
SQLITE_ONLY_INDEXES = frozenset({"ix_messages_received_by_channel"})

deliveries = Table(
    "deliveries",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("message_id", Id, ForeignKey("messages.id"), nullable=False),
    Column("channel", String(64), nullable=False),
    Column("destination", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("content_type", String(64), nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("blob_sha256", BlobHash),
    Column("blob_size", ByteCount),
    Column("headers", Text),
    Column("ordering_key", String(255), nullable=False, server_default=""),
    Column("idempotency_key", String(255)),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", UtcDateTime(), nullable=False),
    Column("lease_until", UtcDateTime()),
    Column("lease_owner", String(128)),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
    Column("last_error", Text),
    Column("resent_from", Id, ForeignKey("deliveries.id")),
    # Where this delivery goes when its destination looks the address up in the directory.
    Column("address", String(1024)),
    # A held delivery (DESIGN.md §4) joins a hold batch when its release is requested; the
    # destination's summary mapping labels it (JSON) for the batch's summary.
    Column("hold_batch_id", Id),
    Column("hold_labels", Text),
    Index(None, "message_id"),
    Index(None, "hold_batch_id"),
    Index(None, "channel", "status", "updated_at"),
    Index(
        "ix_deliveries_blob_sha256",
        "blob_sha256",
        sqlite_where=text("blob_sha256 IS NOT NULL"),
        postgresql_where=text("blob_sha256 IS NOT NULL"),
    ),
    Index(
        "ix_deliveries_resent_from",
        "resent_from",
        sqlite_where=text("resent_from IS NOT NULL"),
        postgresql_where=text("resent_from IS NOT NULL"),
    ),
    # The failed deliveries still waiting for a resend, counted per destination by
    # /metrics (router/store/queues.py): a few among every delivery ever made.
    Index(
        "ix_deliveries_failed",
        "channel",
        "destination",
        sqlite_where=text("status = 'failed'"),
        postgresql_where=text("status = 'failed'"),
    ),
    Index(
        "ix_deliveries_pending",
        "channel",
        "destination",
        "ordering_key",
        "id",
        sqlite_where=text("status IN ('queued', 'sending', 'retrying')"),
        postgresql_where=text("status IN ('queued', 'sending', 'retrying')"),
    ),
)

attempts = Table(
    "attempts",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("delivery_id", Id, ForeignKey("deliveries.id"), nullable=False),
    Column("number", Integer, nullable=False),
    Column("started_at", UtcDateTime(), nullable=False),
    Column("duration_ms", Float, nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("response", LargeBinary),
    Column("error", Text),
    Index(None, "delivery_id"),
)

correlations = Table(
    "correlations",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("message_id", Id, ForeignKey("messages.id"), nullable=False),
    Column("key", String(64), nullable=False),
    Column("value", String(255), nullable=False),
    UniqueConstraint("message_id", "key", "value"),
    Index(None, "value"),
)

# Flags processing set on a message (e.g. ``unmatched-order``: a result whose placer order
# number no order carries). The key (flag, message_id) serves ``--flag`` searches.
message_flags = Table(
    "message_flags",
    metadata,
    Column("flag", String(32), primary_key=True),
    Column("message_id", Id, ForeignKey("messages.id"), primary_key=True),
    Index(None, "message_id"),
)

audit_events = Table(
    "audit_events",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("at", UtcDateTime(), nullable=False),
    Column("actor", String(128), nullable=False),
    Column("action", String(64), nullable=False),
    Column("target", String(255), nullable=False),
    Column("details", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    Index(None, "target"),
    Index(None, "at"),
)

channel_state = Table(
    "channel_state",
    metadata,
    Column("channel", String(64), primary_key=True),
    Column("paused", Boolean, nullable=False, server_default=false()),
    Column("updated_at", UtcDateTime(), nullable=False),
    Column("updated_by", String(128), nullable=False),
)

# MESH messages this engine sent: a non-delivery report names one (Mex-LinkedMsgID).
mesh_sent = Table(
    "mesh_sent",
    metadata,
    Column("mesh_message_id", String(100), primary_key=True),
    Column("delivery_id", Id, ForeignKey("deliveries.id"), nullable=False),
    Column("mailbox", String(64), nullable=False),
    Column("recipient", String(64), nullable=False),
    Column("sent_at", UtcDateTime(), nullable=False),
    Index(None, "delivery_id"),
)

# The endpoint directory (router/directory/): an organisation (ODS code), a service (DoS id)
# or a system (ASID), with an interaction, maps to an endpoint of one transport.
endpoints = Table(
    "endpoints",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("kind", String(8), nullable=False),
    Column("identifier", String(64), nullable=False),
    Column("interaction", String(255), nullable=False),
    Column("transport", String(8), nullable=False),
    Column("address", String(1024), nullable=False),
    Column("scope", String(16), nullable=False, server_default="addressed"),
    Column("name", String(255), nullable=False, server_default=""),
    Column("origin", String(16), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
    Column("updated_by", String(128), nullable=False),
    UniqueConstraint("kind", "identifier", "interaction", "transport"),
    Index(None, "interaction", "scope"),
)

# The ServiceRequest registry (router/fhir/registry.py): the latest version of every
# ServiceRequest seen in a routed BaRS message, with the identifiers it can be found by.
service_requests = Table(
    "service_requests",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("channel", String(64), nullable=False),
    Column("resource_id", String(64), nullable=False),
    Column("status", String(32), nullable=False, server_default=""),
    Column("patient", String(64), nullable=False, server_default=""),
    Column("sender", String(255), nullable=False, server_default=""),
    Column("receiver", String(255), nullable=False, server_default=""),
    Column("message_id", Id, ForeignKey("messages.id"), nullable=False),
    Column("version", Integer, nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
    Column("resource", Text, nullable=False),
    UniqueConstraint("channel", "resource_id"),
    Index(None, "message_id"),
    Index(None, "patient"),
    Index(None, "status"),
)

service_request_identifiers = Table(
    "service_request_identifiers",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("request_id", Id, ForeignKey("service_requests.id"), nullable=False),
    Column("system", String(255), nullable=False, server_default=""),
    Column("value", String(255), nullable=False),
    UniqueConstraint("request_id", "system", "value"),
    Index(None, "value"),
)

# DPS handoff jobs: one a GP extract, keyed by the intake message's UUID (router/dps/jobs.py).
# A job in any other status is still in progress (router/dps/jobs.py FINAL).
JOB_FINAL = ("completed", "failed_validation", "failed_dps_validation", "closed")
JOB_KEY = "dps_job"  # the correlation key of a job's messages: the job id
jobs = Table(
    "jobs",
    metadata,
    Column("job_id", String(36), primary_key=True),
    Column("practice", String(16)),
    Column("filename", String(255)),
    Column("received_at", UtcDateTime()),
    Column("status", String(32), nullable=False),
    Column("statistics", Text),
    Column("error", Text),
    # The job's outputs that failed for good, whatever its status (JSON; router/dps/jobs.py).
    Column("undelivered", Text),
    # Closed by support (router/dps/closing.py): the status it had, who, when and why.
    Column("closed_from", String(32)),
    Column("closed_by", String(255)),
    Column("closed_at", UtcDateTime()),
    Column("close_reason", Text),
    Column("updated_at", UtcDateTime(), nullable=False),
    Index(None, "status", "received_at"),
    Index(None, "practice"),
)

# Users, API tokens and console sessions (router/auth/). Roles are a space-separated set;
# a password, token or session is kept only as its hash (argon2 / sha256).
users = Table(
    "users",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("roles", String(255), nullable=False),
    Column("password_hash", String(255)),
    Column("disabled", Boolean, nullable=False, server_default=false()),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("created_by", String(128), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
    # Who last set the password (the user, or the admin who reset it); NULL: not known.
    Column("password_set_by", String(128)),
    # When a console session last began (router/auth/sessions.py); NULL: never.
    Column("last_sign_in_at", UtcDateTime()),
)

api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("user_id", Id, ForeignKey("users.id"), nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("roles", String(255), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("created_by", String(128), nullable=False),  # the issuer (of the rotation)
    Column("expires_at", UtcDateTime()),
    Column("revoked_at", UtcDateTime()),
    Column("revoked_by", String(128)),
    # When a request last presented it, to the minute (router/auth/token_use.py).
    Column("last_used_at", UtcDateTime()),
    # What the admin called it, to tell one user's tokens apart (router/auth/tokens.py).
    Column("label", String(64)),
    Index(None, "user_id"),
)

sessions = Table(
    "sessions",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("user_id", Id, ForeignKey("users.id"), nullable=False),
    Column("csrf", String(64), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("last_seen_at", UtcDateTime(), nullable=False),
    Column("expires_at", UtcDateTime(), nullable=False),
    # users.password_set_by when the session began: a later reset does not change it.
    Column("password_set_by", String(128)),
    Index(None, "user_id"),
    Index(None, "expires_at"),
)

# Idempotency keys of the API's replays (router/store/idempotency.py): a caller's retry of
# the same request, with the same key, is answered from here instead of replayed again.
# ``status`` is NULL while the first request is still being answered.
idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("actor", String(128), primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("route", String(255), nullable=False),
    Column("request_hash", String(64), nullable=False),
    Column("status", Integer),
    Column("answer", Text),
    Column("created_at", UtcDateTime(), nullable=False),
    Index(None, "created_at"),
)

# Console forms sent once (router/console/form_once.py): each form's one-time nonce, when
# it was first sent and where its answer led, so a second sending shows that, never acts.
form_submissions = Table(
    "form_submissions",
    metadata,
    Column("nonce", String(32), primary_key=True),
    Column("used_at", UtcDateTime(), nullable=False),
    Column("outcome", String(2000)),
    Index(None, "used_at"),
)

# Governance (router/governance/): every channel revision is kept, with its author and approver.
channel_revisions = Table(
    "channel_revisions",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("channel", String(64), nullable=False),
    Column("number", Integer, nullable=False),
    Column("yaml", Text, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("author", String(128), nullable=False),
    Column("proposed_at", UtcDateTime(), nullable=False),
    Column("state", String(16), nullable=False),
    Column("approver", String(128)),
    Column("approved_at", UtcDateTime()),
    Column("deployed_at", UtcDateTime()),
    Column("reason", Text, nullable=False, server_default=""),
    Column("based_on", Integer),
    # The mapping code the channel names, as JSON {path under the mappings folder: source},
    # and its digest (router/governance/mapping_code.py); null for a channel with none.
    Column("mappings", Text),
    Column("mappings_sha256", String(64)),
    UniqueConstraint("channel", "number"),
    Index(None, "state", "channel"),
)

# A held batch: the held deliveries of one destination present when someone asked for release.
# ``pending`` awaits approvals (router/governance/holds.py); these states are decided.
BATCH_DECIDED = ("released", "rejected")
hold_batches = Table(
    "hold_batches",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("channel", String(64), nullable=False),
    Column("destination", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("required", Integer, nullable=False),
    Column("deliveries", Integer, nullable=False),
    Column("channel_owner", String(128)),
    Column("requested_by", String(128), nullable=False),
    Column("requested_at", UtcDateTime(), nullable=False),
    Column("decided_at", UtcDateTime()),
    Column("decided_by", String(128)),
    Column("reason", Text),
    Index(None, "state", "channel"),
)

hold_approvals = Table(
    "hold_approvals",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("batch_id", Id, ForeignKey("hold_batches.id"), nullable=False),
    Column("approver", String(128), nullable=False),
    Column("approved_at", UtcDateTime(), nullable=False),
    UniqueConstraint("batch_id", "approver"),
)

# The engines running against the store (router/store/presence.py), one row each from start
# to stop. On PostgreSQL each refreshes ``seen_at`` (the server's clock) with its lock check,
# so that a restore is kept out in the seconds an engine whose lock session ended runs
# without it; on SQLite the rows name the engines holding the file's engine lock.
engine_presence = Table(
    "engine_presence",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started_at", UtcDateTime(), nullable=False),
    Column("seen_at", UtcDateTime(), nullable=False),
    # How long a sighting counts as the engine running (a few of its lock checks).
    Column("fresh_for", Float, nullable=False),
)
