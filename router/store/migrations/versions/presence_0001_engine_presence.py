"""The engines running against the store, each with when it was last seen

Revision ID: presence_0001
Revises: 0001
Create Date: 2026-12-01

An engine whose PostgreSQL lock session ended (a server restart, a terminated backend) runs
without its engine lock until its next check takes it again; ``run.py db restore`` refuses
while any engine was seen more recently than its ``fresh_for`` (router/store/presence.py).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import router.store.schema

revision = "presence_0001"
down_revision = "0001"
branch_labels = ("presence",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "engine_presence",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", router.store.schema.UtcDateTime(timezone=True), nullable=False),
        sa.Column("seen_at", router.store.schema.UtcDateTime(timezone=True), nullable=False),
        sa.Column("fresh_for", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_engine_presence")),
    )


def downgrade() -> None:
    op.drop_table("engine_presence")
