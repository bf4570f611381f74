"""endpoint directory, ServiceRequest registry, delivery addresses

Revision ID: fhir_0001
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import router.store.schema

revision = "fhir_0001"
down_revision = "0001"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "endpoints",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("identifier", sa.String(length=64), nullable=False),
        sa.Column("interaction", sa.String(length=255), nullable=False),
        sa.Column("transport", sa.String(length=8), nullable=False),
        sa.Column("address", sa.String(length=1024), nullable=False),
        sa.Column("scope", sa.String(length=16), server_default="addressed", nullable=False),
        sa.Column("name", sa.String(length=255), server_default="", nullable=False),
        sa.Column("origin", sa.String(length=16), nullable=False),
        sa.Column("updated_at", router.store.schema.UtcDateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_endpoints")),
        sa.UniqueConstraint(
            "kind",
            "identifier",
            "interaction",
            "transport",
            name=op.f("uq_endpoints_kind_identifier_interaction_transport"),
        ),
    )
    with op.batch_alter_table("endpoints") as batch_op:
        batch_op.create_index(
            batch_op.f("ix_endpoints_interaction_scope"), ["interaction", "scope"], unique=False
        )

    op.create_table(
        "service_requests",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("channel", sa.String(length=64), nullable=False),
        sa.Column("resource_id", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=32), server_default="", nullable=False),
        sa.Column("patient", sa.String(length=64), server_default="", nullable=False),
        sa.Column("sender", sa.String(length=255), server_default="", nullable=False),
        sa.Column("receiver", sa.String(length=255), server_default="", nullable=False),
        sa.Column("message_id", _ID, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("updated_at", router.store.schema.UtcDateTime(timezone=True), nullable=False),
        sa.Column("resource", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["message_id"], ["messages.id"], name=op.f("fk_service_requests_message_id_messages")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_service_requests")),
        sa.UniqueConstraint(
            "channel", "resource_id", name=op.f("uq_service_requests_channel_resource_id")
        ),
    )
    with op.batch_alter_table("service_requests") as batch_op:
        batch_op.create_index(batch_op.f("ix_service_requests_patient"), ["patient"], unique=False)
        batch_op.create_index(batch_op.f("ix_service_requests_status"), ["status"], unique=False)

    op.create_table(
        "service_request_identifiers",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("request_id", _ID, nullable=False),
        sa.Column("system", sa.String(length=255), server_default="", nullable=False),
        sa.Column("value", sa.String(length=255), nullable=False),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["service_requests.id"],
            name=op.f("fk_service_request_identifiers_request_id_service_requests"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_service_request_identifiers")),
        sa.UniqueConstraint(
            "request_id",
            "system",
            "value",
            name=op.f("uq_service_request_identifiers_request_id_system_value"),
        ),
    )
    with op.batch_alter_table("service_request_identifiers") as batch_op:
        batch_op.create_index(
            batch_op.f("ix_service_request_identifiers_value"), ["value"], unique=False
        )

    with op.batch_alter_table("deliveries") as batch_op:
        batch_op.add_column(sa.Column("address", sa.String(length=1024), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deliveries") as batch_op:
        batch_op.drop_column("address")
    op.drop_table("service_request_identifiers")
    op.drop_table("service_requests")
    op.drop_table("endpoints")
