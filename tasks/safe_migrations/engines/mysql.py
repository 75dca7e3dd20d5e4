"""MySQL and MariaDB through PyMySQL: each session's limits (mysqlsession.py), the
migration lock as GET_LOCK (mysqlserver.py), and what health and backup read."""

from __future__ import annotations

import math
import time
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, ClassVar

from safe_migrations.core.database import application_name
from safe_migrations.engines.base import Engine

if TYPE_CHECKING:
    from pathlib import Path

    from sqlalchemy.engine import Connection
    from sqlalchemy.engine import Engine as SAEngine

    from safe_migrations.core.config import Environment
    from safe_migrations.core.results import StepResult
    from safe_migrations.engines.scratch import Copy
    from safe_migrations.pipeline.lockwait import Holder
    from safe_migrations.project.alembic_api import Project, Revision
    from safe_migrations.project.baseline import Baseline
    from safe_migrations.project.lint import LintResult
    from safe_migrations.stores.backupfiles import Progress, Stored


ACCESS_DENIED = 1045


class MySQL(Engine):
    name = "MySQL/MariaDB"
    default_port = 3306
    version_sql = "SELECT VERSION()"

    # The README's engine table (engines/table.py renders it; a test compares).
    documented: ClassVar[dict[str, str]] = {
        "tasks": "yes",
        "one_at_a_time": (
            "`GET_LOCK(name, timeout)`; the holder named from the processlist (connection, user, "
            "host; another user's only with `PROCESS`)"
        ),
        "lock_waits": (
            "`lock_wait_timeout` and `innodb_lock_wait_timeout`: `migration.lock_timeout` rounded"
            " **up to whole seconds, at least 1** (0.2 becomes 1 s: MySQL has nothing shorter, so"
            " traffic can queue up to a second behind a DDL statement); after a timeout the open "
            "transactions (`information_schema.innodb_trx`) are named and watched, and the "
            "revision is retried the moment they end, within `migration.lock_budget`"
        ),
        "statement_limit": (
            "MariaDB: `max_statement_time`; MySQL: `max_execution_time`, which covers SELECT "
            "only, so DDL there has no limit"
        ),
        "failed_revision": (
            "rolled back when it had run no DDL; otherwise **partly applied**: each committed "
            "statement journaled as it commits, every run blocks (exit 3) until "
            "`invoke migrate --resume` (skips what the journal and the catalog prove applied) "
            "or `invoke resolve`"
        ),
        "health_basics": "yes (size from `information_schema.tables`)",
        "health_sessions": (
            "transactions older than `health.max_transaction_age` (`innodb_trx`, which needs the "
            "global PROCESS privilege: without it a warning names the grant and the run goes on);"
            " metadata-lock holders only where `performance_schema` records them (off by default "
            "on MariaDB: a warning says they cannot be seen)"
        ),
        "backup": (
            "`mariadb-dump` (or `mysqldump` for a MySQL server), gzip in a thread beside it, "
            "checked from the stream's end; local folder or S3 store, `encrypt_to` as for "
            "PostgreSQL"
        ),
        "restore": "proven on a scratch database first, then replayed; see below",
        "validate": "yes",
        "zero_downtime": (
            "`migration.online_ddl` (`enforce` in the shipped environments): each `ALTER TABLE`,"
            " `CREATE INDEX` and `DROP INDEX` Alembic issues carries `ALGORITHM=INSTANT`, else "
            "`ALGORITHM=INPLACE, LOCK=NONE`; one the server can only copy or lock is refused "
            "before it runs (exit 1), `warn` runs it saying so; `migration.safe_operations` is "
            "PostgreSQL's and ignored here"
        ),
        "lint": (
            "squawk does not apply and is skipped, said in one sentence; our own check warns "
            "about revisions with several DDL statements; `--baseline` refused"
        ),
        "check": "yes",
        "rehearse": (
            "timed on a copy restored from the backup; locks are not sampled, and the report says"
            " so"
        ),
        "fleets": (
            "members listed in `fleet.databases` run the same single-database steps (not covered "
            "by the MySQL tests yet); `fleet.discover` lists PostgreSQL databases only"
        ),
    }

    def password_rejected(self, error: object) -> bool:
        return getattr(error, "args", (None,))[:1] == (ACCESS_DENIED,)

    def first_checks(self, env: Environment, connection: Connection) -> list[StepResult]:
        # MySQL goes on executing a killed runner's statement: catalog reads would queue
        # behind it, and nothing may start beside it.
        from safe_migrations.engines.mysqlchecks import check_earlier_run

        return [check_earlier_run(connection)]

    def session_checks(self, env: Environment, connection: Connection) -> list[StepResult]:
        from safe_migrations.engines.mysqlchecks import check_mysql_sessions, check_partly_applied

        results = [check_partly_applied(env, connection)]
        if env.settings.health.check_blocking_sessions:
            results += check_mysql_sessions(env, connection)
        return results

    def prepare(self, env: Environment) -> None:
        from safe_migrations.engines.mysqlsession import share_preferred_tls_context

        share_preferred_tls_context()

    def connect_args(
        self,
        env: Environment,
        role: str,
        lock_timeout: float | None,
        statement_timeout: float | None,
    ) -> dict[str, Any]:
        return {
            "connect_timeout": max(1, math.ceil(env.settings.database.connect_timeout)),
            # A peer gone silent: a write that is never acknowledged fails here. No read
            # timeout: a long DDL statement is silent on the wire until it ends.
            "write_timeout": max(1, math.ceil(env.settings.database.network_timeout)),
            "program_name": application_name(role),
        }

    def listen(self, engine: SAEngine) -> None:
        from sqlalchemy import event

        from safe_migrations.engines.mysqlsession import session_limits

        event.listen(engine, "connect", session_limits)

    def migration_lock(self, env: Environment, wait: float) -> AbstractContextManager[None]:
        from safe_migrations.engines.mysqlserver import named_lock

        return named_lock(env, wait)

    ddl_commits = True
    rehearsal_limits = (
        "MySQL/MariaDB: each revision is timed on a copy restored from the backup; locks are "
        "not sampled (metadata locks are visible only with performance_schema), so lock and "
        "rewrite details are PostgreSQL-only"
    )
    interrupted_revision = (
        "a revision in progress may be partly applied (MySQL commits DDL as it runs): "
        "check `invoke status` and the schema"
    )

    def dump(
        self,
        env: Environment,
        target: Path,
        encrypted: bool,
        progress: Progress,
        snapshot: str | None = None,
    ) -> tuple[Stored | None, int, float]:
        from safe_migrations.engines.mysqldump import dump_mysql

        total = self.count_tables(env) if progress.enabled else 0  # only the line shows it
        stored = dump_mysql(env, target, total, progress)
        return stored, stored.tables, time.perf_counter()  # checked from the stream's end

    def check_streamed_backup(self) -> None:
        """The dump streams: compressed, encrypted and uploaded as it is made."""

    def dump_to(
        self,
        env: Environment,
        sink: Any,
        name: str,
        tables: int,
        progress: Progress,
        snapshot: str | None = None,
    ) -> Stored:
        from pathlib import Path

        from safe_migrations.engines.mysqldump import dump_mysql

        return dump_mysql(env, Path(name), tables, progress, sink)

    def backup_contents(self, env: Environment, path: Path) -> list[str]:
        from safe_migrations.engines.mysqldump import dump_tables

        names = dump_tables(path)
        return [f"tables ({len(names)}): {', '.join(sorted(names))}"]

    def restore(self, env: Environment, path: Path) -> None:
        from safe_migrations.engines.mysqldump import restore_mysql

        restore_mysql(env, path)

    def database_copy(self, env: Environment, server: Environment) -> AbstractContextManager[Copy]:
        from safe_migrations.engines.mysqlcopies import database_copy

        return database_copy(env, server)

    def copy_exists(self, server: Environment, name: str) -> bool:
        from safe_migrations.engines.mysqlcopies import copy_exists

        return copy_exists(server, name)

    def create_database(self, server: Environment, name: str, role: str) -> None:
        from safe_migrations.engines.mysqlcopies import create_database

        create_database(server, name, role)

    def drop_database(self, server: Environment, name: str, role: str) -> None:
        from safe_migrations.engines.mysqlcopies import drop_database

        drop_database(server, name, role)

    squawk_rules = False

    def refuses(self, env: Environment) -> bool:
        return env.settings.migration.online_ddl != "off"

    def preflight(
        self, env: Environment, project: Project, path: list[Revision], connection: Connection
    ) -> None:
        from safe_migrations.engines.mysqlrefusals import preflight

        preflight(env, project, path, connection)

    def safe_operations(
        self, env: Environment, resume: bool = False
    ) -> AbstractContextManager[Any]:
        from safe_migrations.engines.mysqlonline import online_ddl

        return online_ddl(env, resume)

    def lint(
        self, env: Environment, project: Project, path: list[Revision], baseline: Baseline | None
    ) -> LintResult:
        """MySQL commits each DDL statement: revisions with several are what is checked."""
        from safe_migrations.project.lint import lint_mysql

        return lint_mysql(project, path, "mysql")  # rendered offline with MySQL's dialect

    def backup_format(self, env: Environment) -> str:
        return "mysql"

    def backup_suffix(self, env: Environment) -> str:
        return ".sql.gz"

    def session_id(self, connection: Connection) -> int | None:
        return int(connection.exec_driver_sql("SELECT CONNECTION_ID()").scalar_one())

    def begin_migration(self, connection: Connection, wait: float) -> None:
        from safe_migrations.engines.mysqlserver import hold_session

        hold_session(connection, wait)

    def is_lock_timeout(self, exc: BaseException) -> bool:
        from safe_migrations.engines.mysqlserver import is_lock_timeout

        return is_lock_timeout(exc)

    def open_transactions(self, env: Environment, own: int | None) -> list[Holder]:
        from safe_migrations.engines.mysqlserver import transaction_holders

        return [h for h in transaction_holders(env) if h.pid != own]

    def wait_until_gone(self, env: Environment, pids: set[int], deadline: float) -> bool:
        from safe_migrations.engines.mysqlserver import wait_until_gone

        return wait_until_gone(env, pids, deadline)

    def table_count(self, connection: Connection) -> int:
        from sqlalchemy import text

        return int(
            connection.execute(
                text(
                    "SELECT count(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE()"
                )
            ).scalar_one()
        )

    def database_size(self, env: Environment, connection: Connection) -> int:
        from safe_migrations.engines.mysqlserver import database_size

        return database_size(connection)
