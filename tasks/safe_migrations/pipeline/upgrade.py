"""The upgrade (and downgrade) step: Alembic in process, one transaction per revision,
lock and statement timeouts on the migration's connection, and lock waits that never
queue the application for longer than one short lock timeout (lockwait.py).

Kept long: the revision loop, its per-revision retry on a lock timeout and the observer
hooks share one connection's state; the lock-wait watcher is already apart
(lockwait.py).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from safe_migrations.core.config import Environment
from safe_migrations.core.database import make_engine
from safe_migrations.core.errors import JournalError, ToolError, first_line
from safe_migrations.core.masking import redact
from safe_migrations.core.results import fields_copied
from safe_migrations.engines import engine_for
from safe_migrations.pipeline.lockwait import (
    Cancelled,
    Holder,
    Wait,
    cancel_idle_holders,
    holders,
    jitter,
    wait_until_released,
    watching,
)
from safe_migrations.pipeline.partial import StatementLog, met_own_objects
from safe_migrations.project.alembic_api import (
    EnvPyContractError,
    Project,
    Revision,
    current_revision,
    downgrade_path,
    run_env_on,
    upgrade_path,
)

Direction = Literal["upgrade", "downgrade"]


@dataclass(frozen=True)
class AppliedRevision:
    revision: str
    message: str
    direction: Direction
    duration: float
    retries: int
    # It ran an autocommit block: past it nothing could be rolled back, so it waited
    # for its locks without a lock timeout and was not retried from there.
    autocommit: bool = False
    # Operations the engine ran in their non-blocking form (migration.safe_operations).
    rewritten: tuple[dict[str, Any], ...] = ()
    # Each statement's kind ("ALTER TABLE", never its text), start and seconds (telemetry).
    statements: tuple[dict[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        data = fields_copied(self)
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
    """A revision that hit the lock timeout, was rolled back, waited for the holders from
    the side (``waited`` seconds) and was tried again."""

    revision: str
    attempt: int
    error: str
    waited: float
    relation: str | None = None
    mode: str | None = None
    holders: tuple[dict[str, Any], ...] = ()
    cancelled: tuple[dict[str, Any], ...] = ()


class Observer(Protocol):
    """Watches a migration from beside it (rehearsal.py): called on the migration's own
    connection before the first revision of each attempt, and inside each revision's
    transaction once it has run, before it commits."""

    def begin(self, connection: Any, pid: int | None) -> None: ...

    def applied(self, connection: Any, revision: str) -> None: ...


MAX_STATEMENTS = 500  # timed per revision; a data migration's loop is not a trace
_KIND = re.compile(
    r"\s*(CREATE|ALTER|DROP|RENAME|TRUNCATE|COMMENT|INSERT|UPDATE|DELETE|LOCK|"
    r"SELECT|WITH|GRANT|REVOKE)\b(\s+(?:UNIQUE\s+)?[A-Z]+)?",
    re.IGNORECASE,
)


def statement_kind(statement: str) -> str | None:
    """ "ALTER TABLE", "CREATE INDEX", "UPDATE": what a statement is, without a name or
    value of it; None for the version table's bookkeeping and the session's settings."""
    if "alembic_version" in statement:
        return None
    found = _KIND.match(statement)
    if found is None:
        return None
    verb, what = found.group(1).upper(), (found.group(2) or "").split()
    objects = {
        "TABLE",
        "INDEX",
        "VIEW",
        "SEQUENCE",
        "TYPE",
        "SCHEMA",
        "FUNCTION",
        "TRIGGER",
        "EXTENSION",
        "CONSTRAINT",
        "COLUMN",
        "MATERIALIZED",
        "UNIQUE",
    }
    if verb in {"CREATE", "ALTER", "DROP", "COMMENT"} and what and what[-1].upper() in objects:
        return f"{verb} {what[-1].upper()}"
    return verb


class _Clock:
    """Times each revision from Alembic's on_version_apply callback, and notes the
    revisions that ran an autocommit block (PostgreSQL: from there they wait for
    locks without a timeout, since their autocommit part cannot be rolled back)."""

    def __init__(
        self,
        path: list[Revision],
        direction: Direction,
        retries: dict[str, int],
        lock_ms: int,
        observer: Observer | None = None,
        log: StatementLog | None = None,
        rewrites: Any = None,
    ) -> None:
        self.rewrites = rewrites
        self.path = path
        self.messages = {r.revision: r.message for r in path}  # read once per revision
        self.log = log
        self.observer = observer
        self.direction = direction
        self.retries = retries
        self.lock_ms = lock_ms
        self.done: list[AppliedRevision] = []
        self.autocommitted: set[str] = set()
        self.mark = time.perf_counter()
        self.statements: list[dict[str, Any]] = []
        self._sent_at = self.mark

    def time_statements(self, connection: Any) -> None:
        """Each statement of the revision running: its kind and timing, no text."""
        from sqlalchemy import event

        event.listen(connection, "before_cursor_execute", self._sent)
        event.listen(connection, "after_cursor_execute", self._answered)

    def _sent(self, *_args: Any) -> None:
        self._sent_at = time.perf_counter()

    def _answered(self, _conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        kind = statement_kind(statement)
        if kind is not None and len(self.statements) < MAX_STATEMENTS:
            now = time.perf_counter()
            self.statements.append(
                {
                    "kind": kind,
                    "offset": round(self._sent_at - self.mark, 4),
                    "seconds": round(now - self._sent_at, 4),
                }
            )

    def running(self) -> Revision:
        return self.path[min(len(self.done), len(self.path) - 1)]

    def __call__(self, *, ctx: Any, step: Any, heads: Any, run_args: Any) -> None:
        now = time.perf_counter()
        revision = step.up_revision_id  # the revision applied, or the one undone
        message = self.messages.get(revision, "")
        autocommit = revision in self.autocommitted
        applied = getattr(self.rewrites, "applied", None)
        if applied is not None:  # the engine's journal record goes with the version update
            applied(ctx.connection)
        if autocommit:  # the next revision gets its lock timeout back
            ctx.connection.exec_driver_sql(f"SET lock_timeout = {self.lock_ms}")
        self.done.append(
            AppliedRevision(
                revision,
                message,
                self.direction,
                now - self.mark,
                self.retries.get(revision, 0),
                autocommit,
                tuple(self.rewrites.take()) if self.rewrites is not None else (),
                tuple(self.statements),
            )
        )
        self.mark, self.statements = now, []
        if self.log is not None:
            self.log.next_revision()
        if self.observer is not None:
            self.observer.applied(ctx.connection, revision)

    def guard_autocommit(self, context: Any) -> None:
        """Wrap the MigrationContext's autocommit_block (what ``op.get_context()`` returns)."""
        original = context.autocommit_block

        @contextmanager
        def autocommit_block() -> Iterator[None]:
            self.autocommitted.add(self.running().revision)
            context.connection.exec_driver_sql("SET lock_timeout = 0")
            with original():
                yield

        context.autocommit_block = autocommit_block


