"""channel revisions, hold batches and their approvals; held deliveries' batch and labels

Revision ID: governance_0001
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import router.store.schema

revision = "governance_0001"
down_revision = "0001"
branch_labels = ("governance",)
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TIME = router.store.schema.UtcDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "channel_revisions",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("channel", sa.String(length=64), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("yaml", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("author", sa.String(length=128), nullable=False),
        sa.Column("proposed_at", _TIME, nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("approver", sa.String(length=128), nullable=True),
        sa.Column("approved_at", _TIME, nullable=True),
        sa.Column("deployed_at", _TIME, nullable=True),
        sa.Column("reason", sa.Text(), server_default="", nullable=False),
        sa.Column("based_on", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_channel_revisions")),
        sa.UniqueConstraint("channel", "number", name=op.f("uq_channel_revisions_channel_number")),
    )
    op.create_index(
        op.f("ix_channel_revisions_state_channel"),
        "channel_revisions",
        ["state", "channel"],
        unique=False,
    )
    op.create_table(
        "hold_batches",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("channel", sa.String(length=64), nullable=False),
        sa.Column("destination", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("required", sa.Integer(), nullable=False),
        sa.Column("deliveries", sa.Integer(), nullable=False),
        sa.Column("channel_owner", sa.String(length=128), nullable=True),
        sa.Column("requested_by", sa.String(length=128), nullable=False),
        sa.Column("requested_at", _TIME, nullable=False),
        sa.Column("decided_at", _TIME, nullable=True),
        sa.Column("decided_by", sa.String(length=128), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hold_batches")),
    )
    op.create_index(
        op.f("ix_hold_batches_state_channel"), "hold_batches", ["state", "channel"], unique=False
    )
    op.create_table(
        "hold_approvals",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("batch_id", _ID, nullable=False),
        sa.Column("approver", sa.String(length=128), nullable=False),
        sa.Column("approved_at", _TIME, nullable=False),
        sa.ForeignKeyConstraint(
            ["batch_id"],
            ["hold_batches.id"],
            name=op.f("fk_hold_approvals_batch_id_hold_batches"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hold_approvals")),
        sa.UniqueConstraint(
            "batch_id", "approver", name=op.f("uq_hold_approvals_batch_id_approver")
        ),
    )
    with op.batch_alter_table("deliveries") as batch_op:
        batch_op.add_column(sa.Column("hold_batch_id", _ID, nullable=True))
        batch_op.add_column(sa.Column("hold_labels", sa.Text(), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_deliveries_hold_batch_id"), ["hold_batch_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("deliveries") as batch_op:
        batch_op.drop_index(batch_op.f("ix_deliveries_hold_batch_id"))
        batch_op.drop_column("hold_labels")
        batch_op.drop_column("hold_batch_id")
    op.drop_table("hold_approvals")
    op.drop_table("hold_batches")
    op.drop_table("channel_revisions")
