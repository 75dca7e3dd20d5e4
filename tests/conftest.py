"""Shared fixtures: one PostgreSQL cluster per session, one database per test.

TEST_DATABASE_URL points the suite at a server you already run (its user must be
allowed to CREATE DATABASE); otherwise a throwaway cluster is started. Under CI
(CI set) a missing PostgreSQL fails the suite instead of skipping.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import ROOT, ScratchProject, write_environment
from pgcluster import admin_url
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from safe_migrations.config import Environment, load_environment


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


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'app.db'}"


@pytest.fixture
def make_env(tmp_path: Path) -> Callable[..., Environment]:
    """Build an Environment for a URL, with folders in this test's tmp_path."""

    def build(url: str, name: str = "staging", **sections: Any) -> Environment:
        directory = tmp_path / "environments"
        write_environment(directory, name, tmp_path / "var", **sections)
        return load_environment(name, environ={"DATABASE_URL": url}, directory=directory)

    return build


@pytest.fixture
def scratch(tmp_path: Path) -> ScratchProject:
    return ScratchProject(tmp_path / "scratch_migrations")


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with this project installed from its wheel, as a user would, plus what
    an `alembic init -t async` project of theirs brings (asyncpg, greenlet)."""
    folder = tmp_path_factory.mktemp("installed")
    wheels = folder / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    venv = folder / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    wheel = next(wheels.glob("safe_alembic_migrations-*.whl"))
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", str(wheel), "asyncpg", "greenlet"],
        check=True,
        capture_output=True,
        timeout=900,
    )
    return venv
