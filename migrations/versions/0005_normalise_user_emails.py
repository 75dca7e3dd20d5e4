"""data migration: store e-mail addresses in lower case

The downgrade cannot know the original spelling and leaves the data as it is.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25 00:00:05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

users = sa.table("users", sa.column("email", sa.String))


def upgrade() -> None:
    op.execute(
        users.update()
        .where(users.c.email != sa.func.lower(users.c.email))
        .values(email=sa.func.lower(users.c.email))
    )


def downgrade() -> None:
    pass
