"""A MySQL or MariaDB session's limits, set as each connection opens.

MySQL has no ``lock_timeout`` below a second: a DDL statement waits for its metadata
lock at most ``lock_wait_timeout`` seconds (whole seconds, at least 1). MariaDB ends
any statement after ``max_statement_time``; MySQL's ``max_execution_time`` covers
SELECT only. Each connection learns its session's limits from ``database.opened_for``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any


def lock_wait_seconds(lock_timeout: float) -> int:
    """PostgreSQL's sub-second lock_timeout as MySQL's lock_wait_timeout: whole seconds,
    at least 1 (0 would mean 'fail at once' on MySQL and never wait at all)."""
    return max(1, math.ceil(lock_timeout))


def is_mariadb(dbapi_connection: Any) -> bool:
    return "mariadb" in str(dbapi_connection.get_server_info()).lower()


def session_limits(dbapi_connection: Any, record: Any) -> None:
    """The connect listener: the limits of the session the connection was opened for."""
    from safe_migrations.core.database import opened_for

    _role, lock_timeout, statement_timeout = opened_for(record)
    session_timeouts(lock_timeout, statement_timeout)(dbapi_connection, record)


def session_timeouts(
    lock_timeout: float | None, statement_timeout: float | None
) -> Callable[[Any, Any], None]:
    """A connect listener giving each session its metadata- and row-lock waits and, on
    MariaDB, its statement limit."""

    def apply(dbapi_connection: Any, _record: Any) -> None:
        settings = []
        if lock_timeout is not None:
            seconds = lock_wait_seconds(lock_timeout)
            settings += [f"lock_wait_timeout = {seconds}", f"innodb_lock_wait_timeout = {seconds}"]
        if statement_timeout:
            if is_mariadb(dbapi_connection):
                settings.append(f"max_statement_time = {float(statement_timeout):g}")
            else:  # SELECT only on MySQL: README says so
                settings.append(f"max_execution_time = {int(statement_timeout * 1000)}")
        if settings:
            cursor = dbapi_connection.cursor()
            cursor.execute("SET SESSION " + ", ".join(settings))
            cursor.close()

    return apply


def share_preferred_tls_context() -> None:
    """One TLS context for every PyMySQL connection of the process that names no TLS
    option (PyMySQL's PREFERRED mode: TLS where the server offers it, unverified).

    PyMySQL 1.2 builds that context anew for each connection, loading the system's CA
    store for a context that verifies nothing (CERT_NONE without a CA): measured at
    17-19 ms of a 19 ms connect here, paid by each of a run's seven sessions. The
    context it builds is the same every time, and one context serves many sockets.
    Connections that name TLS options build theirs as before."""
    from pymysql.connections import Connection

    build = getattr(Connection, "_create_ssl_ctx", None)
    if build is None or getattr(build, "shared_preferred", False):
        return
    built: dict[str, Any] = {}

    def shared(self: Any, options: Any) -> Any:
        if isinstance(options, dict) and not options:  # the PREFERRED default
            if "context" not in built:
                built["context"] = build(self, options)
            return built["context"]
        return build(self, options)

    shared.shared_preferred = True  # type: ignore[attr-defined]
    Connection._create_ssl_ctx = shared
