"""Each message records the channel revision that settled it

Revision ID: governance_0002
Revises: governance_0001
Create Date: 2026-12-01

Support and auditors ask which configuration (and so which mapping code) made a
message's outcome; ``messages.revision`` is that channel's revision number. Messages
settled before this have none.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "governance_0002"
down_revision = "governance_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("revision", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("revision")
