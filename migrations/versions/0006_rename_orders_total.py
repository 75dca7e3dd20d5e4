"""rename orders.total_cents to amount_cents

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25 00:00:06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


# squawk: allow renaming-column -- shipped before any client read orders.total_cents
# (a live service would add the new column, backfill, switch readers, then drop the old one).


def upgrade() -> None:
    with op.batch_alter_table("orders") as batch:
        # MySQL renames with CHANGE COLUMN, which restates the column's type and nullability.
        batch.alter_column(
            "total_cents",
            new_column_name="amount_cents",
            existing_type=sa.Integer(),
            existing_nullable=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("orders") as batch:
        batch.alter_column(
            "amount_cents",
            new_column_name="total_cents",
            existing_type=sa.Integer(),
            existing_nullable=False,
        )
