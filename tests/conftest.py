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
from helpers import ROOT, ScratchProject, fresh_database, write_environment
from mariadbserver import mysql_admin_url
from pgcluster import admin_url
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from safe_migrations.core.config import Environment, load_environment


def _missing_server(message: str) -> None:
    """No server for a test session: a failure under CI (``CI`` set), a skip elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """A superuser URL on a server the tests may create databases in."""

    with admin_url(_missing_server) as url:
        yield url


@pytest.fixture
def pg_url(pg_admin_url: str) -> Iterator[str]:
    """A fresh, empty database for this test; dropped afterwards."""
    with fresh_database(pg_admin_url) as url:
        yield url


@pytest.fixture(scope="session")
def mysql_admin() -> Iterator[str]:
    """An account on a MariaDB (or MySQL) server that may create databases: TEST_MYSQL_URL,
    else a throwaway server for the session."""

    with mysql_admin_url(_missing_server) as url:
        yield url


@pytest.fixture
def mysql_url(mysql_admin: str) -> Iterator[str]:
    """A fresh, empty MariaDB database for this test; dropped afterwards."""
    with fresh_database(mysql_admin) as url:
        yield url


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


# The oldest versions supported (pyproject.toml): a Flask-SQLAlchemy 2.x application
# pins SQLAlchemy 1.4, and the tool must install and run beside it.
OLDEST = ("sqlalchemy==1.4.42", "alembic==1.17.2")


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This project's wheel, built once per session, as a user's pip would install it."""
    wheels = tmp_path_factory.mktemp("wheels")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return next(wheels.glob("safe_alembic_migrations-*.whl"))


def _venv(folder: Path, *requirements: str) -> Path:
    """A fresh venv with ``requirements`` installed by pip's own resolver."""
    venv = folder / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    installed = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", *requirements],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert installed.returncode == 0, installed.stderr[-2000:]
    return venv


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Path:
    """A fresh venv with this project installed from its wheel, as a user would, plus what
    an `alembic init -t async` project of theirs brings (asyncpg, greenlet)."""
    return _venv(tmp_path_factory.mktemp("installed"), str(wheel), "asyncpg", "greenlet")


@pytest.fixture(scope="session")
def installed_oldest(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Path:
    """The same install beside an application pinning the oldest SQLAlchemy and Alembic
    supported: pip must resolve it, and the tool must run on them."""
    return _venv(tmp_path_factory.mktemp("oldest"), str(wheel), *OLDEST)


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real S3 endpoint over loopback HTTP: moto's standalone server on a free port."""
    import socket
    import time
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = tmp_path_factory.mktemp("moto") / "server.log"
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=1).close()  # noqa: S310 - loopback
            break
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                pytest.fail(f"moto_server did not start: {log.read_text()[-500:]}")
            time.sleep(0.2)
    try:
        yield url
    finally:
        server.terminate()
        server.wait(10)


@pytest.fixture
def bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """A fresh bucket of this test's own, and credentials in the standard variables."""
    import boto3

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIATESTCANARYKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "canary-aws-secret-do-not-print")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    name = f"b-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    yield {
        "type": "s3",
        "bucket": name,
        "prefix": "staging/",
        "endpoint_url": s3_endpoint,
        "region": "us-east-1",
    }
