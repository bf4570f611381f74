"""blob-backed payloads, delivery headers, MESH sent messages

Revision ID: mesh_0001
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import router.store.schema

revision = "mesh_0001"
down_revision = "0001"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch_op:
        batch_op.add_column(sa.Column("blob_sha256", sa.String(length=64), nullable=True))
        if op.get_bind().dialect.name == "postgresql":
            batch_op.alter_column("size", type_=sa.BigInteger(), existing_nullable=False)
    with op.batch_alter_table("deliveries") as batch_op:
        batch_op.add_column(sa.Column("blob_sha256", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("blob_size", _ID, nullable=True))
        batch_op.add_column(sa.Column("headers", sa.Text(), nullable=True))
    op.create_table(
        "mesh_sent",
        sa.Column("mesh_message_id", sa.String(length=100), nullable=False),
        sa.Column("delivery_id", _ID, nullable=False),
        sa.Column("mailbox", sa.String(length=64), nullable=False),
        sa.Column("recipient", sa.String(length=64), nullable=False),
        sa.Column("sent_at", router.store.schema.UtcDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["delivery_id"], ["deliveries.id"], name=op.f("fk_mesh_sent_delivery_id_deliveries")
        ),
        sa.PrimaryKeyConstraint("mesh_message_id", name=op.f("pk_mesh_sent")),
    )
    with op.batch_alter_table("mesh_sent") as batch_op:
        batch_op.create_index(batch_op.f("ix_mesh_sent_delivery_id"), ["delivery_id"], unique=False)


def downgrade() -> None:
    op.drop_table("mesh_sent")
    with op.batch_alter_table("deliveries") as batch_op:
        batch_op.drop_column("headers")
        batch_op.drop_column("blob_size")
        batch_op.drop_column("blob_sha256")
    with op.batch_alter_table("messages") as batch_op:
        if op.get_bind().dialect.name == "postgresql":
            batch_op.alter_column("size", type_=sa.Integer(), existing_nullable=False)
        batch_op.drop_column("blob_sha256")
