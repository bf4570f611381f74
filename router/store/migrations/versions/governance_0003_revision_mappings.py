"""A channel revision keeps the mapping code its channel names, and its digest

Revision ID: governance_0003
Revises: governance_0002
Create Date: 2026-12-01

The YAML of a revision names mappings; the code is Python under the mappings folder. So
that an approver approves the code as well, and the engine can tell when the code on disk
is not the approved code, each revision now keeps that code (router/governance/
mapping_code.py). Revisions recorded before this have none.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "governance_0003"
down_revision = "governance_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("channel_revisions") as batch:
        batch.add_column(sa.Column("mappings", sa.Text(), nullable=True))
        batch.add_column(sa.Column("mappings_sha256", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("channel_revisions") as batch:
        batch.drop_column("mappings_sha256")
        batch.drop_column("mappings")
