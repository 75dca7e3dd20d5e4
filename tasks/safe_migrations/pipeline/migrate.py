"""The migrate pipeline: health -> confirm -> lock -> backup -> upgrade -> validate -> report.

``migrate`` is the step list; each step takes the run, decides its own skip, works through
its own module (health.py, refusals.py, confirm.py, backup.py, upgrade.py, validate.py) and
records its result. The rest (rollback, restore, a lone backup): operations/standalone.py."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

from safe_migrations.core.config import Environment
from safe_migrations.core.errors import (
    BlockedError,
    DriftError,
    NothingRenderedError,
    RefusedError,
    UsageError,
    ValidationError,
)
from safe_migrations.core.results import StepResult, format_results, timed
from safe_migrations.core.revisions import resolve_revision
from safe_migrations.operations import proof
from safe_migrations.pipeline import confirm, health, refusals, report, upgrade, validate
from safe_migrations.pipeline.backup import take_backup
from safe_migrations.pipeline.context import Console, Run, RunOptions, recorded
from safe_migrations.pipeline.locking import migration_lock
from safe_migrations.pipeline.report import RunRecord, reported
from safe_migrations.pipeline.status import read_current
from safe_migrations.project import alembic_api
from safe_migrations.project.alembic_api import Project
from safe_migrations.stores.backupfiles import Progress

__all__ = ["Console", "RunOptions", "migrate"]


def migrate(
    env: Environment,
    options: RunOptions,
    project: Project | None = None,
    console: Console | None = None,
) -> RunRecord:
    """The whole pipeline; raises a ToolError (with its exit code) when a step fails."""
    run = Run.start(env, options, project, console)
    refuse_before_any_work(run)
    with recorded(run, prewarm=False):
        resolve_target(run)
        health_step(run)  # first: an unreachable database is a failed check (exit 3)
        plan_step(run)
        if options.dry_run:
            dry_run_step(run)
            return run.record
        refusals.refusals_step(run)
        rehearsed_step(run)
        confirm_step(run)
        with lock_step(run):
            report.prewarm()  # beside the dump and the upgrade, which wait on the database
            backup_beside_drift(run)
            upgrade_step(run)
        validate_step(run)
        return run.record


def refuse_before_any_work(run: Run) -> None:
    """Policy refusals and a missing terminal, before any step does work."""
    env, options = run.env, run.options
    policy, backup = env.settings.policy, env.settings.backup
    if options.direction == "downgrade" and not policy.allow_downgrade:
        raise RefusedError(
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


def resolve_target(run: Run) -> None:
    """The target as one revision id before anything runs (``-2`` reads the current one)."""
    scripts = run.project.scripts()
    run.target = resolve_revision(scripts, run.options.revision, lambda: read_current(run.env))
    run.record.target_revision = reported(run.target)


def health_step(run: Run) -> None:
    """Blocking checks stop the run; on a terminal the user may go on anyway."""
    options = run.options
    if options.dry_run:
        return
    if options.skip_health_checks:
        run.skip("health", "--skip-health-checks")
        return
    with timed() as clock:
        results = health.run_health(run.env, run.project, run.target or "base", wants_backup(run))
    if options.resume:
        results = [resumable(result) for result in results]
    run.record.health = [r.to_dict() for r in results]
    run.read_by_health = next(
        ((r.details["current"],) for r in results if r.name == "alembic_version"), None
    )
    failed = health.blocking(results)
    message = (
        "failed: " + "; ".join(f"{r.name}: {r.message}" for r in failed)
        if failed
        else "all blocking checks passed"
    )
    run.console.say("\n".join("  " + line for line in format_results(results).splitlines()))
    run.step(StepResult("health", not failed, message, duration=clock.seconds))
    if not failed:
        return
    question = "A blocking health check failed. Continue anyway? [y/N] "
    if options.interactive and not options.yes and confirm.said_yes(run.console.ask(question)):
        return
    raise BlockedError(
        f"Blocked by health checks ({', '.join(r.name for r in failed)}): "
        f"{failed[0].message}. Fix it, or pass --skip-health-checks."
    )


def resumable(result: StepResult) -> StepResult:
    """With --resume, a partly applied revision (not a restore) is what the run goes on
    with, not a block; the upgrade checks the journal against the catalog."""
    records = (result.details or {}).get("records") or []
    if result.name != "partly_applied" or result.ok or any(r["kind"] != "upgrade" for r in records):
        return result
    row = records[0]
    message = (
        f"revision {row['revision']} is partly applied ({len(row['statements'])} statement(s) "
        "committed); --resume goes on after them"
    )
    return StepResult(result.name, True, message, duration=result.duration, details=result.details)


def plan_step(run: Run) -> None:
    """Where the database is, that it is where a rollback expects, and what is pending.
    The revision health has just read is taken as it is (one connection less): the lock
    step reads it again under the lock, where it counts."""
    seen = run.read_by_health
    run.at(seen[0] if seen is not None else read_current(run.env))
    check_expected(run)
    run.pending = _pending(run)
    run.record.pending = [r.to_dict() for r in run.pending]


def check_expected(run: Run) -> None:
    """Rollback acts only on the database its report describes."""
    expected = run.options.expect_current
    if expected is not None and reported(run.current) != expected:
        raise BlockedError(
            f"The {run.env.name} database is at {reported(run.current)}, not at {expected} "
            "where its newest run left it: something moved it since, so nothing was changed. "
            "Check `invoke status`, then move it explicitly with `invoke downgrade --revision REV`."
        )


def _pending(run: Run) -> list[alembic_api.Revision]:
    options = run.options
    if options.direction == "downgrade" and not alembic_api.is_ancestor(
        run.project.scripts(), run.target, run.current
    ):
        raise RefusedError(
            f"Revision {options.revision} is not below the current revision "
            f"{reported(run.current)}; downgrade goes down only."
        )
    return upgrade.plan(run.project, run.current, run.target, options.direction)


def dry_run_step(run: Run) -> None:
    """Print the offline SQL of each pending revision; name those that cannot be rendered."""
    from safe_migrations.engines import engine_for

    with engine_for(run.env.dialect).safe_operations(run.env):  # the form that would run
        rendered = alembic_api.render_sql(
            run.project.config(),
            run.project.scripts(),
            run.pending,
            run.env.dialect,
            upgrade=run.options.direction == "upgrade",
        )
    unrendered = [r for r in rendered if r.error]
    for item in rendered:
        run.console.say(f"-- revision {item.revision}: {item.message} ({item.path})")
        if item.error:
            run.console.say(f"-- cannot be rendered offline: {item.error}\n")
        else:
            run.console.say(item.sql or "")
    message = f"{len(rendered) - len(unrendered)} revision(s) rendered, database unchanged" + (
        f"; {len(unrendered)} could not be rendered: " + ", ".join(r.revision for r in unrendered)
        if unrendered
        else ""
    )
    details = {"unrendered": {r.revision: r.error for r in unrendered}}
    nothing = bool(rendered) and len(unrendered) == len(rendered)
    run.step(StepResult("dry_run", not nothing, message, details=details))
    if nothing:
        first = unrendered[0]
        raise NothingRenderedError.first("pending revision", first.revision, first.error or "")


def rehearsal_proof(run: Run) -> dict[str, Any] | None:
    """The proof policy.require_rehearsal_hours asks for (None when it asks for none);
    BlockedError (exit 3) without one."""
    if (
        run.options.direction != "upgrade"
        or run.env.settings.policy.require_rehearsal_hours is None
    ):
        return None
    return proof.require_rehearsal(
        run.env, run.project, reported(run.current), reported(run.target), run.pending
    )


def rehearsed_step(run: Run) -> None:
    """Where policy.require_rehearsal_hours is set: a passing rehearsal of this very range
    and these scripts, recently, or no change at all (exit 3)."""
    with timed() as clock:
        found = rehearsal_proof(run)
    if found is not None:
        message = f"rehearsed at {found['finished_at']:%Y-%m-%d %H:%M} UTC ({found['report']})"
        run.step(StepResult("rehearsal", True, message, duration=clock.seconds))


def confirm_step(run: Run) -> None:
    """Ask before changing anything (production: the name typed); never holds the lock."""
    if not confirm.needs_confirmation(run.env, run.options.yes):
        return
    summary = confirm.summary(run.env, run.record.operation, run.current, run.target, run.pending)
    with timed() as clock:
        confirm.confirm(run.env, summary, ask=run.console.ask, say=run.console.say)
    run.step(StepResult("confirm", True, "confirmed", duration=clock.seconds))


@contextmanager
def lock_step(run: Run) -> Iterator[None]:
    """One migration at a time, from the backup to the end of the upgrade; the revision
    is read again under the lock, since another run may have moved it meanwhile."""
    asked_at = time.perf_counter()
    with migration_lock(run.env):
        run.lock_wait = round(time.perf_counter() - asked_at, 4)
        moved = read_current(run.env)
        if moved != run.current:
            run.console.say(f"another run moved the database to {reported(moved)} meanwhile")
            run.at(moved)
            check_expected(run)
            run.pending = _pending(run)
            rehearsed_step(run)
        else:
            check_expected(run)
            rehearsal_proof(run)  # again under the lock: a rehearsal may have failed since
        yield


def wants_backup(run: Run) -> bool:
    """--backup, or (neither flag) the environment requires one."""
    wanted = run.options.backup
    return bool(wanted or (wanted is None and run.env.settings.backup.required))


def backup_beside_drift(run: Run) -> None:
    """The backup, and beside it the compare before the run: the dump works in its own process
    while the compare reads the catalog; the lock keeps the schema still for both."""
    if not (wants_backup(run) and run.pending):
        backup_step(run)
        drift_before(run)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1, thread_name_prefix="drift-before") as pool:
        compared = pool.submit(drift_before, run)
        backup_step(run)  # a failed backup stops the run once the compare is back
    compared.result()


def backup_step(run: Run) -> None:
    """When asked or required, and only when there is something to apply."""
    if not wants_backup(run):
        return
    if not run.pending:
        run.skip("backup", "nothing to apply")
        return
    record_backup(run)


def record_backup(run: Run, progress: Progress | None = None) -> None:
    """Take a verified backup at the current revision and record it (progress: or the console's)."""
    with timed() as clock:
        info = take_backup(run.env, run.current, progress or run.console.progress)
    run.record.backup = info.to_dict()
    message = f"{info.path} ({info.size:,} bytes, sha256 {info.sha256[:12]}...)"
    if info.proof is not None:
        from safe_migrations.pipeline.backup_proof import summary

        message += f"; proven: {summary(info.proof)}"
    run.step(StepResult("backup", True, message, duration=clock.seconds))


def upgrade_step(run: Run) -> None:
    """Alembic in process, one revision per transaction, retried on lock timeouts."""
    direction, target = run.options.direction, run.target

    def on_retry(attempt: upgrade.MigrationAttempt) -> None:
        run.record.retries.append(asdict(attempt))
        ahead = f" for {attempt.mode} on {attempt.relation}" if attempt.relation else ""
        holders = ", ".join(f"pid {h['pid']}" for h in attempt.holders)
        run.console.say(
            f"revision {attempt.revision} queued{ahead} past its lock timeout and was rolled "
            f"back (attempt {attempt.attempt}); watched {holders or 'the holders'} from the side "
            f"for {attempt.waited:g}s"
            + "".join(f"; terminated idle pid {c['pid']}" for c in attempt.cancelled if c["done"])
        )

    with timed() as clock:
        try:
            resume, checked = run.options.resume, run.refusals_checked
            applied = upgrade.run_migrations(
                run.env, run.project, target, direction, on_retry, resume=resume, checked=checked
            )
        except upgrade.MigrationError as exc:
            run.record.applied = [a.to_dict() for a in exc.applied]
            run.record.failed_revision = exc.revision
            if isinstance(exc, upgrade.PartlyAppliedError):
                run.record.partly_applied = exc.partial
            run.step(StepResult(direction, False, exc.message, duration=clock.seconds))
            raise
    run.record.applied = [a.to_dict() for a in applied]
    verb = "applied" if direction == "upgrade" else "undone"
    message = (
        f"{len(applied)} revision(s) {verb}, now at {reported(target)}"
        if applied
        else f"nothing to do, already at {reported(target)}"
    )
    details = {"lock_wait": run.lock_wait}
    run.step(StepResult(direction, True, message, duration=clock.seconds, details=details))


def validate_step(run: Run) -> None:
    """At the target, answering, and (at the head) matching the models."""
    if run.options.skip_validation:
        run.skip("validate", "--skip-validation")
        return
    with timed() as clock:
        results = validate.validate(
            run.env, run.project, run.target, compare_models=at_head(run), before=run.drift_before
        )
    run.record.validation = [r.to_dict() for r in results]
    run.read_by_validation = next(
        ((r.details["current"],) for r in results if r.name == "revision"), None
    )
    failed = [r for r in results if not r.ok]
    message = (
        "; ".join(f"{r.name}: {r.message}" for r in failed)
        if failed
        else ", ".join(r.message for r in results)
    )
    run.step(StepResult("validate", not failed, message, duration=clock.seconds))
    if failed and all(r.name == "schema" for r in failed):  # complete, and only drift
        raise DriftError(
            f"The schema is at the target; the models differ: {message}. Not a failed "
            "migration: nothing is rolled back. Fix the models (or a revision), or accept "
            "what the project lives with: `invoke check --accept-drift`."
        )
    if failed:
        raise ValidationError(f"Validation failed after migrating: {message}")


def at_head(run: Run) -> bool:
    """The models are compared only at the head (elsewhere they describe another schema)."""
    return [run.target] == alembic_api.heads(run.project.scripts())


def drift_before(run: Run) -> None:
    """The differences from the models before the run, so validation can name the ones
    the run introduced; only when validation will compare. A database without tables
    is only noted: its differences are made after the run, if any are found then."""
    from sqlalchemy.exc import DBAPIError

    from safe_migrations.core.database import connect
    from safe_migrations.project.drift import Before, differences, has_tables

    if run.options.skip_validation or run.options.direction != "upgrade" or not at_head(run):
        return
    wait = run.env.settings.migration.lock_timeout or None
    try:  # reflection waits behind a strong lock: never longer than a revision would
        with connect(run.env, role="validate", lock_timeout=wait) as connection:
            metadata, options = run.project.comparison(connection)
            if metadata is None:
                return
            if not has_tables(connection, options):
                run.drift_before = Before(empty=True)
            else:
                run.drift_before = Before(differences(connection, metadata, options))
    except DBAPIError:  # validation then names the differences without telling which are new
        run.drift_before = None
