"""The interface every engine implements: what the steps ask of a database.

``Engine`` holds what the engines share; each engine module overrides what differs,
as Alembic's ``DefaultImpl`` and its dialect impls do. What an engine cannot do is a
method that says so in one sentence (``Unsupported``). Imports nothing but the core:
``database.py`` builds its connections through an engine, and the engines above it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from safe_migrations.core.errors import BackupError, ConfigError

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


T = TypeVar("T")


class Unsupported(ConfigError):
    """What an engine cannot do, in one sentence naming the engine."""


class Engine:
    """One database engine's answers; stateless, one instance per engine."""

    name: ClassVar[str] = "base"
    # The README's engine table: an answer per row of engines/table.py.
    documented: ClassVar[dict[str, str]] = {}
    default_port: ClassVar[int | None] = None

    def cannot(self, what: str) -> Unsupported:
        return Unsupported(f"{what} is not available on {self.name}.")

    # --- connections -------------------------------------------------------------
    def prepare(self, env: Environment) -> None:
        """Before the first connection of an engine is built (a folder, a driver hook)."""

    def connect_args(
        self,
        env: Environment,
        role: str,
        lock_timeout: float | None,
        statement_timeout: float | None,
    ) -> dict[str, Any]:
        """The driver's arguments: timeouts, the session's name."""
        return {}

    def listen(self, engine: SAEngine) -> None:
        """Connect listeners for every new session (its limits, its settings): the
        session's role and limits are ``database.opened_for(record)``."""

    # --- the one-at-a-time lock ----------------------------------------------------
    def migration_lock(self, env: Environment, wait: float) -> AbstractContextManager[None]:
        raise self.cannot("A migration lock")

    # --- the upgrade ---------------------------------------------------------------
    # Sessions on this engine obey lock and statement timeouts (SQLite's do not).
    session_timeouts: ClassVar[bool] = True
    # DDL commits as it runs (MySQL): a failed revision may be partly applied.
    ddl_commits: ClassVar[bool] = False
    # A lock wait is watched from a second session (pg_locks), and an autocommit block
    # in a revision gets its lock timeout lifted (CREATE INDEX CONCURRENTLY).
    watches_lock_waits: ClassVar[bool] = False

    def session_id(self, connection: Connection) -> int | None:
        """The migration session's id on the server (None: the engine has none)."""
        return None

    def begin_migration(self, connection: Connection, wait: float) -> None:
        """On the migration's own session, before its first revision."""

    def safe_operations(
        self, env: Environment, resume: bool = False
    ) -> AbstractContextManager[Any]:
        """While a run (or its offline SQL) is made: Alembic's operations in the engine's
        non-blocking form, as ``migration.safe_operations`` says. What it yields has
        ``take()``: what was rewritten since the last call. Here: none, as written.
        ``resume`` (``migrate --resume``): only where the engine journals statements."""
        return nullcontext(None)

    def preflight(
        self, env: Environment, project: Project, path: list[Revision], connection: Connection
    ) -> None:
        """Before the first statement of an upgrade: refuse what cannot run safely."""

    def refuses(self, env: Environment) -> bool:
        """Whether ``preflight`` may refuse anything under the environment's settings (the
        pipeline then asks it before the prompt and the backup)."""
        return False

    def is_lock_timeout(self, exc: BaseException) -> bool:
        """The statement gave up waiting for a lock (the revision is retried)."""
        return False

    def open_transactions(self, env: Environment, own: int | None) -> list[Holder]:
        """After a lock timeout the watcher did not see: the sessions that may be ahead."""
        return []

    def wait_until_gone(self, env: Environment, pids: set[int], deadline: float) -> bool:
        """Wait until none of ``pids`` has a transaction open; False when it cannot tell."""
        return False

    def tune_compare(self, context: Any) -> None:
        """On a MigrationContext made for the models' compare: the same answers, fewer
        round trips (here: Alembic's compare as it is)."""

    # --- rehearsal, validation, backups ---------------------------------------------
    # Why a rehearsal here times revisions only (None: locks and rewrites are observed).
    rehearsal_limits: ClassVar[str | None] = "locks are not sampled on this engine"
    # Indexes can be left invalid by a failed build (PostgreSQL's CONCURRENTLY).
    invalid_indexes: ClassVar[bool] = False
    # The schema the tool's own tables live in (None: beside the application's).
    tool_schema: ClassVar[str | None] = None
    # What a failed, interrupted revision leaves, for the report.
    interrupted_revision: ClassVar[str] = "any revision in progress was rolled back"
    # rehearsal.server applies (a copy on another server of the same engine).
    copies_on_servers: ClassVar[bool] = True

    def backup_format(self, env: Environment) -> str:
        """The manifest's format name for this environment's dumps."""
        raise self.cannot("A backup")

    def backup_suffix(self, env: Environment) -> str:
        """How the names of this environment's dumps end (before ``.age``)."""
        raise self.cannot("A backup")

    def count_tables(self, env: Environment) -> int:
        """Tables the dump will hold (the progress line's denominator), on its own session."""
        from safe_migrations.core.database import connect

        with connect(env, role="backup") as connection:
            return self.table_count(connection)

    def dump(
        self,
        env: Environment,
        target: Path,
        encrypted: bool,
        progress: Progress,
        snapshot: str | None = None,
    ) -> tuple[Stored | None, int, float]:
        """Dump into ``target`` and read it back: what was stored (None: hash the file
        afterwards), its table count and when verification began."""
        raise self.cannot("A backup")

    # --- a backup proven by restoring it (backup.prove: restore) ---------------------
    def exported_snapshot(self, env: Environment) -> AbstractContextManager[tuple[str, Any]]:
        """A transaction whose snapshot ``dump(snapshot=...)`` dumps, and its id."""
        raise self.cannot("Proving a backup by restoring it (backup.prove)")

    # How new fingerprints checksum rows (recorded with them: a later proof checks a
    # backup the way its source was checked; manifests without it used "md5").
    checksum: ClassVar[str] = "md5"

    def checksum_for(self, connection: Connection) -> str:
        """How new fingerprints on ``connection``'s server checksum rows."""
        return self.checksum

    def fingerprints(
        self, connection: Connection, checksum: str | None = None
    ) -> dict[str, list[Any]]:
        """Each table's [rows, checksum] in the connection's transaction."""
        raise self.cannot("Proving a backup by restoring it (backup.prove)")

    def fingerprints_beside(
        self, connection: Connection, work: Callable[[], T], checksum: str
    ) -> tuple[dict[str, list[Any]], T]:
        """The fingerprints, and what ``work`` (the dump of the same snapshot) returns;
        here one after the other."""
        return self.fingerprints(connection, checksum), work()

    def restored_fingerprints(
        self, env: Environment, scratch: Environment, path: Path, checksum: str | None = None
    ) -> tuple[dict[str, list[Any]], float]:
        """Restore ``path`` into ``scratch``: its fingerprints and the restore's seconds."""
        raise self.cannot("Proving a backup by restoring it (backup.prove)")

    def check_streamed_backup(self) -> None:
        """Refuse, before anything is uploaded, a store this engine cannot stream into."""
        raise BackupError(
            f"backup.storage s3 does not take {self.name} backups yet; keep them local "
            "(backup.storage: local)."
        )

    def dump_to(
        self,
        env: Environment,
        sink: Any,
        name: str,
        tables: int,
        progress: Progress,
        snapshot: str | None = None,
    ) -> Stored:
        """Dump into a store's ``sink``, read back on the way; committed by the sink."""
        raise self.cannot("A backup streamed to backup.storage s3 (keep backup.storage: local)")

    def backup_contents(self, env: Environment, path: Path) -> list[str]:
        """Lines saying what a backup in clear holds (shown before a foreign restore)."""
        raise self.cannot("Reading a backup")

    def restore(self, env: Environment, path: Path) -> None:
        """Put the database back from a backup in clear, all or nothing."""
        raise self.cannot("A restore")

    def identity(self, env: Environment) -> dict[str, Any]:
        """Which database a URL names, without user or password: restore compares these."""
        from sqlalchemy.engine import make_url

        url = make_url(env.url)
        return {
            "engine": env.dialect,
            "host": url.host or "localhost",
            "port": url.port or self.default_port,
            "database": url.database,
        }

    # --- scratch databases: the rehearsal's copies, the stairway's empty database ----
    def database_copy(self, env: Environment, server: Environment) -> AbstractContextManager[Copy]:
        """An empty database on ``server`` owned by this process, dropped afterwards."""
        raise self.cannot("A rehearsal copy")

    def check_can_create(self, server: Environment) -> None:
        """Before any backup is taken for a rehearsal: refuse if no copy can be made."""

    def copy_exists(self, server: Environment, name: str) -> bool:
        raise self.cannot("A rehearsal copy")

    def create_database(self, server: Environment, name: str, role: str) -> None:
        raise self.cannot("A scratch database")

    def drop_database(self, server: Environment, name: str, role: str) -> None:
        raise self.cannot("A scratch database")

    def scratch_database(
        self, env: Environment, folder: Path
    ) -> AbstractContextManager[Environment]:
        """An empty database beside the environment's (the stairway's), dropped afterwards;
        ``folder`` is for engines whose databases are files."""
        return _server_scratch(self, env)

    # --- health --------------------------------------------------------------------
    # The query that returns the server's version (the connection check's answer).
    version_sql: ClassVar[str] = "SELECT 1"

    def password_rejected(self, error: object) -> bool:
        """The driver's error says the password (or the role) was refused."""
        return False

    def first_checks(self, env: Environment, connection: Connection) -> list[StepResult]:
        """Checks before any catalog query (which could queue behind what they look for);
        a failed one ends health there."""
        return []

    def session_checks(self, env: Environment, connection: Connection) -> list[StepResult]:
        """What other sessions or earlier runs hold that the migration would wait for."""
        return []

    # --- lint ----------------------------------------------------------------------
    # squawk's PostgreSQL rules apply to this engine's revisions (and --baseline with them).
    squawk_rules: ClassVar[bool] = True

    def lint(
        self, env: Environment, project: Project, path: list[Revision], baseline: Baseline | None
    ) -> LintResult:
        """The revisions' offline SQL checked: squawk's rules, rendered for PostgreSQL."""
        from safe_migrations.project.lint import lint_revisions

        return lint_revisions(project, path, baseline)

    # --- what the steps read -------------------------------------------------------
    def table_count(self, connection: Connection) -> int:
        """Tables of the database (the backup's progress, the manifest)."""
        raise self.cannot("Counting tables")

    def database_size(self, env: Environment, connection: Connection) -> int:
        """Bytes the database takes (health's disk check)."""
        raise self.cannot("The database's size")


@contextmanager
def _server_scratch(engine: Engine, env: Environment) -> Iterator[Environment]:
    from safe_migrations.engines.scratch import new_name, pointed_at

    name = new_name(env.settings.check.scratch_prefix)
    engine.create_database(env, name, "check")
    try:
        yield pointed_at(env, env, name)
    finally:
        engine.drop_database(env, name, "check")
