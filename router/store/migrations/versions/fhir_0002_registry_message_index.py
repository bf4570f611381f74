"""An index on the ServiceRequest registry's message_id

Revision ID: fhir_0002
Revises: fhir_0001
Create Date: 2026-12-02

Retention keeps a message the registry names, and asks so of every message it
considers; removing a message makes the foreign key ask it again. Without an index each
question scanned the whole registry.
"""

from __future__ import annotations

from alembic import op

revision = "fhir_0002"
down_revision = "fhir_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_service_requests_message_id", "service_requests", ["message_id"])


def downgrade() -> None:
    op.drop_index("ix_service_requests_message_id", table_name="service_requests")
