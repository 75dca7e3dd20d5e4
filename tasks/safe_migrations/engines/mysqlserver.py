"""MySQL and MariaDB: the migration lock, the session that applies revisions, and what
health can see. Each session's limits are set in mysqlsession.py as it connects.

MySQL has no transactional DDL: a DDL statement waits for its metadata lock at most
``lock_wait_timeout`` seconds, and every later query on that table queues behind it
for as long.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any

from safe_migrations.core.errors import LockHeldError

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from safe_migrations.core.config import Environment
    from safe_migrations.pipeline.lockwait import Holder

LOCK_WAIT_TIMEOUT = 1205  # ER_LOCK_WAIT_TIMEOUT: a metadata lock or a row lock not granted
SPECIFIC_ACCESS_DENIED = 1227  # the global PROCESS privilege, for innodb_trx
PROCESS_GRANT = (
    "GRANT PROCESS ON *.* TO the migration role shows them (a global privilege; it reveals "
    "no data, only who is connected and what runs)"
)
LOCK_PREFIX = "safe-migrations:"
# Held by the migration's own session: a killed runner's statement keeps running on the
# server after its lock connection is gone, and this lock goes only with that session.
RUN_PREFIX = "safe-migrations-run:"
# InnoDB refreshes its information_schema copy of the transaction list only when it
# has not been read for 0.1 s: a faster poll would read a stale list forever.
TRX_CACHE_SECONDS = 0.25


def is_lock_timeout(exc: BaseException) -> bool:
    orig = getattr(exc, "orig", None)
    args: tuple[Any, ...] = tuple(getattr(orig, "args", ()))
    return bool(args) and args[0] == LOCK_WAIT_TIMEOUT


def lock_name(database: str, prefix: str = LOCK_PREFIX) -> str:
    """GET_LOCK names are server-wide and at most 64 characters: prefix plus database,
    or a digest of a long database name."""
    name = prefix + database
    if len(name) <= 64:
        return name
    return prefix + hashlib.sha256(database.encode()).hexdigest()[:40]


def hold_session(connection: Connection, wait: float) -> None:
    """Mark the migration's session as the one applying revisions, on the session itself.

    The run lock (``named_lock``) lives on a connection of its own, which a SIGKILL
    closes at once while the server goes on executing the killed runner's statement on
    its migration session. That session still holds this lock, so a new runner waits
    for its statement to end (up to ``wait`` seconds) instead of applying the same
    revision beside it. Released when the session ends.
    """
    from sqlalchemy import text

    database = connection.execute(text("SELECT DATABASE()")).scalar_one()
    name = lock_name(database, RUN_PREFIX)
    if not _get_lock(connection, name, time.monotonic() + wait):
        raise LockHeldError(_still_executing(connection, database, name, wait))


def _get_lock(connection: Connection, name: str, deadline: float) -> bool:
    """``GET_LOCK`` until ``deadline`` (``time.monotonic()``); the server waits in slices
    of a second, so a Ctrl-C is seen between them. True when taken."""
    from sqlalchemy import text

    while True:
        left = max(0.0, deadline - time.monotonic())
        got = connection.execute(
            text("SELECT GET_LOCK(:name, :wait)"), {"name": name, "wait": min(left, 1.0)}
        ).scalar()
        if got == 1:
            return True
        if time.monotonic() >= deadline:
            return False


@contextmanager
def named_lock(env: Environment, wait: float) -> Iterator[None]:
    """``GET_LOCK`` on a connection of its own, held until the migration ends; a killed
    runner's lock goes with its connection. The server does the waiting, in slices, so a
    Ctrl-C is seen between them."""
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    from safe_migrations.core.database import connect

    with connect(env, role="lock", autocommit=True) as connection:
        database = connection.execute(text("SELECT DATABASE()")).scalar_one()
        name = lock_name(database)
        deadline = time.monotonic() + wait
        if not _get_lock(connection, name, deadline):
            raise LockHeldError(
                f"Another migration holds the lock on database '{database}' "
                f"({lock_holder(connection, name)}); waited {wait:g}s. Let it finish, "
                "or raise migration.lock_wait."
            )
        try:
            _earlier_run_ended(connection, database, deadline, wait)
            yield
        finally:
            with suppress(DBAPIError):
                connection.execute(text("SELECT RELEASE_LOCK(:name)"), {"name": name})


def _earlier_run_ended(connection: Connection, database: str, deadline: float, wait: float) -> None:
    """Wait until no earlier runner's migration session is alive (its statement still
    executing after the runner was killed), reading the lock only: health's catalog
    queries would queue behind that statement's metadata lock."""

    name = lock_name(database, RUN_PREFIX)
    while _used(connection, name):
        if time.monotonic() >= deadline:
            raise LockHeldError(_still_executing(connection, database, name, wait))
        time.sleep(TRX_CACHE_SECONDS)


