"""add users.status, NOT NULL with a server default

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 00:00:04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(
            sa.Column("status", sa.String(20), nullable=False, server_default="active")
        )


def downgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.drop_column("status")
