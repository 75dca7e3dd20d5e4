"""The migrate pipeline: health -> confirm -> lock -> backup -> upgrade -> validate -> report.

Each step is a function in its own module; this module only orders them,
records each result and writes the report in a ``finally``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime

from tasks import alembic_api, confirm, health, report, upgrade, validate
from tasks.alembic_api import Project, project_for
from tasks.backup import BackupInfo, Progress, take_backup
from tasks.config import Environment
from tasks.errors import (
    EXIT_BLOCKED,
    EXIT_OK,
    BlockedError,
    ConfigError,
    MigrationError,
    ToolError,
    UsageError,
    ValidationError,
)
from tasks.escaping import terminal
from tasks.locking import migration_lock
from tasks.masking import redact
from tasks.report import RunRecord, reported, write_report
from tasks.results import StepResult, format_results, timed
from tasks.status import read_current, reread_current


@dataclass(frozen=True)
class RunOptions:
    """The flags of `migrate`/`downgrade`, as plain values."""

    revision: str = "head"
    direction: upgrade.Direction = "upgrade"
    backup: bool | None = None  # None: the environment decides
    skip_health_checks: bool = False
    skip_validation: bool = False
    yes: bool = False
    dry_run: bool = False
    interactive: bool = False
    operation: str | None = None
    # rollback: where the database must be (a revision or "base"), checked under the lock
    expect_current: str | None = None


@dataclass
class Console:
    """Where a run talks to its user; tests pass their own."""

    say: Callable[[str], None] = field(default=lambda text: print(terminal(text)))
    ask: Callable[[str], str] = field(default=lambda prompt: input(terminal(prompt)))
    progress: Progress | None = None
    warn: Callable[[str], None] = field(default=lambda text: print(terminal(text), file=sys.stderr))


@contextmanager
def recorded(
    env: Environment, operation: str, console: Console, dry_run: bool = False
) -> Iterator[RunRecord]:
    """Run a body with a RunRecord; the report is written whatever happens."""
    record = RunRecord(
        environment=env.name, operation=operation, url=env.masked_url, dry_run=dry_run
    )
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
        record.error = f"interrupted ({exc or 'SIGINT'}); any revision in progress was rolled back"
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
            record.post_revision = reported(reread_current(env, attempts))
        except ToolError as exc:
            record.post_revision = None  # unknown, never guessed from the pre-revision
            note = f"the revision could not be re-read at the end ({exc.message})"
            record.error = f"{record.error}; {note}" if record.error else note
        try:
            console.say(f"report: {write_report(env, record)}")
        except OSError as exc:  # the outcome still reaches the user, with the run's exit code
            outcome = "succeeded" if record.success else f"failed: {record.error}"
            console.warn(
                f"error: the report could not be written to {env.report_dir} "
                f"({exc.strerror or exc}); the {env.name} database is at "
                f"{record.post_revision or 'an unknown revision'} and this run {outcome}"
            )


def _step(record: RunRecord, result: StepResult, console: Console) -> StepResult:
    record.add_step(result)
    console.say(format_results([result]))
    return result


def check_policy(env: Environment, options: RunOptions) -> None:
    """Refusals that must happen before any step does work."""
    policy, backup = env.settings.policy, env.settings.backup
    if options.direction == "downgrade" and not policy.allow_downgrade:
        raise UsageError(
            f"The {env.name} environment does not allow downgrades "
            "(policy.allow_downgrade is false)."
        )
    if options.backup is False and backup.required and not options.dry_run:
        raise UsageError(
            f"The {env.name} environment requires a backup before migrating; "
            "--no-backup is refused there (backup.required is true)."
        )
    if not options.dry_run:
        confirm.refuse_without_terminal(env, options.yes, options.interactive)


def run_health_step(
    env: Environment, project: Project, options: RunOptions, record: RunRecord, console: Console
) -> None:
    with timed() as clock:
        results = health.run_health(env, project, options.revision)
    record.health = [r.to_dict() for r in results]
    failed = health.blocking(results)
    message = (
        "all blocking checks passed"
        if not failed
        else "failed: " + "; ".join(f"{r.name}: {r.message}" for r in failed)
    )
    console.say("\n".join("  " + line for line in format_results(results).splitlines()))
    _step(record, StepResult("health", not failed, message, duration=clock.seconds), console)
    if not failed:
        return
    if options.interactive and not options.yes:
        answer = console.ask("A blocking health check failed. Continue anyway? [y/N] ")
        if answer.strip().lower() in {"y", "yes"}:
            return
    raise BlockedError(
        f"Blocked by health checks ({', '.join(r.name for r in failed)}): "
        f"{failed[0].message}. Fix it, or pass --skip-health-checks."
    )


def run_backup_step(
    env: Environment, current: str | None, record: RunRecord, console: Console
) -> BackupInfo:
    with timed() as clock:
        info = take_backup(env, current, console.progress)
    record.backup = info.to_dict()
    _step(
        record,
        StepResult(
            "backup",
            True,
            f"{info.path} ({info.size:,} bytes, sha256 {info.sha256[:12]}...)",
            duration=clock.seconds,
        ),
        console,
    )
    return info


def check_expected(env: Environment, current: str | None, expected: str | None) -> None:
    """Rollback acts only on the database its report describes."""
    if expected is not None and reported(current) != expected:
        raise BlockedError(
            f"The {env.name} database is at {reported(current)}, not at {expected} where its "
            "newest run left it: something moved it since, so nothing was changed. Check "
            "`invoke status`, then move it explicitly with `invoke downgrade --revision REV`."
        )


def migrate(
    env: Environment,
    options: RunOptions,
    project: Project | None = None,
    console: Console | None = None,
) -> RunRecord:
    """The whole pipeline; raises a ToolError (with its exit code) when a step fails."""
    console = console or Console()
    project = project or project_for(env)
    operation = options.operation or options.direction
    check_policy(env, options)
    with recorded(env, operation, console, options.dry_run) as record:
        scripts = project.scripts()
        target = alembic_api.resolve_revision(scripts, options.revision)
        record.target_revision = reported(target)
        if options.skip_health_checks or options.dry_run:
            if not options.dry_run:
                _step(
                    record,
                    StepResult("health", True, "skipped (--skip-health-checks)", severity="info"),
                    console,
                )
        else:  # first, so an unreachable database is a failed check (exit 3)
            run_health_step(
                env, project, replace(options, revision=target or "base"), record, console
            )
        current = read_current(env)
        record.pre_revision = reported(current)
        check_expected(env, current, options.expect_current)
        path = _plan(env, project, options, current, target)
        record.pending = [r.to_dict() for r in path]
        if options.dry_run:
            dry_run(env, project, path, options.direction, record, console)
            return record
        if confirm.needs_confirmation(env, options.yes):
            with timed() as clock:
                confirm.confirm(
                    env,
                    confirm.summary(env, operation, current, target, path),
                    ask=console.ask,
                    say=console.say,
                )
            _step(record, StepResult("confirm", True, "confirmed", duration=clock.seconds), console)
        asked_at = time.perf_counter()
        with migration_lock(env):  # from the backup to the end of the upgrade
            lock_wait = time.perf_counter() - asked_at
            moved = read_current(env)  # another run may have migrated while we waited
            check_expected(env, moved, options.expect_current)
            if moved != current:
                console.say(f"another run moved the database to {reported(moved)} meanwhile")
                current, record.pre_revision = moved, reported(moved)
                path = _plan(env, project, options, current, target)
            if options.backup or (options.backup is None and env.settings.backup.required):
                if path:
                    run_backup_step(env, current, record, console)
                else:
                    _step(
                        record,
                        StepResult("backup", True, "skipped: nothing to apply", severity="info"),
                        console,
                    )
            _upgrade_step(env, project, target, options, record, console, lock_wait)
        if options.skip_validation:
            _step(
                record,
                StepResult("validate", True, "skipped (--skip-validation)", severity="info"),
                console,
            )
        else:
            run_validate_step(env, project, target, record, console)
        return record


def _plan(
    env: Environment,
    project: Project,
    options: RunOptions,
    current: str | None,
    target: str | None,
) -> list[alembic_api.Revision]:
    if options.direction == "downgrade" and not alembic_api.is_ancestor(
        project.scripts(), target, current
    ):
        raise ConfigError(
            f"Revision {options.revision} is not below the current revision "
            f"{reported(current)}; downgrade goes down only."
        )
    return upgrade.plan(project, current, target, options.direction)


def _upgrade_step(
    env: Environment,
    project: Project,
    target: str | None,
    options: RunOptions,
    record: RunRecord,
    console: Console,
    lock_wait: float,
) -> None:
    def on_retry(attempt: upgrade.MigrationAttempt) -> None:
        record.retries.append(asdict(attempt))
        console.say(
            f"revision {attempt.revision} hit the lock timeout "
            f"(attempt {attempt.attempt}); retrying in {attempt.waited:g}s"
        )

    with timed() as clock:
        try:
            applied = upgrade.run_migrations(env, project, target, options.direction, on_retry)
        except MigrationError as exc:
            record.applied = [a.to_dict() for a in exc.applied]
            record.failed_revision = exc.revision
            _step(
                record,
                StepResult(options.direction, False, exc.message, duration=clock.seconds),
                console,
            )
            raise
    record.applied = [a.to_dict() for a in applied]
    verb = "applied" if options.direction == "upgrade" else "undone"
    message = (
        f"{len(applied)} revision(s) {verb}, now at {target or 'base'}"
        if applied
        else f"nothing to do, already at {target or 'base'}"
    )
    _step(
        record,
        StepResult(
            options.direction,
            True,
            message,
            duration=clock.seconds,
            details={"lock_wait": round(lock_wait, 4)},
        ),
        console,
    )


def run_validate_step(
    env: Environment, project: Project, target: str | None, record: RunRecord, console: Console
) -> None:
    head = alembic_api.heads(project.scripts())
    with timed() as clock:
        results = validate.validate(env, project, target, compare_models=[target] == head)
    record.validation = [r.to_dict() for r in results]
    failed = [r for r in results if not r.ok]
    message = (
        ", ".join(r.message for r in results)
        if not failed
        else "; ".join(f"{r.name}: {r.message}" for r in failed)
    )
    _step(record, StepResult("validate", not failed, message, duration=clock.seconds), console)
    if failed:
        raise ValidationError(f"Validation failed after migrating: {message}")


def dry_run(
    env: Environment,
    project: Project,
    path: list[alembic_api.Revision],
    direction: str,
    record: RunRecord,
    console: Console,
) -> None:
    """Print the offline SQL of each pending revision; name those that cannot be rendered."""
    rendered = alembic_api.render_sql(
        project.config(url=env.url), project.scripts(), path, upgrade=direction == "upgrade"
    )
    unrendered = [r for r in rendered if r.error]
    for item in rendered:
        console.say(f"-- revision {item.revision}: {item.message} ({item.path})")
        if item.error:
            console.say(f"-- cannot be rendered offline: {item.error}\n")
        else:
            console.say(item.sql or "")
    message = f"{len(rendered)} revision(s) rendered, database unchanged" + (
        f"; {len(unrendered)} could not be rendered: " + ", ".join(r.revision for r in unrendered)
        if unrendered
        else ""
    )
    _step(
        record,
        StepResult(
            "dry_run",
            True,
            message,
            details={"unrendered": {r.revision: r.error for r in unrendered}},
        ),
        console,
    )


def rollback(
    env: Environment,
    from_backup: bool,
    yes: bool,
    interactive: bool,
    project: Project | None = None,
    console: Console | None = None,
) -> RunRecord | None:
    """Undo the newest run, only from where it left the database; None when it changed nothing."""
    from tasks.rollback import RUN_OPERATIONS, plan_rollback

    console = console or Console()
    if not env.settings.policy.allow_rollback:
        raise UsageError(
            f"The {env.name} environment does not allow rollback "
            "(policy.allow_rollback is false); restore a backup by hand."
        )
    if not env.settings.policy.auto_rollback and not interactive:
        raise UsageError(
            f"Automatic rollback is off for {env.name} (policy.auto_rollback is "
            "false); an operator must run `invoke rollback` from a terminal."
        )
    newest = report.last_report(env, RUN_OPERATIONS, strict=True)
    plan = plan_rollback(env.name, newest, from_backup)
    if plan.nothing:
        console.say(plan.nothing)
        return None
    if from_backup:
        assert plan.backup is not None
        return restore(
            env, plan.backup["path"], yes, interactive, console, "rollback", expect=plan.expect
        )
    options = RunOptions(
        revision=plan.target,
        direction=plan.direction,  # type: ignore[arg-type]
        yes=yes,
        interactive=interactive,
        operation="rollback",
        expect_current=plan.expect,
    )
    return migrate(env, options, project, console)


def restore(
    env: Environment,
    spec: str,
    yes: bool,
    interactive: bool,
    console: Console | None = None,
    operation: str = "restore",
    expect: str | None = None,
    foreign: bool = False,
) -> RunRecord:
    """Put one of the environment's own verified backups back (another's only with
    ``foreign``), under the migration lock, after confirmation."""
    from tasks.restore import describe_backup, find_backup, restore_backup

    console = console or Console()
    backup = find_backup(env, spec, foreign)
    if backup["own"]:
        confirm.refuse_without_terminal(env, yes, interactive)
    elif not yes and not interactive:
        raise BlockedError(
            f"Restoring a foreign backup into {env.name} needs a terminal to type the "
            "environment's name on, or --yes."
        )
    with recorded(env, operation, console) as record:
        current = read_current(env)
        record.pre_revision = reported(current)
        check_expected(env, current, expect)
        record.target_revision = reported(backup.get("revision")) if backup["own"] else None
        if not backup["own"]:
            console.say(describe_backup(env, backup))
        if not backup["own"] and interactive and not yes:
            confirm.confirm(
                env,
                f"restore this foreign backup into {env.masked_url}",
                console.ask,
                console.say,
                typed=True,
            )
        elif confirm.needs_confirmation(env, yes):
            confirm.confirm(
                env,
                f"restore {backup['path']} into {env.masked_url}",
                ask=console.ask,
                say=console.say,
            )
        with timed() as clock, migration_lock(env):
            check_expected(env, read_current(env), expect)
            restore_backup(env, backup)
        record.restored_from = backup["path"]
        _step(
            record,
            StepResult("restore", True, f"restored {backup['path']}", duration=clock.seconds),
            console,
        )
        return record


def backup(env: Environment, console: Console | None = None) -> RunRecord:
    """Take a verified backup on its own, with a report, under the migration lock."""
    console = console or Console()
    with recorded(env, "backup", console) as record, migration_lock(env):
        current = read_current(env)
        record.pre_revision = reported(current)
        run_backup_step(env, current, record, console)
        return record
