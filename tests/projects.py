"""Projects as users have them: made by `alembic init`, run through a venv's commands."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from pgcluster import PASSWORD
from sqlalchemy.engine import make_url

REVISION = '''"""create items"""
import sqlalchemy as sa
from alembic import op

revision = "a1"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table("items", sa.Column("id", sa.Integer, primary_key=True))


def downgrade():
    op.drop_table("items")
'''


def run(project: Path, *argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv), cwd=project, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def alembic_project(
    tmp_path: Path, bin_dir: Path, template: str, theirs: str, name: str = "service"
) -> tuple[Path, dict[str, str]]:
    """A project made by `alembic init -t TEMPLATE` in ``tmp_path/name`` whose alembic.ini
    names the database ``theirs`` (asyncpg for the async template), with revision a1; and
    its environment."""
    project = tmp_path / name
    project.mkdir(parents=True)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "MIGRATE_"))}
    made = run(project, str(bin_dir / "alembic"), "init", "-t", template, "migrations", env=base)
    assert made.returncode == 0, made.stderr
    url = make_url(theirs)
    if template == "async":
        url = url.set(drivername="postgresql+asyncpg")
    in_ini = url.render_as_string(hide_password=False).replace("%", "%%")  # configparser
    ini = project / "alembic.ini"
    ini.write_text(ini.read_text().replace("driver://user:pass@localhost/dbname", in_ini))
    (project / "migrations" / "versions" / "a1_create_items.py").write_text(REVISION)
    return project, base


def with_secrets(base: dict[str, str], pg_url: str) -> dict[str, str]:
    """The five variables the workflow fills from the GitHub environment's secrets."""
    url = make_url(pg_url)
    return base | {
        "DB_HOST": str(url.host),
        "DB_PORT": str(url.port),
        "DB_NAME": str(url.database),
        "DB_USER": str(url.username),
        "DB_PASSWORD": PASSWORD,
    }
