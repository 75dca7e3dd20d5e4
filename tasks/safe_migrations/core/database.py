"""Engines and connections with the environment's timeouts, and nothing else."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any

from safe_migrations.core.errors import UnreachableError, first_line

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

    from safe_migrations.core.config import Environment

APPLICATION_NAME = "alembic-invoke"


def application_name(role: str = "run") -> str:
    """Names our sessions in pg_stat_activity: tool, role, host and pid."""
    return f"{APPLICATION_NAME}:{role}:{socket.gethostname()}:{os.getpid()}"[:63]


def make_engine(
    env: Environment,
    role: str = "run",
    lock_timeout: float | None = None,
    statement_timeout: float | None = None,
    autocommit: bool = False,
) -> Engine:
    """An engine without a pool: every connection is opened on purpose and closed after.

    Engines are kept per URL and options: building one costs tens of milliseconds and
    a run asks for the same kind several times. Without a pool they hold no connection.
    """
    key = (
        env.url,
        env.settings.database.connect_timeout,
        role,
        lock_timeout,
        statement_timeout,
        autocommit,
    )
    if key not in _ENGINES:
        _ENGINES[key] = _build_engine(env, role, lock_timeout, statement_timeout, autocommit)
    return _ENGINES[key]


_ENGINES: dict[tuple[Any, ...], Engine] = {}


@contextmanager
def connect(
    env: Environment,
    role: str = "run",
    lock_timeout: float | None = None,
    statement_timeout: float | None = None,
    autocommit: bool = False,
) -> Iterator[Connection]:
    """A connection with the environment's timeouts, closed after.

    The one rule for every task: a database that cannot be reached is UnreachableError
    (exit 3); an error after connecting propagates as the driver's (exit 1).
    """
    from sqlalchemy.exc import DBAPIError

    engine = make_engine(env, role, lock_timeout, statement_timeout, autocommit)
    try:
        connection = engine.connect()
    except DBAPIError as exc:
        raise UnreachableError(
            f"Cannot reach the {env.name} database at {env.masked_url}: {first_line(exc)}; "
            "check the URL and that the server is running."
        ) from None
    with closed_after(connection):
        yield connection


@contextmanager
def closed_after(connection: Connection) -> Iterator[Connection]:
    """Close an open connection after the body; a connection lost meanwhile must not
    hide the body's own error."""
    from sqlalchemy.exc import DBAPIError

    try:
        yield connection
    finally:
        with suppress(DBAPIError):
            connection.close()


def _build_engine(
    env: Environment,
    role: str,
    lock_timeout: float | None,
    statement_timeout: float | None,
    autocommit: bool,
) -> Engine:
    """The engine's connect arguments and session listeners (engines/), no pool."""
    import sqlalchemy
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    from safe_migrations.engines.registry import load  # engines/ sit above this module

    impl = load(env.dialect)
    impl.prepare(env)
    options: dict[str, Any] = {"poolclass": NullPool}
    if autocommit:
        options["isolation_level"] = "AUTOCOMMIT"
    if sqlalchemy.__version__.startswith("1."):
        options["future"] = True  # 2.0's Connection (commit, rollback) on 1.4
    engine = create_engine(
        env.url,
        connect_args=impl.connect_args(env, role, lock_timeout, statement_timeout),
        **options,
    )
    impl.listen(engine, lock_timeout, statement_timeout)
    return engine


def sqlite_path(url: str) -> str | None:
    """The file behind a SQLite URL, or None for an in-memory database."""
    from sqlalchemy.engine import make_url

    database = make_url(url).database
    return None if not database or database == ":memory:" else database
