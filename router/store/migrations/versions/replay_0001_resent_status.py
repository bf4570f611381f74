"""Failed deliveries that already have a resent copy become ``resent``

Revision ID: replay_0001
Revises: 0001
Create Date: 2026-11-24

Data only: the status column already holds any short string. Resend now marks
the old delivery itself (router/replay.py); this brings deliveries resent before
then into line, so they stop counting as failed and a bulk resend skips them.
"""

from __future__ import annotations

from alembic import op

revision = "replay_0001"
down_revision = "0001"
branch_labels = ("replay",)
depends_on = None


def upgrade() -> None:
    op.execute(
        "UPDATE deliveries SET status = 'resent' WHERE status = 'failed' AND id IN "
        "(SELECT resent_from FROM deliveries WHERE resent_from IS NOT NULL)"
    )


def downgrade() -> None:
    op.execute("UPDATE deliveries SET status = 'failed' WHERE status = 'resent'")
