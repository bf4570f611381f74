"""idempotency keys for the API's replays (reprocess and resend)

Revision ID: idempotency_0001
Revises: 0001
Create Date: 2026-12-01

A client that retries a replay (a timeout, a network blip) sent every delivery again. A
replay sent with an ``Idempotency-Key`` header now keeps its answer here, per actor and
key, so the retry gets that answer and nothing is replayed twice (router/api/idempotency.py).
Rows go with retention once a day old (router/store/idempotency.py).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import router.store.schema

revision = "idempotency_0001"
down_revision = "0001"
branch_labels = ("idempotency",)
depends_on = None

_TIME = router.store.schema.UtcDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "idempotency_keys",
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("route", sa.String(length=255), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("status", sa.Integer(), nullable=True),
        sa.Column("answer", sa.Text(), nullable=True),
        sa.Column("created_at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("actor", "key", name=op.f("pk_idempotency_keys")),
    )
    op.create_index(
        op.f("ix_idempotency_keys_created_at"), "idempotency_keys", ["created_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_idempotency_keys_created_at"), table_name="idempotency_keys")
    op.drop_table("idempotency_keys")
