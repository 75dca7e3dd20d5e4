"""PostgreSQL: psycopg2 sessions that notice a silent peer and can be interrupted (pgwire), the
migration lock as a session-level advisory lock, and what health and backup read.

The lock is session-level on its own autocommit connection, so the migration's own
transactions (and CREATE INDEX CONCURRENTLY) never wait on it, and a killed runner
releases it when its connection drops.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from safe_migrations.core.database import application_name, connect
from safe_migrations.core.errors import LockHeldError
from safe_migrations.engines.base import Engine, T
from safe_migrations.engines.libpq import keepalive_options

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection
    from sqlalchemy.engine import Engine as SAEngine

    from safe_migrations.core.config import Environment
    from safe_migrations.core.results import StepResult
    from safe_migrations.engines.scratch import Copy
    from safe_migrations.project.alembic_api import Project, Revision
    from safe_migrations.project.baseline import Baseline
    from safe_migrations.project.lint import LintResult
    from safe_migrations.stores.backupfiles import Progress, Stored

LOCK_NAMESPACE = "alembic-invoke/migration-lock/v1"
POLL_SECONDS = 0.2
LOCK_NOT_AVAILABLE = "55P03"  # lock_timeout expired
AUTHENTICATION_FAILED = {"28P01", "28000"}  # SQLSTATE: invalid password / authorization
TABLE_COUNT_SQL = (
    "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = "
    "c.relnamespace WHERE c.relkind IN ('r','p') AND n.nspname NOT IN "
    "('pg_catalog','information_schema') AND n.nspname NOT LIKE 'pg_toast%'"
)


class PostgreSQL(Engine):
    name = "PostgreSQL"
    default_port = 5432
    version_sql = "SHOW server_version"

    # The README's engine table (engines/table.py renders it; a test compares).
    documented: ClassVar[dict[str, str]] = {
        "tasks": "yes",
        "one_at_a_time": "advisory lock",
        "lock_waits": "`lock_timeout` (sub-second), holders watched through `pg_locks`",
        "statement_limit": "`statement_timeout`",
        "failed_revision": "rolled back",
        "health_basics": "yes",
        "health_sessions": "`pg_locks`, `pg_stat_activity`",
        "backup": "`pg_dump`; `backup.prove: restore` restores it into a scratch database and "
        "compares every table with the dump's snapshot",
        "restore": "one transaction",
        "validate": "yes, plus invalid indexes",
        "zero_downtime": (
            "`rewrite`: indexes built and dropped `CONCURRENTLY`, foreign keys and checks "
            "`NOT VALID` then validated, NOT NULL through a validated check, unique "
            "constraints and primary keys from a concurrent index; what cannot be made safe "
            "refused before the first statement; `check` refuses what rewrite would change"
        ),
        "lint": "squawk",
        "check": "yes",
        "rehearse": "locks sampled, rewrites seen; `--traffic N` clients' waits per revision",
        "fleets": "yes",
    }

    def begin_migration(self, connection: Connection, wait: float) -> None:
        from safe_migrations.engines.pgdata import guard_data_statements
        from safe_migrations.engines.pgsafe import CURRENT, drop_leftover_checks

        drop_leftover_checks(connection)
        safety = CURRENT.get()
        limit = safety.env.settings.migration.max_rows_in_one_statement if safety else None
        if safety is not None and safety.mode != "collect" and limit is not None:
            guard_data_statements(connection, limit)

    def safe_operations(
        self, env: Environment, resume: bool = False
    ) -> AbstractContextManager[Any]:
        from safe_migrations.engines.pgsafe import safe_operations

        return safe_operations(env, env.settings.migration.safe_operations)

    def preflight(
        self, env: Environment, project: Project, path: list[Revision], connection: Connection
    ) -> None:
        from safe_migrations.engines.pgrefusals import preflight

        preflight(env, project, path, connection)

    def refuses(self, env: Environment) -> bool:
        return env.settings.migration.safe_operations != "off"

    def lint(
        self, env: Environment, project: Project, path: list[Revision], baseline: Baseline | None
    ) -> LintResult:
        """squawk on the SQL that would run: with safe_operations on, the rewritten form,
        and a note of the findings the rewrite removed from the form as written."""
        from safe_migrations.project.lint import lint_revisions, removed_by_rewrite

        if env.settings.migration.safe_operations == "off":
            return lint_revisions(project, path, baseline)
        written = lint_revisions(project, path, baseline)
        with self.safe_operations(env):
            result = lint_revisions(project, path, baseline)
        return removed_by_rewrite(written, result)

    def password_rejected(self, error: object) -> bool:
        return getattr(error, "pgcode", None) in AUTHENTICATION_FAILED

    def session_checks(self, env: Environment, connection: Connection) -> list[StepResult]:
        if not env.settings.health.check_blocking_sessions:
            return []
        from safe_migrations.engines.pgsessions import check_blocking_sessions

        return check_blocking_sessions(env, connection)

    def prepare(self, env: Environment) -> None:
        from safe_migrations.engines.pgwire import interruptible_queries

        interruptible_queries()

    def connect_args(
        self,
        env: Environment,
        role: str,
        lock_timeout: float | None,
        statement_timeout: float | None,
    ) -> dict[str, Any]:
        # libpq takes whole seconds and treats anything below 2 as 2.
        args: dict[str, Any] = {
            "connect_timeout": max(2, math.ceil(env.settings.database.connect_timeout)),
            "application_name": application_name(role),
            **keepalive_options(env.settings.database.network_timeout),
        }
        settings = []
        if lock_timeout is not None:
            settings.append(f"-c lock_timeout={int(lock_timeout * 1000)}")
        if statement_timeout is not None:
            settings.append(f"-c statement_timeout={int(statement_timeout * 1000)}")
        if settings:
            args["options"] = " ".join(settings)
        return args

    def listen(self, engine: SAEngine) -> None:
        from sqlalchemy import event

        from safe_migrations.engines.pgwire import check_client_connection

        event.listen(engine, "connect", check_client_connection)

    def tune_compare(self, context: Any) -> None:
        from safe_migrations.engines.pgcompare import batch_serial_checks

        batch_serial_checks(context)

    def migration_lock(
        self, env: Environment, wait: float
    ) -> contextlib.AbstractContextManager[None]:
        return _advisory_lock(env, wait)

    watches_lock_waits = True
    rehearsal_limits = None
    invalid_indexes = True
    tool_schema = "safe_migrations"

    def dump(
        self,
        env: Environment,
        target: Path,
        encrypted: bool,
        progress: Progress,
        snapshot: str | None = None,
    ) -> tuple[Stored | None, int, float]:
        from safe_migrations.engines.pgdump import dump_postgres, verify_postgres

        total = self.count_tables(env) if progress.enabled else 0  # only the line shows it
        stored = dump_postgres(env, target, total, progress, snapshot=snapshot)
        verify_started = time.perf_counter()
        return stored, stored.tables if stored else verify_postgres(env, target), verify_started

    def exported_snapshot(self, env: Environment) -> AbstractContextManager[tuple[str, Any]]:
        from safe_migrations.engines.pgproof import exported_snapshot

        return exported_snapshot(env)

    checksum = "hash64"  # one of pgproof.CHECKSUMS: every server has it

    def checksum_for(self, connection: Connection) -> str:
        from safe_migrations.engines.pgproof import checksum_for

        return checksum_for(connection)

    def fingerprints(
        self, connection: Connection, checksum: str | None = None
    ) -> dict[str, list[Any]]:
        from safe_migrations.engines.pgproof import fingerprints

        return fingerprints(connection, checksum or self.checksum)

    def fingerprints_beside(
        self, connection: Connection, work: Callable[[], T], checksum: str
    ) -> tuple[dict[str, list[Any]], T]:
        from safe_migrations.engines.pgproof import fingerprints_beside

        return fingerprints_beside(connection, checksum, work)

    def restored_fingerprints(
        self, env: Environment, scratch: Environment, path: Path, checksum: str | None = None
    ) -> tuple[dict[str, list[Any]], float]:
        from safe_migrations.engines.pgproof import restored_fingerprints

        return restored_fingerprints(env, scratch, path, checksum or self.checksum)

    def check_streamed_backup(self) -> None:
        """The custom format streams: pg_dump's output goes to the store as it is made."""

    def dump_to(
        self,
        env: Environment,
        sink: Any,
        name: str,
        tables: int,
        progress: Progress,
        snapshot: str | None = None,
    ) -> Stored:
        from safe_migrations.engines.pgdump import dump_postgres

        stored = dump_postgres(env, Path(name), tables, progress, sink, snapshot=snapshot)
        assert stored is not None  # streamed: always hashed on the way
        return stored

    def backup_contents(self, env: Environment, path: Path) -> list[str]:
        from safe_migrations.engines.pgrestore import archive_contents

        return archive_contents(env, path)

    def restore(self, env: Environment, path: Path) -> None:
        from safe_migrations.engines.pgrestore import restore_postgres

        restore_postgres(env, path)

    def database_copy(self, env: Environment, server: Environment) -> AbstractContextManager[Copy]:
        from safe_migrations.engines.pgcopies import database_copy

        return database_copy(env, server)

    def check_can_create(self, server: Environment) -> None:
        from safe_migrations.engines.pgcopies import check_can_create

        check_can_create(server)

    def copy_exists(self, server: Environment, name: str) -> bool:
        from safe_migrations.engines.pgcopies import copy_exists

        return copy_exists(server, name)

    def create_database(self, server: Environment, name: str, role: str) -> None:
        from safe_migrations.engines.pgcopies import create_database

        create_database(server, name, role)

    def drop_database(self, server: Environment, name: str, role: str) -> None:
        from safe_migrations.engines.pgcopies import drop_database

        drop_database(server, name, role)

    def backup_format(self, env: Environment) -> str:
        return env.settings.backup.format

    def backup_suffix(self, env: Environment) -> str:
        return ".dir" if env.settings.backup.format == "directory" else ".dump"

    def session_id(self, connection: Connection) -> int | None:
        return int(connection.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())

    def is_lock_timeout(self, exc: BaseException) -> bool:
        return getattr(getattr(exc, "orig", None), "pgcode", None) == LOCK_NOT_AVAILABLE

    def table_count(self, connection: Connection) -> int:
        from sqlalchemy import text

        return int(connection.execute(text(TABLE_COUNT_SQL)).scalar_one())

    def database_size(self, env: Environment, connection: Connection) -> int:
        from sqlalchemy import text

        return int(
            connection.execute(text("SELECT pg_database_size(current_database())")).scalar_one()
        )


def advisory_key(database: str) -> int:
    """A stable signed 64-bit key from the project constant and the database name."""
    digest = hashlib.sha256(f"{LOCK_NAMESPACE}:{database}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


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
