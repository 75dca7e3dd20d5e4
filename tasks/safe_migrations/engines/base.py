"""The interface every engine implements: what the steps ask of a database.

``Engine`` holds what the engines share; each engine module overrides what differs,
as Alembic's ``DefaultImpl`` and its dialect impls do. What an engine cannot do is a
method that says so in one sentence (``Unsupported``). Imports nothing but the core:
``database.py`` builds its connections through an engine, and the engines above it.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, ClassVar

from safe_migrations.core.errors import ConfigError

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection
    from sqlalchemy.engine import Engine as SAEngine

    from safe_migrations.core.config import Environment
    from safe_migrations.pipeline.lockwait import Holder


class Unsupported(ConfigError):
    """What an engine cannot do, in one sentence naming the engine."""


class Engine:
    """One database engine's answers; stateless, one instance per engine."""

    name: ClassVar[str] = "base"
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

    def listen(
        self, engine: SAEngine, lock_timeout: float | None, statement_timeout: float | None
    ) -> None:
        """Connect listeners for every new session (its limits, its settings)."""

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

    def is_lock_timeout(self, exc: BaseException) -> bool:
        """The statement gave up waiting for a lock (the revision is retried)."""
        return False

    def open_transactions(self, env: Environment, own: int | None) -> list[Holder]:
        """After a lock timeout the watcher did not see: the sessions that may be ahead."""
        return []

    def wait_until_gone(self, env: Environment, pids: set[int], deadline: float) -> bool:
        """Wait until none of ``pids`` has a transaction open; False when it cannot tell."""
        return False

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

    # --- what the steps read -------------------------------------------------------
    def table_count(self, connection: Connection) -> int:
        """Tables of the database (the backup's progress, the manifest)."""
        raise self.cannot("Counting tables")

    def database_size(self, env: Environment, connection: Connection) -> int:
        """Bytes the database takes (health's disk check)."""
        raise self.cannot("The database's size")