def earlier_run(connection: Connection) -> str | None:
    """The sentence for a killed runner's migration session still executing, else None.
    A live runner (the run lock held too) is the lock step's to wait for. Reads locks
    only, so it never queues behind that session's metadata lock."""
    from sqlalchemy import text

    database = connection.execute(text("SELECT DATABASE()")).scalar_one()
    name = lock_name(database, RUN_PREFIX)
    if not _used(connection, name) or _used(connection, lock_name(database)):
        return None  # none, or a runner alive: the lock step names it and waits
    return _still_executing(connection, database, name, None)


def _used(connection: Connection, name: str) -> bool:
    """Some session holds the named lock (read only: no wait, no metadata lock)."""
    from sqlalchemy import text

    return bool(connection.execute(text("SELECT IS_USED_LOCK(:name)"), {"name": name}).scalar())


def _still_executing(connection: Connection, database: str, name: str, wait: float | None) -> str:
    waited = f" Waited {wait:g}s;" if wait is not None else ""
    return (
        f"Statements of an earlier migration are still executing on database '{database}' "
        f"({lock_holder(connection, name)}): a killed runner's statement goes on on the "
        f"server until it ends.{waited} Let it finish (or KILL QUERY it), then run again."
    )


def lock_holder(connection: Connection, name: str) -> str:
    """The connection holding a named lock, as the processlist shows it (another user's
    threads only with the PROCESS privilege)."""
    from sqlalchemy import text

    holder = connection.execute(text("SELECT IS_USED_LOCK(:name)"), {"name": name}).scalar()
    if holder is None:
        return "released meanwhile"
    row = connection.execute(
        text("SELECT USER, HOST, COMMAND, TIME FROM information_schema.PROCESSLIST WHERE ID = :id"),
        {"id": holder},
    ).first()
    if row is None:
        return f"connection {holder}; GRANT PROCESS to see whose"
    return f"connection {holder}, user {row[0]} from {row[1]}, {row[2].lower()} for {row[3]}s"


def database_size(connection: Connection) -> int:
    from sqlalchemy import text

    return int(
        connection.execute(
            text(
                "SELECT COALESCE(SUM(data_length + index_length), 0) "
                "FROM information_schema.tables WHERE table_schema = DATABASE()"
            )
        ).scalar()
        or 0
    )


# Transactions open on this server (InnoDB), oldest first: any of them may hold a
# metadata lock on a table the migration alters, and DDL then waits behind it while
# every later query queues behind the DDL. Query text is never read.
LONG_TRANSACTIONS_SQL = """
SELECT t.trx_mysql_thread_id AS id, p.USER AS user, p.HOST AS host, p.DB AS db,
       p.COMMAND AS command, TIMESTAMPDIFF(SECOND, t.trx_started, NOW()) AS age,
       t.trx_rows_locked AS rows_locked
FROM information_schema.innodb_trx t
LEFT JOIN information_schema.PROCESSLIST p ON p.ID = t.trx_mysql_thread_id
WHERE t.trx_mysql_thread_id <> CONNECTION_ID()
ORDER BY t.trx_started
"""
METADATA_LOCKS_SQL = """
SELECT DISTINCT t.PROCESSLIST_ID, m.OBJECT_NAME, m.LOCK_TYPE
FROM performance_schema.metadata_locks m
JOIN performance_schema.threads t ON t.THREAD_ID = m.OWNER_THREAD_ID
WHERE m.OBJECT_SCHEMA = DATABASE() AND m.OBJECT_TYPE = 'TABLE'
  AND t.PROCESSLIST_ID <> CONNECTION_ID()
"""


