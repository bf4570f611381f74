"""An index of the messages still ``received``, by channel (SQLite only).

Revision ID: messages_0002
Revises: messages_0001
Create Date: 2026-11-30

A message settled on receipt must not overtake older messages of its channel that are
still ``received`` (a resumed channel's backlog, a payload too large to decide on
receipt): the group-commit writer asks, in every commit, whether its channels have any.
This index answers that with one seek, however large another channel's backlog. Only
SQLite settles on receipt, so PostgreSQL does not pay for the index on every insert.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "messages_0002"
down_revision = "messages_0001"
branch_labels = None
depends_on = None

_RECEIVED = sa.text("status = 'received'")


def upgrade() -> None:
    if op.get_context().dialect.name == "sqlite":
        op.create_index(
            "ix_messages_received_by_channel",
            "messages",
            ["channel", "id"],
            sqlite_where=_RECEIVED,
        )


def downgrade() -> None:
    if op.get_context().dialect.name == "sqlite":
        op.drop_index("ix_messages_received_by_channel", table_name="messages")
