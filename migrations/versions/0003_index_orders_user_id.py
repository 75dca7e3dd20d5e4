"""index orders.user_id without blocking writes

Built CONCURRENTLY on PostgreSQL, which must run outside a transaction,
hence the autocommit block. MySQL and MariaDB build it online (ALGORITHM=INPLACE,
writes go on) and then use it for the foreign key on user_id, so the downgrade
takes the key off around the drop and puts it back (MySQL indexes it itself).

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


def is_mysql() -> bool:
    return op.get_context().dialect.name in ("mysql", "mariadb")


def upgrade() -> None:
    if is_mysql():
        op.create_index("ix_orders_user_id", "orders", ["user_id"])
        return
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_orders_user_id",
            "orders",
            ["user_id"],
            postgresql_concurrently=True,
            if_not_exists=True,
        )


def downgrade() -> None:
    if is_mysql():  # error 1553 otherwise: the index is the foreign key's
        op.drop_constraint("fk_orders_user_id_users", "orders", type_="foreignkey")
        op.drop_index("ix_orders_user_id", table_name="orders")
        op.create_foreign_key("fk_orders_user_id_users", "orders", "users", ["user_id"], ["id"])
        return
    with op.get_context().autocommit_block():
        op.drop_index(
            "ix_orders_user_id", table_name="orders", postgresql_concurrently=True, if_exists=True
        )
