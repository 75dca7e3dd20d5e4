"""`safe-migrations init` in a project made by `alembic init`: the project's own env.py
is adapted, and every guarantee then holds there (issue 14, in part)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import table_names
from pgcluster import PASSWORD
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

BIN = Path(sys.executable).parent
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


@pytest.fixture
def other_database(pg_admin_url: str) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(pg_admin_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    yield make_url(pg_admin_url).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def run(project: Path, *argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv), cwd=project, env=env, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.mark.parametrize("template", ["generic", "async", "pyproject"])
def test_init_adapts_an_alembic_init_project_and_migrates_the_environments_database(
    template: str, pg_url: str, other_database: str, tmp_path: Path
) -> None:
    project = tmp_path / "service"
    project.mkdir()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "MIGRATE_"))}
    assert (
        run(
            project, str(BIN / "alembic"), "init", "-t", template, "migrations", env=base
        ).returncode
        == 0
    )
    ini = project / "alembic.ini"
    ini.write_text(ini.read_text().replace("driver://user:pass@localhost/dbname", other_database))
    (project / "migrations" / "versions" / "a1_create_items.py").write_text(REVISION)
    stock_env_py = (project / "migrations" / "env.py").read_text()

    adopted = run(project, str(BIN / "safe-migrations"), "init", env=base)
    assert adopted.returncode == 0, adopted.stdout + adopted.stderr
    assert '+    connection = config.attributes.get("connection")' in adopted.stdout  # a diff
    for written in ("tasks.py", "environments/staging.yml", ".github/workflows/db-migrate.yml"):
        assert (project / written).is_file(), written
    staging = project / "environments" / "staging.yml"
    staging.write_text(staging.read_text() + "# tuned by the team\n")
    again = run(project, str(BIN / "safe-migrations"), "init", env=base)
    assert again.returncode == 0 and "kept environments/staging.yml" in again.stdout
    assert staging.read_text().endswith("# tuned by the team\n")  # never overwritten

    url = make_url(pg_url)
    secrets = base | {
        "DB_HOST": str(url.host),
        "DB_PORT": str(url.port),
        "DB_NAME": str(url.database),
        "DB_USER": str(url.username),
        "DB_PASSWORD": PASSWORD,
    }
    migrated = run(
        project, str(BIN / "invoke"), "migrate", "--env", "staging", "--yes", env=secrets
    )
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    assert table_names(pg_url) == {"alembic_version", "items"}
    assert table_names(other_database) == set()  # the database alembic.ini names: untouched
    assert list((project / "var" / "reports" / "staging").glob("staging-upgrade-*.json"))
    assert list((project / "var" / "backups" / "staging").glob("*.manifest.json"))  # required
    status = run(project, str(BIN / "safe-migrations"), "status", "--env", "staging", env=secrets)
    assert "current:     a1" in status.stdout, status.stderr

    (project / "migrations" / "env.py").write_text(stock_env_py)
    refused = run(
        project,
        str(BIN / "invoke"),
        "downgrade",
        "--env",
        "staging",
        "--revision",
        "base",
        "--yes",
        env=secrets,
    )
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "env.py" in refused.stderr and "Traceback" not in refused.stderr
    assert table_names(pg_url) == {"alembic_version", "items"}


def test_init_refuses_multidb_and_reports_an_unknown_env_py(tmp_path: Path) -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "MIGRATE_"))}
    multi = tmp_path / "multi"
    multi.mkdir()
    run(multi, str(BIN / "alembic"), "init", "-t", "multidb", "migrations", env=base)
    refused = run(multi, str(BIN / "safe-migrations"), "init", env=base)
    assert refused.returncode == 2 and "multidb" in refused.stderr
    custom = tmp_path / "custom"
    custom.mkdir()
    run(custom, str(BIN / "alembic"), "init", "migrations", env=base)
    (custom / "migrations" / "env.py").write_text("from alembic import context\n")
    unknown = run(custom, str(BIN / "safe-migrations"), "init", env=base)
    assert unknown.returncode == 1 and "matches none of the templates" in unknown.stdout
    assert (custom / "migrations" / "env.py").read_text() == "from alembic import context\n"
