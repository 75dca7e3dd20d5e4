"""One run's state, carried from step to step: what was asked, where, what was learnt.

Like pytest-alembic's ``MigrationContext``: every step takes the run and nothing
else, records its own result (or its own skip) and talks to the user through
the run's console. ``recorded`` writes the report whatever happens.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

from safe_migrations.core.config import Environment
from safe_migrations.core.errors import EXIT_BLOCKED, EXIT_OK, ToolError
from safe_migrations.core.escaping import terminal
from safe_migrations.core.masking import redact, redact_data
from safe_migrations.core.results import StepResult, format_results
from safe_migrations.pipeline import report
from safe_migrations.pipeline.report import RunRecord, reported, write_report
from safe_migrations.pipeline.status import reread_current
from safe_migrations.pipeline.upgrade import Direction
from safe_migrations.project.alembic_api import Project, Revision, project_for
from safe_migrations.project.drift import Before
from safe_migrations.stores.backupfiles import Progress


@dataclass(frozen=True)
class RunOptions:
    """The flags of `migrate`/`downgrade`, as plain values."""

    revision: str = "head"
    direction: Direction = "upgrade"
    backup: bool | None = None  # None: the environment decides
    skip_health_checks: bool = False
    skip_validation: bool = False
    yes: bool = False
    dry_run: bool = False
    interactive: bool = False
    operation: str | None = None
    # rollback: where the database must be (a revision or "base"), checked under the lock
    expect_current: str | None = None
    # MySQL: a partly applied revision goes on after what its journal shows committed
    resume: bool = False


def _say(text: str) -> None:
    print(terminal(text))


def _ask(prompt: str) -> str:
    return input(terminal(prompt))


def _warn(text: str) -> None:
    print(terminal(text), file=sys.stderr)


@dataclass
class Console:
    """Where a run talks to its user; tests pass their own. Terminal output is stripped
    of control characters: revision messages are written by anyone."""

    say: Callable[[str], None] = _say
    ask: Callable[[str], str] = _ask
    progress: Progress | None = None
    warn: Callable[[str], None] = _warn


@dataclass
class Run:
    """A run in progress: the environment, project, options, console and its record,
    plus what the steps learn (target, current revision, pending revisions)."""

    env: Environment
    project: Project
    options: RunOptions
    console: Console
    record: RunRecord
    target: str | None = None
    current: str | None = None
    pending: list[Revision] = field(default_factory=list)
    refusals_checked: tuple[str, ...] = ()  # the pending revisions the refusals step passed
    lock_wait: float = 0.0
    drift_before: Before | None = None  # differences from the models before the run
    # (revision,) as the health step read it (a None revision: base); None: it read none
    read_by_health: tuple[str | None] | None = None
    # (revision,) as validation read it after the run: the record's post-revision
    read_by_validation: tuple[str | None] | None = None

    @classmethod
    def start(
        cls,
        env: Environment,
        options: RunOptions,
        project: Project | None = None,
        console: Console | None = None,
        operation: str | None = None,
    ) -> Run:
        record = RunRecord(
            environment=env.name,
            operation=operation or options.operation or options.direction,
            url=env.masked_url,
            dry_run=options.dry_run,
        )
        return cls(env, project or project_for(env), options, console or Console(), record)

    def step(self, result: StepResult) -> StepResult:
        """Record a step's result and show it."""
        self.record.add_step(result)
        self.console.say(format_results([result]))
        return result

    def skip(self, name: str, why: str) -> None:
        self.step(StepResult(name, True, f"skipped ({why})", severity="info"))

    def at(self, current: str | None) -> None:
        """The database's revision, as read now."""
        self.current = current
        self.record.pre_revision = reported(current)


@contextmanager
def recorded(run: Run, prewarm: bool = True) -> Iterator[RunRecord]:
    """Run a body with the run's record; the report is written whatever happens, and
    a report that cannot be written never hides the outcome. ``prewarm`` false: the
    body starts the report's template (``report.prewarm``) where it waits on the
    database, not beside the work that keeps this process busy."""
    from safe_migrations.pipeline import telemetry

    env, record, console = run.env, run.record, run.console
    if telemetry.wanted(env):
        telemetry.check_installed(env)
    if prewarm:
        report.prewarm()
    started = time.perf_counter()
    try:
        yield record
        record.success, record.exit_code = True, EXIT_OK
    except ToolError as exc:
        exc.message = redact(exc.message, [env.password])
        record.error, record.exit_code = exc.message, exc.exit_code
        raise
    except KeyboardInterrupt as exc:
        from safe_migrations.engines import engine_for

        interrupted = engine_for(env.dialect).interrupted_revision
        record.error = f"interrupted ({exc or 'SIGINT'}); {interrupted}"
        record.exit_code = EXIT_BLOCKED
        raise
    except BaseException as exc:
        record.error = redact(f"{type(exc).__name__}: {exc}", [env.password])
        raise
    finally:
        record.duration = round(time.perf_counter() - started, 4)
        record.finished_at = datetime.now(UTC).isoformat()
        try:  # on a fresh connection, retried: the server may just have restarted
            # a run that never read the revision changed nothing: one try is enough
            attempts = 4 if record.pre_revision is not None else 1
            read = run.read_by_validation  # the last step: read just now, after the lock
            record.post_revision = reported(
                read[0] if read is not None else reread_current(env, attempts)
            )
        except ToolError as exc:
            record.post_revision = None  # unknown, never guessed from the pre-revision
            note = f"the revision could not be re-read at the end ({exc.message})"
            record.error = f"{record.error}; {note}" if record.error else note
        try:
            console.say(f"report: {write_report(env, record)}")
            if telemetry.wanted(env):
                for warning in telemetry.emit(env, redact_data(record.to_dict(), [env.password])):
                    console.warn(f"warning: {warning}")
        except OSError as exc:  # the outcome still reaches the user, with the run's exit code
            outcome = "succeeded" if record.success else f"failed: {record.error}"
            console.warn(
                f"error: the report could not be written to {env.report_dir} "
                f"({exc.strerror or exc}); the {env.name} database is at "
                f"{record.post_revision or 'an unknown revision'} and this run {outcome}"
            )
