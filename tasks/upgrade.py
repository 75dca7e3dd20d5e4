"""The upgrade (and downgrade) step: Alembic in process, one transaction per revision,
lock and statement timeouts on the migration's connection, retries on lock timeouts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

from safe_migrations.alembic_api import (
    EnvPyContractError,
    Project,
    Revision,
    current_revision,
    downgrade_path,
    run_env_on,
    upgrade_path,
)
from safe_migrations.config import Environment
from safe_migrations.database import make_engine
from safe_migrations.errors import ToolError, first_line
from safe_migrations.masking import redact

Direction = Literal["upgrade", "downgrade"]
LOCK_NOT_AVAILABLE = "55P03"


@dataclass(frozen=True)
class AppliedRevision:
    revision: str
    message: str
    direction: Direction
    duration: float
    retries: int

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["duration"] = round(self.duration, 4)
        return data


class MigrationError(ToolError):
    """A revision failed; the database is at the last revision that completed."""

    def __init__(
        self, message: str, revision: str | None = None, applied: tuple[AppliedRevision, ...] = ()
    ) -> None:
        super().__init__(message)
        self.revision = revision
        self.applied = applied


@dataclass(frozen=True)
class MigrationAttempt:
    """A revision that hit the lock timeout and was rolled back to be tried again."""

    revision: str
    attempt: int
    error: str
    waited: float


class _Clock:
    """Times each revision from Alembic's on_version_apply callback."""

    def __init__(self, path: list[Revision], direction: Direction, retries: dict[str, int]):
        self.path = path
        self.direction = direction
        self.retries = retries
        self.done: list[AppliedRevision] = []
        self.mark = time.perf_counter()

    def __call__(self, *, ctx: Any, step: Any, heads: Any, run_args: Any) -> None:
        now = time.perf_counter()
        revision = step.up_revision_id  # the revision applied, or the one undone
        message = next((r.message for r in self.path if r.revision == revision), "")
        self.done.append(
            AppliedRevision(
                revision, message, self.direction, now - self.mark, self.retries.get(revision, 0)
            )
        )
        self.mark = now


def plan(
    project: Project, current: str | None, target: str | None, direction: Direction
) -> list[Revision]:
    scripts = project.scripts()
    if direction == "upgrade":
        return upgrade_path(scripts, current, target)
    return downgrade_path(scripts, current, target)


def is_lock_timeout(exc: BaseException) -> bool:
    orig = getattr(exc, "orig", None)
    return getattr(orig, "pgcode", None) == LOCK_NOT_AVAILABLE


def run_migrations(
    env: Environment,
    project: Project,
    target: str | None,
    direction: Direction = "upgrade",
    on_retry: Callable[[MigrationAttempt], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> list[AppliedRevision]:
    """Move the database to ``target``; raise MigrationError naming the failed revision.

    Each revision commits on its own, so a failure leaves the database at the
    last revision that completed. A lock timeout rolls the revision back and
    retries it with exponential backoff, up to ``migration.retries`` times.
    """
    from sqlalchemy.exc import DBAPIError

    settings = env.settings.migration
    postgres = not env.is_sqlite
    engine = make_engine(
        env,
        role="migrate",
        lock_timeout=settings.lock_timeout if postgres else None,
        statement_timeout=settings.statement_timeout if postgres else None,
    )
    retries: dict[str, int] = {}
    applied: list[AppliedRevision] = []
    try:
        while True:
            with engine.connect() as connection:
                current = current_revision(connection)
                connection.rollback()
                path = plan(project, current, target, direction)
                if not path:
                    return applied
                clock = _Clock(path, direction, retries)
                forced = {
                    "on_version_apply": clock,
                    "transaction_per_migration": settings.transaction_per_migration,
                }
                cfg = project.config(connection=connection)
                try:
                    run_env_on(cfg, connection, direction, target, forced)
                    applied += clock.done
                    return applied
                except EnvPyContractError:
                    raise  # nothing ran: env.py would have used another connection
                except Exception as exc:  # user code may raise anything; re-raised with its cause
                    if settings.transaction_per_migration:  # else the failure undid them all
                        applied += clock.done
                    failed = path[len(clock.done)] if len(clock.done) < len(path) else path[-1]
                    if isinstance(exc, DBAPIError) and is_lock_timeout(exc):
                        count = retries.get(failed.revision, 0)
                        if count < settings.retries:
                            wait = settings.retry_backoff * (2**count)
                            retries[failed.revision] = count + 1
                            if on_retry is not None:
                                on_retry(
                                    MigrationAttempt(failed.revision, count + 1, _short(exc), wait)
                                )
                            sleep(wait)
                            continue
                        raise MigrationError(
                            f"Revision {failed.revision} ({failed.message}) could not take its "
                            f"locks within lock_timeout={settings.lock_timeout:g}s after "
                            f"{count} retries; it was rolled back. Another session holds a lock "
                            "on a table it alters: find it with `invoke health`.",
                            failed.revision,
                            tuple(applied),
                        ) from exc
                    raise MigrationError(
                        f"Revision {failed.revision} ({failed.message}) failed and was rolled "
                        f"back: {redact(_short(exc), [env.password])}",
                        failed.revision,
                        tuple(applied),
                    ) from exc
    finally:
        engine.dispose()


def _short(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    return f"{type(orig).__name__}: {first_line(exc)}"