def denied_process(exc: BaseException) -> bool:
    """The server refused ``innodb_trx`` to a role without the PROCESS privilege."""
    args = tuple(getattr(getattr(exc, "orig", None), "args", ()))
    return bool(args) and args[0] == SPECIFIC_ACCESS_DENIED


def open_transactions(connection: Connection) -> list[Any] | None:
    """The server's open InnoDB transactions, oldest first; None when the role may not
    see them (no PROCESS privilege)."""
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    try:
        return list(connection.execute(text(LONG_TRANSACTIONS_SQL)).mappings().all())
    except DBAPIError as exc:
        if not denied_process(exc):
            raise
        connection.rollback()
        return None


def blocking_sessions(connection: Connection, max_age: float) -> dict[str, Any]:
    """Transactions older than ``max_age`` and, where performance_schema records them,
    metadata-lock holders on this database's tables; ``transactions_visible`` and
    ``metadata_locks_visible`` say whether the server let us see those."""
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    found = open_transactions(connection)
    rows = found or []
    old = [
        {
            "pid": r["id"],
            "user": r["user"],
            "host": r["host"],
            "command": r["command"],
            "transaction_age": float(r["age"] or 0),
            "rows_locked": int(r["rows_locked"] or 0),
        }
        for r in rows
        if float(r["age"] or 0) > max_age
    ]
    holders: list[dict[str, Any]] = []
    visible = False
    with suppress(DBAPIError):
        enabled = connection.execute(text("SELECT @@performance_schema")).scalar()
        if enabled:
            locks = connection.execute(text(METADATA_LOCKS_SQL)).fetchall()
            holders = [{"pid": r[0], "table": r[1], "lock": r[2]} for r in locks]
            visible = True
    return {
        "transactions": old,
        "transactions_visible": found is not None,
        "metadata_locks": holders,
        "metadata_locks_visible": visible,
    }


def transaction_holders(env: Environment) -> list[Holder]:
    """After a metadata-lock timeout: the open transactions on the server, oldest first
    (MySQL names no blocker of a metadata-lock wait without performance_schema)."""

    from safe_migrations.core.database import connect
    from safe_migrations.pipeline.lockwait import Holder

    with connect(env, role="watch", autocommit=True) as connection:
        rows = open_transactions(connection) or []  # unseen without PROCESS: none named
    return [
        Holder(
            pid=int(r["id"]),
            role=r["user"],
            application=r["host"],
            state=(r["command"] or "").lower() or None,
            transaction_age=float(r["age"] or 0),
            state_age=None,
            superuser=False,
            modes=None,
        )
        for r in rows
    ]


def wait_until_gone(env: Environment, pids: set[int], deadline: float) -> bool:
    """Poll ``innodb_trx`` (which enqueues nothing), slower than its cache refreshes, until
    none of ``pids`` has a transaction open, or the deadline (``time.monotonic()``) passes.
    True when gone."""

    from safe_migrations.core.database import connect

    with connect(env, role="watch", autocommit=True) as connection:
        while True:
            rows = open_transactions(connection)
            if rows is None:  # not visible: the caller's lock-timeout retry paces itself
                return False
            open_now = {int(r["id"]) for r in rows}
            if not pids & open_now:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(TRX_CACHE_SECONDS)
