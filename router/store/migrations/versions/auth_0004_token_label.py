"""an optional label on each API token, to tell a user's tokens apart

Revision ID: auth_0004
Revises: auth_0003
Create Date: 2026-12-01

An operator with several tokens for one sending system needs to know which is which when
rotating or revoking one. Given when a token is issued and carried to the token that
rotates it. Rows from before are left NULL: no label.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "auth_0004"
down_revision = "auth_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_tokens") as batch_op:
        batch_op.add_column(sa.Column("label", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_tokens") as batch_op:
        batch_op.drop_column("label")
