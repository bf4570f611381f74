"""when each user last signed in to the console, kept on the user

Revision ID: auth_0006
Revises: auth_0005
Create Date: 2026-12-01

The Users page, `users list` and `GET /api/users` read the last sign-in from the audit
log's `login` events, so pruning or archiving the audit log lost it. It is now written on
the user when a session starts (router/auth/sessions.py). Filled here from the audit log
as it stands, so upgrading loses nothing; NULL: never signed in (or not since a prune).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import router.store.schema

revision = "auth_0006"
down_revision = "auth_0005"
branch_labels = None
depends_on = None

_TIME = router.store.schema.UtcDateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("users") as batch_op:
        batch_op.add_column(sa.Column("last_sign_in_at", _TIME, nullable=True))
    op.execute(
        "UPDATE users SET last_sign_in_at = (SELECT max(audit_events.at) FROM audit_events"
        " WHERE audit_events.action = 'login'"
        " AND audit_events.target = 'user:' || users.name)"
    )


def downgrade() -> None:
    with op.batch_alter_table("users") as batch_op:
        batch_op.drop_column("last_sign_in_at")
