"""psycopg2 sessions that end with this process and can be interrupted: the connect
hook and the wait callback every PostgreSQL connection of a run goes through."""

from __future__ import annotations

from typing import Any


def check_client_connection(dbapi_connection: Any, _record: Any) -> None:
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


def interruptible_queries() -> None:
    """Let Ctrl-C / SIGTERM reach a running query: cancel it on the server, then raise.

    psycopg2 otherwise blocks in C until the statement ends, so a cancelled CI job
    would wait out a long migration and never write its report.
    """
    import psycopg2.extensions

    if psycopg2.extensions.get_wait_callback() is None:
        psycopg2.extensions.set_wait_callback(wait_cancelling)


def wait_cancelling(connection: Any) -> None:
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
