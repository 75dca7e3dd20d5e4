"""Engines and connections with the environment's timeouts, and nothing else."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, cast

from safe_migrations.core.errors import UnreachableError, first_line

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

    from safe_migrations.core.config import Environment

APPLICATION_NAME = "alembic-invoke"


def application_name(role: str = "run") -> str:
    """Names our sessions in pg_stat_activity: tool, role, host and pid."""
    return f"{APPLICATION_NAME}:{role}:{socket.gethostname()}:{os.getpid()}"[:63]


Session = tuple[str, float | None, float | None]  # role, lock and statement timeouts

NO_SESSION: Session = ("run", None, None)  # connect()'s defaults

# The session the connection being opened is for, read as the driver connects.
_OPENING: ContextVar[Session | None] = ContextVar("safe_migrations_session", default=None)


class Sessions:
    """Connections for one role (its name on the server, its lock and statement limits)
    on the URL's one engine: one dialect initialised once and one compiled-SQL cache for
    the whole run, each connection still given its own limits as it opens."""

    def __init__(self, engine: Engine, session: Session) -> None:
        self.engine = engine
        self.session = session

    def connect(self) -> Connection:
        with self._opening():
            return self.engine.connect()

    def raw_connection(self) -> Any:
        with self._opening():
            return self.engine.raw_connection()

    def dispose(self) -> None:
        """Nothing to close: without a pool the engine holds no connection."""

    @contextmanager
    def _opening(self) -> Iterator[None]:
        token = _OPENING.set(self.session)
        try:
            yield
        finally:
            _OPENING.reset(token)


def make_engine(
    env: Environment,
    role: str = "run",
    lock_timeout: float | None = None,
    statement_timeout: float | None = None,
    autocommit: bool = False,
) -> Sessions:
    """Connections of one kind; none is opened until asked for.

    One engine per URL and connection settings, kept for the process, without a pool:
    every connection is opened on purpose and closed after. Building an engine and
    initialising its dialect cost milliseconds, and a run opens connections of seven
    kinds; the role and the limits reach each connection as it opens."""
    key = (env.url, env.settings.database)
    if key not in _ENGINES:
        _ENGINES[key] = _build_engine(env)
    engine = _ENGINES[key]
    if autocommit:
        engine = engine.execution_options(isolation_level="AUTOCOMMIT")
    return Sessions(engine, (role, lock_timeout, statement_timeout))


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

    sessions = make_engine(env, role, lock_timeout, statement_timeout, autocommit)
    try:
        connection = sessions.connect()
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


def opened_for(record: Any) -> Session:
    """The session a connection was opened for (its pool record), for connect listeners."""
    return cast("Session", record.info.get("session", NO_SESSION))


def _build_engine(env: Environment) -> Engine:
    """The URL's engine, no pool: each connection gets its session's driver arguments
    (engines/) as it opens, and the engine's listeners see which session it is."""
    import sqlalchemy
    from sqlalchemy import create_engine, event
    from sqlalchemy.pool import NullPool

    from safe_migrations.engines.registry import load  # engines/ sit above this module

    impl = load(env.dialect)
    impl.prepare(env)
    options: dict[str, Any] = {"poolclass": NullPool}
    if sqlalchemy.__version__.startswith("1."):
        options["future"] = True  # 2.0's Connection (commit, rollback) on 1.4
    engine = create_engine(env.url, **options)

    def session_arguments(_dialect: Any, record: Any, _args: Any, params: dict[str, Any]) -> None:
        session = _OPENING.get() or NO_SESSION
        record.info["session"] = session
        params.update(impl.connect_args(env, *session))

    event.listen(engine, "do_connect", session_arguments)
    impl.listen(engine)
    return engine


def sqlite_path(url: str) -> str | None:
    """The file behind a SQLite URL, or None for an in-memory database."""
    from sqlalchemy.engine import make_url

    database = make_url(url).database
    return None if not database or database == ":memory:" else database
