"""index orders.user_id without blocking writes

Built CONCURRENTLY on PostgreSQL, which must run outside a transaction,
hence the autocommit block.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 00:00:03
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_orders_user_id",
            "orders",
            ["user_id"],
            postgresql_concurrently=True,
            if_not_exists=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index(
            "ix_orders_user_id", table_name="orders", postgresql_concurrently=True, if_exists=True
        )
