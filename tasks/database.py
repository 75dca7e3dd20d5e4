"""Engines and connections with the environment's timeouts, and nothing else."""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any

from safe_migrations.errors import UnreachableError, first_line

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

    from safe_migrations.config import Environment

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
    try:
        yield connection
    finally:
        with suppress(DBAPIError):  # a lost connection: closing it must not hide the error
            connection.close()


def _build_engine(
    env: Environment,
    role: str,
    lock_timeout: float | None,
    statement_timeout: float | None,
    autocommit: bool,
) -> Engine:
    from sqlalchemy import create_engine, event
    from sqlalchemy.pool import NullPool

    timeout = env.settings.database.connect_timeout
    connect_args: dict[str, Any] = {}
    options: dict[str, Any] = {"poolclass": NullPool}
    if env.is_sqlite:
        connect_args["timeout"] = timeout
        _ensure_sqlite_folder(env.url)
    elif env.is_mysql:
        connect_args["connect_timeout"] = max(1, math.ceil(timeout))
        # A peer gone silent: a write that is never acknowledged fails here. No read
        # timeout: a long DDL statement is silent on the wire until it ends.
        connect_args["write_timeout"] = max(1, math.ceil(env.settings.database.network_timeout))
        connect_args["program_name"] = application_name(role)
    else:
        _interruptible_queries()
        # libpq takes whole seconds and treats anything below 2 as 2.
        connect_args["connect_timeout"] = max(2, math.ceil(timeout))
        connect_args["application_name"] = application_name(role)
        connect_args.update(keepalive_options(env.settings.database.network_timeout))
        settings = []
        if lock_timeout is not None:
            settings.append(f"-c lock_timeout={int(lock_timeout * 1000)}")
        if statement_timeout is not None:
            settings.append(f"-c statement_timeout={int(statement_timeout * 1000)}")
        if settings:
            connect_args["options"] = " ".join(settings)
    if autocommit:
        options["isolation_level"] = "AUTOCOMMIT"
    engine = create_engine(env.url, connect_args=connect_args, **options)
    if env.is_sqlite:
        event.listen(engine, "connect", _sqlite_foreign_keys)
    elif env.is_mysql:
        from safe_migrations.mysqlsession import session_timeouts

        event.listen(engine, "connect", session_timeouts(lock_timeout, statement_timeout))
    else:
        event.listen(engine, "connect", _check_client_connection)
    return engine


def keepalive_options(network_timeout: float) -> dict[str, int]:
    """libpq options that notice a peer gone silent within about ``network_timeout``:
    keepalive probes start after a third of it, and unacknowledged data or probes
    abort the connection once it has passed (TCP_USER_TIMEOUT)."""
    step = max(1, int(network_timeout // 3))
    return {
        "keepalives": 1,
        "keepalives_idle": step,
        "keepalives_interval": step,
        "keepalives_count": 3,
        "tcp_user_timeout": int(network_timeout * 1000),
    }


def _check_client_connection(dbapi_connection: Any, _record: Any) -> None:
    """PostgreSQL 14+: end our statements within a second when this process dies.

    Without it a SIGKILLed runner leaves its backend running the statement, holding
    the revision's locks, until the statement ends on its own.
    """
    if getattr(dbapi_connection, "server_version", 0) < 140000:
        return
    cursor = dbapi_connection.cursor()
    cursor.execute("SET client_connection_check_interval = 1000")
    cursor.close()
    if not dbapi_connection.autocommit:
        dbapi_connection.commit()


def _interruptible_queries() -> None:
    """Let Ctrl-C / SIGTERM reach a running query: cancel it on the server, then raise.

    psycopg2 otherwise blocks in C until the statement ends, so a cancelled CI job
    would wait out a long migration and never write its report.
    """
    import psycopg2.extensions

    if psycopg2.extensions.get_wait_callback() is None:
        psycopg2.extensions.set_wait_callback(_wait_cancelling)


def _wait_cancelling(connection: Any) -> None:
    """psycopg2's wait_select, plus: a deadline while connecting (libpq's connect_timeout
    does not apply in this mode), and KeyboardInterrupt re-raised after the cancel.
    """
    import select
    import time

    import psycopg2
    import psycopg2.extensions as ext

    deadline = None
    if connection.status in (ext.STATUS_SETUP, getattr(ext, "STATUS_CONNECTING", 20)):
        seconds = ext.parse_dsn(connection.dsn).get("connect_timeout")
        if seconds:
            deadline = time.monotonic() + max(2, int(seconds))
    interrupted: KeyboardInterrupt | None = None
    while True:
        try:
            state = connection.poll()
        except psycopg2.Error:
            if interrupted is not None:
                raise interrupted from None
            raise
        except KeyboardInterrupt as exc:
            interrupted = exc
            connection.cancel()
            continue
        if state == ext.POLL_OK:
            break
        wait = None if deadline is None else deadline - time.monotonic()
        if wait is not None and wait <= 0:
            raise psycopg2.OperationalError("timeout expired")
        try:
            if state == ext.POLL_READ:
                select.select([connection.fileno()], [], [], wait)
            elif state == ext.POLL_WRITE:
                select.select([], [connection.fileno()], [], wait)
        except KeyboardInterrupt as exc:
            interrupted = exc
            if deadline is not None:
                raise
            connection.cancel()
    if interrupted is not None:
        raise interrupted


def _sqlite_foreign_keys(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _ensure_sqlite_folder(url: str) -> None:
    from pathlib import Path

    path = sqlite_path(url)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)


def sqlite_path(url: str) -> str | None:
    """The file behind a SQLite URL, or None for an in-memory database."""
    from sqlalchemy.engine import make_url

    database = make_url(url).database
    return None if not database or database == ":memory:" else database
