"""console forms sent once: each form's one-time nonce and where its answer led

Revision ID: auth_0005
Revises: auth_0004
Create Date: 2026-12-01

A browser that sends a console form twice (a double click, a reload or back that sends the
POST again) issued two tokens or replayed a bulk resend twice. Each form now carries a
one-time nonce; its first sending is recorded here, and a second one is answered with
what the first did (router/console/form_once.py). Rows older than a session's lifetime
are deleted as new ones arrive.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import router.store.schema

revision = "auth_0005"
down_revision = "auth_0004"
branch_labels = None
depends_on = None

_TIME = router.store.schema.UtcDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "form_submissions",
        sa.Column("nonce", sa.String(length=32), primary_key=True),
        sa.Column("used_at", _TIME, nullable=False),
        sa.Column("outcome", sa.String(length=2000), nullable=True),
    )
    op.create_index(
        op.f("ix_form_submissions_used_at"), "form_submissions", ["used_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_form_submissions_used_at"), table_name="form_submissions")
    op.drop_table("form_submissions")
