"""Indexes on the columns that point at a message or a delivery retention may remove

Revision ID: retention_0002
Revises: retention_0001
Create Date: 2026-12-02

Removing a message makes the database look for rows that still name it, for the foreign
keys (SQLite with ``foreign_keys=ON`` as PostgreSQL) and for retention's own unlinking:
without an index each removed message cost a scan of the whole messages table twice
(``reprocessed_from``, ``duplicate_of``), and each removed delivery one of deliveries
(``resent_from``), inside the transaction ingest waits on. Partial: few rows link.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "retention_0002"
down_revision = "retention_0001"
branch_labels = None
depends_on = None

_LINKS = (
    ("messages", "reprocessed_from"),
    ("messages", "duplicate_of"),
    ("deliveries", "resent_from"),
)


def upgrade() -> None:
    for table, column in _LINKS:
        linked = sa.text(f"{column} IS NOT NULL")
        op.create_index(
            f"ix_{table}_{column}",
            table,
            [column],
            unique=False,
            sqlite_where=linked,
            postgresql_where=linked,
        )


def downgrade() -> None:
    for table, column in _LINKS:
        op.drop_index(f"ix_{table}_{column}", table_name=table)
