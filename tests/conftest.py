"""Shared fixtures: one PostgreSQL cluster per session, one database per test.

TEST_DATABASE_URL points the suite at a server you already run (its user must be
allowed to CREATE DATABASE); otherwise a throwaway cluster is started. Under CI
(CI set) a missing PostgreSQL fails the suite instead of skipping.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))

from pgcluster import admin_url  # noqa: E402

from tasks.alembic_api import Project  # noqa: E402
from tasks.config import Environment, load_environment  # noqa: E402


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """A superuser URL on a server the tests may create databases in."""

    def missing(message: str) -> None:
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)

    with admin_url(missing) as url:
        yield url


@pytest.fixture
def pg_url(pg_admin_url: str) -> Iterator[str]:
    """A fresh, empty database for this test; dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(pg_admin_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(pg_admin_url).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def role_url(pg_url: str, pg_admin_url: str) -> Iterator[str]:
    """This test's database as a login role that owns its public schema: a migration
    role without superuser, pg_monitor or pg_read_all_stats."""
    role = f"r_{uuid.uuid4().hex[:10]}"
    database = make_url(pg_url).database
    admin = create_engine(pg_admin_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"CREATE ROLE {role} LOGIN PASSWORD 'secret-{role}'"))
    owner = create_engine(pg_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    with owner.connect() as connection:
        connection.execute(text(f"ALTER SCHEMA public OWNER TO {role}"))
    owner.dispose()
    try:
        yield (
            make_url(pg_url)
            .set(username=role, password=f"secret-{role}")
            .render_as_string(hide_password=False)
        )
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
            connection.execute(text(f"DROP ROLE IF EXISTS {role}"))
        admin.dispose()


def table_names(url: str) -> set[str]:
    """The tables a database holds now, read on a connection of its own."""
    engine = create_engine(url, poolclass=NullPool)
    with engine.connect() as connection:
        names = set(inspect(connection).get_table_names())
    engine.dispose()
    return names


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'app.db'}"


def write_environment(directory: Path, name: str, folder: Path, **sections: Any) -> None:
    """An environment file whose folders live under ``folder``."""
    data: dict[str, Any] = {
        "database": {"url": "${DATABASE_URL}", "connect_timeout": 5},
        "backup": {"folder": str(folder / "backups"), "keep": 3},
        "migration": {"lock_timeout": 1, "retries": 2, "retry_backoff": 0.1, "lock_wait": 5},
        "policy": {"confirm": "prompt"},
        "reports": {"folder": str(folder / "reports")},
    }
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.yml").write_text(yaml.safe_dump(data))


@pytest.fixture
def make_env(tmp_path: Path) -> Callable[..., Environment]:
    """Build an Environment for a URL, with folders in this test's tmp_path."""

    def build(url: str, name: str = "staging", **sections: Any) -> Environment:
        directory = tmp_path / "environments"
        write_environment(directory, name, tmp_path / "var", **sections)
        return load_environment(name, environ={"DATABASE_URL": url}, directory=directory)

    return build


class ScratchProject:
    """A migrations folder of the test's own, with revisions written by the test."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        (folder / "versions").mkdir(parents=True)
        shutil.copy(ROOT / "migrations" / "env.py", folder / "env.py")
        shutil.copy(ROOT / "migrations" / "script.py.mako", folder / "script.py.mako")
        self.count = 0
        self.last: str | None = None

    def project(self, metadata: Any = None) -> Project:
        return Project(script_location=self.folder, attributes=(("target_metadata", metadata),))

    def add(
        self,
        upgrade: str,
        downgrade: str = "pass",
        revision: str | None = None,
        message: str = "test revision",
    ) -> str:
        self.count += 1
        revision = revision or f"r{self.count:03d}"
        lines = [
            f'"""{message}"""',
            "import sqlalchemy as sa",
            "from alembic import op",
            "",
            f"revision = {revision!r}",
            f"down_revision = {self.last!r}",
            "branch_labels = None",
            "depends_on = None",
            "",
            "",
            "def upgrade():",
            textwrap.indent(textwrap.dedent(upgrade).strip(), "    "),
            "",
            "",
            "def downgrade():",
            textwrap.indent(textwrap.dedent(downgrade).strip(), "    "),
            "",
        ]
        path = self.folder / "versions" / f"{revision}.py"
        path.write_text("\n".join(lines))
        self.last = revision
        return revision


@pytest.fixture
def scratch(tmp_path: Path) -> ScratchProject:
    return ScratchProject(tmp_path / "scratch_migrations")


def run_invoke(
    *args: str,
    env: dict[str, str] | None = None,
    stdin: Any = subprocess.DEVNULL,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """The real CLI, as a user types it, from the repository root."""
    invoke = shutil.which("invoke", path=str(Path(sys.executable).parent)) or "invoke"
    full_env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL",)}
    full_env.update(env or {})
    return subprocess.run(
        [invoke, *args],
        cwd=ROOT,
        env=full_env,
        stdin=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