def _context_hook(clock: _Clock, guard: bool, rewrites: Any) -> Callable[[Any], None]:
    """What the run's MigrationContext gets: the autocommit guard where lock waits are
    watched, and the engine's statement rewrite where it has one (``attach``)."""
    attach = getattr(rewrites, "attach", None)

    def hook(context: Any) -> None:
        if guard:
            clock.guard_autocommit(context)
        if attach is not None:
            attach(context, clock.running, clock.direction)

    return hook


def plan(
    project: Project, current: str | None, target: str | None, direction: Direction
) -> list[Revision]:
    scripts = project.scripts()
    if direction == "upgrade":
        return upgrade_path(scripts, current, target)
    return downgrade_path(scripts, current, target)


def run_migrations(
    env: Environment,
    project: Project,
    target: str | None,
    direction: Direction = "upgrade",
    on_retry: Callable[[MigrationAttempt], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    observer: Observer | None = None,
    resume: bool = False,
    checked: tuple[str, ...] = (),
) -> list[AppliedRevision]:
    """Move the database to ``target``; raise MigrationError naming the failed revision.

    Each revision commits on its own, so a failure leaves the database at the last
    revision that completed. A lock timeout rolls the revision back; the runner then
    watches the sessions it queued behind and starts the revision again from the top
    the moment they let go, within ``migration.lock_budget`` seconds per revision.

    Where the engine has them, Alembic's operations run in their non-blocking form
    (``migration.safe_operations``), after a preflight that refuses what cannot
    (skipped when ``checked`` names the same pending revisions: the pipeline asked it
    before the prompt and the backup).
    """
    settings = env.settings.migration
    impl = engine_for(env.dialect)
    engine = make_engine(
        env,
        role="migrate",
        lock_timeout=settings.lock_timeout if impl.session_timeouts else None,
        statement_timeout=settings.statement_timeout if impl.session_timeouts else None,
    )
    try:
        with impl.safe_operations(env, resume) as rewrites:
            return _attempts(
                env,
                project,
                target,
                direction,
                on_retry,
                sleep,
                observer,
                engine,
                rewrites,
                checked,
            )
    finally:
        engine.dispose()


def _attempts(
    env: Environment,
    project: Project,
    target: str | None,
    direction: Direction,
    on_retry: Callable[[MigrationAttempt], None] | None,
    sleep: Callable[[float], None],
    observer: Observer | None,
    engine: Any,
    rewrites: Any,
    checked: tuple[str, ...] = (),
) -> list[AppliedRevision]:
    """The attempts of run_migrations, each revision retried after a lock timeout.

    Kept long: the engine's session set-up, the retry bookkeeping and the partial-run
    record share one connection's lifetime."""
    from sqlalchemy.exc import DBAPIError

    settings = env.settings.migration
    impl = engine_for(env.dialect)
    retries: dict[str, int] = {}
    started: dict[str, float] = {}  # when each revision's first attempt began
    applied: list[AppliedRevision] = []
    preflown = False
    while True:
        with engine.connect() as connection:
            current = current_revision(connection)
            # The session's id: watched from the side where the engine does that,
            # else left out of the holders named after a lock timeout.
            session = impl.session_id(connection)
            pid = session if impl.watches_lock_waits else None
            own = None if impl.watches_lock_waits else session
            impl.begin_migration(connection, settings.lock_wait)
            if observer is not None:
                observer.begin(connection, pid)
            connection.rollback()
            path = plan(project, current, target, direction)
            if not path:
                return applied
            if not preflown and direction == "upgrade":  # before the first statement
                if tuple(r.revision for r in path) != checked:
                    impl.preflight(env, project, path, connection)
                    connection.rollback()
                preflown = True
            lock_ms = int(settings.lock_timeout * 1000)
            log = StatementLog() if impl.ddl_commits else None
            if log is not None:
                log.attach(connection)
            clock = _Clock(path, direction, retries, lock_ms, observer, log, rewrites)
            if hasattr(rewrites, "running"):  # the engine's guards ask which revision runs
                rewrites.running, rewrites.project = clock.running, project
            clock.time_statements(connection)
            forced = {
                "on_version_apply": clock,
                "transaction_per_migration": settings.transaction_per_migration,
            }
            cfg = project.config(connection=connection)
            hook = _context_hook(clock, impl.watches_lock_waits, rewrites)
            with watching(env, pid) as watcher:
                try:
                    run_env_on(cfg, connection, direction, target, forced, on_context=hook)
                    applied += clock.done
                    return applied
                except (EnvPyContractError, JournalError):
                    raise  # nothing ran: env.py's connection, or a journal that proves nothing
                except Exception as exc:  # user code may raise anything; re-raised with cause
                    if settings.transaction_per_migration:  # else the failure undid them all
                        applied += clock.done
                    failed = clock.running()
                    began = time.monotonic() - (time.perf_counter() - clock.mark)
                    started.setdefault(failed.revision, began)
                    if log is not None and (log.committed() or met_own_objects(log, exc)):
                        raise _partly_applied(env, failed, direction, log, exc, applied) from exc
                    if not (isinstance(exc, DBAPIError) and impl.is_lock_timeout(exc)):
                        raise _failure(env, failed, clock, exc, applied) from exc
                    seen = watcher.take() if watcher is not None else None
                    attempt = _wait_out(env, failed, retries, started, seen, exc, sleep, own)
                    if on_retry is not None:
                        on_retry(attempt)
                    if time.monotonic() >= started[failed.revision] + settings.lock_budget:
                        raise _out_of_budget(env, failed, attempt, applied) from exc
                    sleep(jitter(settings.lock_timeout))


def _wait_out(
    env: Environment,
    failed: Revision,
    retries: dict[str, int],
    started: dict[str, float],
    seen: Wait | None,
    exc: BaseException,
    sleep: Callable[[float], None],
    own: int | None = None,
) -> MigrationAttempt:
    """After a lock timeout: who was ahead, then wait from the side until they let go
    (terminating idle-in-transaction holders when the environment says so)."""
    settings = env.settings.migration
    retries[failed.revision] = retries.get(failed.revision, 0) + 1
    deadline = started[failed.revision] + settings.lock_budget
    impl = engine_for(env.dialect)
    found = holders(env, seen) if seen is not None else impl.open_transactions(env, own)
    cancelled: list[Cancelled] = []
    began = time.monotonic()
    if seen is None and found:
        impl.wait_until_gone(env, {h.pid for h in found}, deadline)
    elif seen is None:  # the watcher missed it: a short pause instead of a watch
        sleep(max(0.0, min(deadline - began, max(settings.lock_timeout, 0.1))))
    else:
        after = settings.cancel_blockers_after

        def tick() -> None:
            if after is None:
                return
            done = {c.pid for c in cancelled if c.done}
            fresh = [h for h in holders(env, seen) if h.pid not in done]
            cancelled.extend(
                c for c in cancel_idle_holders(env, fresh, after) if c not in cancelled
            )

        wait_until_released(env, seen, deadline, tick)
    return MigrationAttempt(
        failed.revision,
        retries[failed.revision],
        _short(exc),
        round(time.monotonic() - began, 3),
        seen.name if seen else None,
        seen.mode if seen else None,
        tuple(h.to_dict() for h in found),
        tuple(c.to_dict() for c in _unique(cancelled)),
    )


def _unique(cancelled: list[Cancelled]) -> list[Cancelled]:
    by_pid: dict[int, Cancelled] = {}
    for each in cancelled:
        if each.done or each.pid not in by_pid:
            by_pid[each.pid] = each
    return list(by_pid.values())


def _out_of_budget(
    env: Environment, failed: Revision, attempt: MigrationAttempt, applied: list[AppliedRevision]
) -> MigrationError:
    settings = env.settings.migration
    who = "; ".join(_describe(h) for h in attempt.holders) or "sessions this role cannot see"
    what = f"{attempt.mode} on {attempt.relation}" if attempt.relation else "its locks"
    return MigrationError(
        f"Revision {failed.revision} ({failed.message}) could not take {what} within "
        f"migration.lock_budget={settings.lock_budget:g}s ({attempt.attempt} attempt(s), each "
        f"queueing at most lock_timeout={settings.lock_timeout:g}s); it was rolled back. "
        f"Held by: {who}. End or wait out those sessions, then run again.",
        failed.revision,
        tuple(applied),
    )


class PartlyAppliedError(MigrationError):
    """MySQL: a revision failed after some of its statements had been committed."""

    def __init__(
        self,
        message: str,
        revision: str,
        applied: tuple[AppliedRevision, ...],
        partial: dict[str, Any],
    ) -> None:
        super().__init__(message, revision, applied)
        self.partial = partial


def _partly_applied(
    env: Environment,
    failed: Revision,
    direction: Direction,
    log: StatementLog,
    exc: BaseException,
    applied: list[AppliedRevision],
) -> PartlyAppliedError:
    """Say exactly what MySQL kept, record it in the database for the next run's health
    step, and never call it rolled back."""
    from safe_migrations.pipeline import partial
    from safe_migrations.pipeline.status import read_current

    statements = log.committed()
    error = redact(_short(exc), [env.password])
    version = read_current(env)
    details = {
        "revision": failed.revision,
        "direction": direction,
        "committed_statements": statements,
        "failed_statement": log.failing(),
        "version_table": version,
        "recorded": True,
    }
    try:
        partial.record(env, direction, failed.revision, statements, error, version)
    except Exception as problem:  # noqa: BLE001 - the report must still say what happened
        details["recorded"] = False
        details["record_error"] = redact(_short(problem), [env.password])
    ran = partial.summary(statements)
    kept = (
        f"MySQL commits DDL as it runs, so {len(statements)} statement(s) stay applied and "
        f"could not be rolled back: {ran}."
        if statements
        else "its own objects are already there: an earlier attempt (a killed runner whose "
        "statements ran on) applied part of it."
    )
    message = (
        f"Revision {failed.revision} ({failed.message}) failed: {error}. It is partly applied: "
        f"{kept} The version table was not advanced, it is at {version or 'base'}. "
        + (
            "The next run blocks until you fix the schema by hand and run "
            f"`invoke resolve --env {env.name} --revision {failed.revision} --applied` "
            "(finished) or `--reverted` (undone)"
            + (
                f", or fix the cause and run `invoke migrate --env {env.name} --resume`."
                if direction == "upgrade"
                else "."
            )
            if details["recorded"]
            else "Recording this in the database failed too; fix the schema by hand before "
            "the next run."
        )
    )
    return PartlyAppliedError(message, failed.revision, tuple(applied), details)


def _describe(holder: dict[str, Any]) -> str:
    return Holder(**holder).describe()


def _failure(
    env: Environment,
    failed: Revision,
    clock: _Clock,
    exc: BaseException,
    applied: list[AppliedRevision],
) -> MigrationError:
    note = (
        " Its autocommit block had already run and is not rolled back."
        if failed.revision in clock.autocommitted
        else ""
    )
    taken = clock.rewrites.take() if clock.rewrites is not None else []
    done = [d for d in taken if d.get("outcome", "ran") == "ran"]
    if done:  # rewritten parts commit one by one; each is idempotent, so a rerun completes
        parts = "; ".join(f"{d['operation']} {d['target']}" for d in done)
        note += (
            f" These operations had run in their non-blocking form and stay applied: {parts};"
            " running the revision again completes it."
        )
    return MigrationError(
        f"Revision {failed.revision} ({failed.message}) failed and was rolled "
        f"back: {redact(_short(exc) + _where(exc, failed), [env.password])}.{note}",
        failed.revision,
        tuple(applied),
    )


def _where(exc: BaseException, failed: Revision) -> str:
    """For an error with no text of its own (a bare ``assert``): the line of the revision
    file it was raised at, so the sentence says where to look."""
    import traceback

    if str(getattr(exc, "orig", None) or exc).strip():
        return ""
    name = Path(failed.path).name
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename).name == name]
    if not frames:
        return f" in {failed.path}"
    frame = frames[-1]
    return f" at {failed.path}, line {frame.lineno}: {(frame.line or '').strip()}"


def _short(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    if not str(orig).strip():  # no text: the type alone (and _where says where)
        return type(orig).__name__
    return f"{type(orig).__name__}: {first_line(exc)}"
