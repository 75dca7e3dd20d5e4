"""One migration at a time: a PostgreSQL advisory lock, MySQL's GET_LOCK (mysql.py) or,
for SQLite, a lock file.

The PostgreSQL lock is session-level on its own autocommit connection, so the
migration's own transactions (and CREATE INDEX CONCURRENTLY) never wait on it,
and a killed runner releases it when its connection drops.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from safe_migrations.config import Environment
from safe_migrations.database import connect, sqlite_path
from safe_migrations.errors import LockHeldError

LOCK_NAMESPACE = "alembic-invoke/migration-lock/v1"
POLL_SECONDS = 0.2


def advisory_key(database: str) -> int:
    """A stable signed 64-bit key from the project constant and the database name."""
    digest = hashlib.sha256(f"{LOCK_NAMESPACE}:{database}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextmanager
def migration_lock(env: Environment, wait: float | None = None) -> Iterator[None]:
    """Hold the environment's migration lock; raise LockHeldError after ``wait`` seconds."""
    wait = env.settings.migration.lock_wait if wait is None else wait
    if env.is_sqlite:
        with _file_lock(env, wait):
            yield
    elif env.is_mysql:
        from safe_migrations.mysql import named_lock

        with named_lock(env, wait):
            yield
    else:
        with _advisory_lock(env, wait):
            yield


@contextmanager
def _advisory_lock(env: Environment, wait: float) -> Iterator[None]:
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    with connect(env, role="lock", autocommit=True) as connection:
        database = connection.execute(text("SELECT current_database()")).scalar_one()
        key = advisory_key(database)
        deadline = time.monotonic() + wait
        while not connection.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar():
            if time.monotonic() >= deadline:
                holder = _advisory_holder(connection, key)
                raise LockHeldError(
                    f"Another migration holds the lock on database '{database}' ({holder}); "
                    f"waited {wait:g}s. Let it finish, or raise migration.lock_wait."
                )
            time.sleep(POLL_SECONDS)
        try:
            yield
        finally:
            # A lost connection has released the lock already; its error must never
            # replace the one the run is raising.
            with contextlib.suppress(DBAPIError):
                connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})


def _advisory_holder(connection: object, key: int) -> str:
    from sqlalchemy import text

    unsigned = key & 0xFFFFFFFFFFFFFFFF
    row = connection.execute(  # type: ignore[attr-defined]
        text(
            "SELECT a.pid, a.application_name, a.client_addr, a.state_change "
            "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
            "AND l.classid = :hi AND l.objid = :lo AND l.database = "
            "(SELECT oid FROM pg_database WHERE datname = current_database())"
        ),
        {"hi": unsigned >> 32, "lo": unsigned & 0xFFFFFFFF},
    ).first()
    if row is None:
        return "holder unknown"
    return describe_holder(row.application_name or "", row.pid, row.client_addr, row.state_change)


def describe_holder(application: str, backend_pid: int, address: object, since: datetime) -> str:
    """'host H, pid P, since T' from our application_name (tool:role:host:pid)."""
    parts = application.split(":")
    if len(parts) >= 4 and parts[0] == "alembic-invoke":
        host, pid = parts[2], parts[3]
    else:
        host, pid = str(address or "unknown host"), f"backend {backend_pid}"
    return f"host {host}, pid {pid}, since {since.astimezone(UTC).isoformat(timespec='seconds')}"


@contextmanager
def _file_lock(env: Environment, wait: float) -> Iterator[None]:
    import fcntl

    database = sqlite_path(env.url) or str(env.root / "var" / "memory.db")
    path = Path(database + ".migrate.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as handle:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    handle.seek(0)
                    holder = _file_holder(handle.read())
                    raise LockHeldError(
                        f"Another migration holds the lock file {path} ({holder}); "
                        f"waited {wait:g}s. Let it finish, or raise migration.lock_wait."
                    ) from None
                time.sleep(POLL_SECONDS)
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(
                json.dumps(
                    {
                        "host": socket.gethostname(),
                        "pid": os.getpid(),
                        "since": datetime.now(UTC).isoformat(timespec="seconds"),
                    }
                )
            )
            handle.flush()
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            handle.flush()
            fcntl.flock(handle, fcntl.LOCK_UN)


def _file_holder(content: str) -> str:
    try:
        data = json.loads(content)
        return f"host {data['host']}, pid {data['pid']}, since {data['since']}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown"
