"""Message flags (e.g. a result with no known order)

Revision ID: pathology_0001
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "pathology_0001"
down_revision = "0001"
branch_labels = ("pathology",)
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "message_flags",
        sa.Column("flag", sa.String(length=32), nullable=False),
        sa.Column("message_id", Id, nullable=False),
        sa.ForeignKeyConstraint(
            ["message_id"], ["messages.id"], name=op.f("fk_message_flags_message_id_messages")
        ),
        sa.PrimaryKeyConstraint("flag", "message_id", name=op.f("pk_message_flags")),
    )
    with op.batch_alter_table("message_flags") as batch_op:
        batch_op.create_index(
            batch_op.f("ix_message_flags_message_id"), ["message_id"], unique=False
        )


def downgrade() -> None:
    op.drop_table("message_flags")
