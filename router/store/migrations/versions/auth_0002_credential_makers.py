"""who set each user's password, and each console session's password setter at sign-in

Revision ID: auth_0002
Revises: auth_0001
Create Date: 2026-12-01

Four eyes refuses an approval made with a credential its author made (docs/governance.md).
A token's issuer is already ``api_tokens.created_by``. Rows from before are left NULL:
not known, and counted as not made by the author (the user resets nothing by upgrading).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "auth_0002"
down_revision = "auth_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("users") as batch_op:
        batch_op.add_column(sa.Column("password_set_by", sa.String(length=128), nullable=True))
    with op.batch_alter_table("sessions") as batch_op:
        batch_op.add_column(sa.Column("password_set_by", sa.String(length=128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sessions") as batch_op:
        batch_op.drop_column("password_set_by")
    with op.batch_alter_table("users") as batch_op:
        batch_op.drop_column("password_set_by")
