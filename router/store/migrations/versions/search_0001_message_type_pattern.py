"""The message type index compares bytewise on PostgreSQL (text_pattern_ops)

Revision ID: search_0001
Revises: messages_0002
Create Date: 2026-12-01

``--type ORU`` finds ``ORU`` and every type starting ``ORU^``: a LIKE prefix. PostgreSQL
serves a LIKE prefix from a btree only when the index compares bytewise, which a
database's default collation (C.UTF-8, en_GB.UTF-8, ICU) does not: so a type with few
or no messages read the whole messages table. An index with ``text_pattern_ops`` serves
both the prefix and the equality. SQLite's index is unchanged (its text compares bytewise).
"""

from __future__ import annotations

from alembic import op

revision = "search_0001"
down_revision = "messages_0002"
branch_labels = None
depends_on = None

_NAME = "ix_messages_message_type_received_at"


def upgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.drop_index(_NAME, table_name="messages")
        op.create_index(
            _NAME,
            "messages",
            ["message_type", "received_at"],
            postgresql_ops={"message_type": "text_pattern_ops"},
        )


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.drop_index(_NAME, table_name="messages")
        op.create_index(_NAME, "messages", ["message_type", "received_at"])
