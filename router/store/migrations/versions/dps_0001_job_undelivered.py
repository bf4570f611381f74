"""DPS jobs name their outputs that failed for good (``undelivered``)

Revision ID: dps_0001
Revises: mesh_0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "dps_0001"
down_revision = "mesh_0002"
branch_labels = ("dps",)
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.add_column(sa.Column("undelivered", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_column("undelivered")
