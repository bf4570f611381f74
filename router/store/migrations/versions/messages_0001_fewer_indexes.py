"""Two index entries fewer for each message stored.

Revision ID: messages_0001
Revises: 0001
Create Date: 2026-11-30

The search by control id and the idempotent receiver's lookup (channel, sender, control
id) share one index with the control id first; the index on ``origin_delivery_id`` keeps
only the messages that have one (those fed by another channel). Each index a commit
touches is a page more written and fsynced (docs/performance.md, tenth round).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "messages_0001"
down_revision = "0001"
branch_labels = ("messages",)
depends_on = None

_FED = sa.text("origin_delivery_id IS NOT NULL")


def upgrade() -> None:
    op.create_index(
        "ix_messages_control_id_channel_sender", "messages", ["control_id", "channel", "sender"]
    )
    op.drop_index("ix_messages_control_id", table_name="messages")
    op.drop_index("ix_messages_channel_sender_control_id", table_name="messages")
    op.drop_index("ix_messages_origin_delivery_id", table_name="messages")
    op.create_index(
        "ix_messages_origin_delivery_id",
        "messages",
        ["origin_delivery_id"],
        sqlite_where=_FED,
        postgresql_where=_FED,
    )


def downgrade() -> None:
    op.drop_index("ix_messages_origin_delivery_id", table_name="messages")
    op.create_index("ix_messages_origin_delivery_id", "messages", ["origin_delivery_id"])
    op.create_index(
        "ix_messages_channel_sender_control_id", "messages", ["channel", "sender", "control_id"]
    )
    op.create_index("ix_messages_control_id", "messages", ["control_id"])
    op.drop_index("ix_messages_control_id_channel_sender", table_name="messages")
