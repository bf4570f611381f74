"""Indexes on the blob hashes, for retention's question "does any row still name it?"

Revision ID: retention_0001
Revises: mesh_0001
Create Date: 2026-11-30

Partial: only rows whose payload is a blob are indexed, a small share of most stores.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "retention_0001"
down_revision = "mesh_0001"
branch_labels = ("retention",)
depends_on = None

_NAMED = sa.text("blob_sha256 IS NOT NULL")


def upgrade() -> None:
    for table in ("messages", "deliveries"):
        op.create_index(
            f"ix_{table}_blob_sha256",
            table,
            ["blob_sha256"],
            unique=False,
            sqlite_where=_NAMED,
            postgresql_where=_NAMED,
        )


def downgrade() -> None:
    for table in ("messages", "deliveries"):
        op.drop_index(f"ix_{table}_blob_sha256", table_name=table)
