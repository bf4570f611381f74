"""when each API token was last used (to the minute)

Revision ID: auth_0003
Revises: auth_0002
Create Date: 2026-12-01

An operator rotating a sending system's token needs to see whether the old one is still
sent. Written at most once a minute per token (router/auth/token_use.py), so the request
path does not write on every request. Rows from before are left NULL: not used since.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import router.store.schema

revision = "auth_0003"
down_revision = "auth_0002"
branch_labels = None
depends_on = None

_TIME = router.store.schema.UtcDateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("api_tokens") as batch_op:
        batch_op.add_column(sa.Column("last_used_at", _TIME, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_tokens") as batch_op:
        batch_op.drop_column("last_used_at")
