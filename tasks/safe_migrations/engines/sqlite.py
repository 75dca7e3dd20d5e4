"""SQLite: a file next to the project, foreign keys on in every session, and a lock file
beside it for one migration at a time."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from safe_migrations.core.database import sqlite_path
from safe_migrations.core.errors import BackupError, LockHeldError
from safe_migrations.engines.base import Engine

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection
    from sqlalchemy.engine import Engine as SAEngine

    from safe_migrations.core.config import Environment
    from safe_migrations.engines.scratch import Copy
    from safe_migrations.stores.backupfiles import Progress, Stored

POLL_SECONDS = 0.2


class SQLite(Engine):
    name = "SQLite"
    version_sql = "SELECT sqlite_version()"
    session_timeouts = False
    rehearsal_limits = (
        "SQLite: each revision is timed on a copy of the file; lock and rewrite details "
        "are PostgreSQL-only"
    )
    copies_on_servers = False

    # The README's engine table (engines/table.py renders it; a test compares).
    documented: ClassVar[dict[str, str]] = {
        "tasks": "yes",
        "one_at_a_time": "lock file",
        "lock_waits": "—",
        "statement_limit": "—",
        "failed_revision": "rolled back",
        "health_basics": "yes",
        "health_sessions": "—",
        "backup": "backup API",
        "restore": "backup API",
        "validate": "yes",
        "zero_downtime": "— (a writer locks the whole file anyway; the setting is ignored)",
        "lint": "squawk (PostgreSQL SQL)",
        "check": "yes",
        "rehearse": "timed",
        "fleets": "yes",
    }

    def dump(
        self,
        env: Environment,
        target: Path,
        encrypted: bool,
        progress: Progress,
        snapshot: str | None = None,
    ) -> tuple[Stored | None, int, float]:
        from safe_migrations.engines.sqlitecopy import backup_sqlite, backup_sqlite_encrypted

        if encrypted:
            stored = backup_sqlite_encrypted(env, target, progress)
            return stored, stored.tables, time.perf_counter()
        return None, backup_sqlite(env, target, progress), time.perf_counter()

    def check_streamed_backup(self) -> None:
        raise BackupError(
            "backup.storage s3 takes PostgreSQL dumps; keep SQLite backups local "
            "(backup.storage: local)."
        )

    def backup_contents(self, env: Environment, path: Path) -> list[str]:
        from safe_migrations.engines.sqlitecopy import table_names

        names = table_names(path)
        return [f"tables ({len(names)}): {', '.join(sorted(names))}"]

    def restore(self, env: Environment, path: Path) -> None:
        from safe_migrations.engines.sqlitecopy import restore_sqlite

        restore_sqlite(env, path)

    def database_copy(self, env: Environment, server: Environment) -> AbstractContextManager[Copy]:
        from safe_migrations.engines.sqlitecopies import database_copy

        return database_copy(env, server)

    def copy_exists(self, server: Environment, name: str) -> bool:
        from safe_migrations.engines.sqlitecopies import copy_exists

        return copy_exists(server, name)

    def scratch_database(
        self, env: Environment, folder: Path
    ) -> AbstractContextManager[Environment]:
        from safe_migrations.engines.sqlitecopies import scratch_file

        return scratch_file(env, folder)

    def backup_format(self, env: Environment) -> str:
        return "sqlite"

    def backup_suffix(self, env: Environment) -> str:
        return ".sqlite3"

    def identity(self, env: Environment) -> dict[str, Any]:
        path = sqlite_path(env.url)
        return {"engine": "sqlite", "database": str(Path(path).resolve()) if path else None}

    def prepare(self, env: Environment) -> None:
        path = sqlite_path(env.url)
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)

    def connect_args(
        self,
        env: Environment,
        role: str,
        lock_timeout: float | None,
        statement_timeout: float | None,
    ) -> dict[str, Any]:
        # Health hands the connection its check opened (on a thread, for the deadline)
        # to the checks after it, as SQLAlchemy 2 allows for files; 1.4 needs it said.
        return {"timeout": env.settings.database.connect_timeout, "check_same_thread": False}

    def listen(self, engine: SAEngine) -> None:
        from sqlalchemy import event

        event.listen(engine, "connect", _sqlite_foreign_keys)

    def migration_lock(self, env: Environment, wait: float) -> AbstractContextManager[None]:
        return _file_lock(env, wait)

    def table_count(self, connection: Connection) -> int:
        from sqlalchemy import text

        return int(
            connection.execute(
                text("SELECT count(*) FROM sqlite_master WHERE type = 'table'")
            ).scalar_one()
        )

    def database_size(self, env: Environment, connection: Connection) -> int:
        path = sqlite_path(env.url)
        return Path(path).stat().st_size if path and Path(path).exists() else 0


def _sqlite_foreign_keys(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _ensure_sqlite_folder(url: str) -> None:
    from pathlib import Path

    path = sqlite_path(url)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)


@contextmanager
def _file_lock(env: Environment, wait: float) -> Iterator[None]:

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
