"""Operations that are not the pipeline: rollback, restore, a backup on its own.

Each is a run with a report, like the pipeline, under the same migration lock;
they reuse its steps where they are the same (a rollback *is* the pipeline, aimed
at the newest run's pre-revision).
"""

from __future__ import annotations

from safe_migrations.core.config import Environment
from safe_migrations.core.errors import BlockedError, RefusedError
from safe_migrations.core.results import StepResult, timed
from safe_migrations.pipeline.context import Console, Run, RunOptions, recorded
from safe_migrations.pipeline.locking import migration_lock
from safe_migrations.pipeline.migrate import check_expected, confirm, migrate, record_backup
from safe_migrations.pipeline.report import RunRecord, last_report, prewarm, reported
from safe_migrations.pipeline.status import read_current
from safe_migrations.project.alembic_api import Project
from safe_migrations.stores.backupfiles import Progress


def rollback(
    env: Environment,
    from_backup: bool,
    yes: bool,
    interactive: bool,
    project: Project | None = None,
    console: Console | None = None,
) -> RunRecord | None:
    """Undo the newest run, only from where it left the database; None when it changed nothing."""
    from safe_migrations.operations.rollback import RUN_OPERATIONS, plan_rollback

    console = console or Console()
    if not env.settings.policy.allow_rollback:
        raise RefusedError(
            f"The {env.name} environment does not allow rollback "
            "(policy.allow_rollback is false); restore a backup by hand."
        )
    if not env.settings.policy.auto_rollback and not interactive:
        raise RefusedError(
            f"Automatic rollback is off for {env.name} (policy.auto_rollback is "
            "false); an operator must run `invoke rollback` from a terminal."
        )
    newest = last_report(env, RUN_OPERATIONS, strict=True)
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
        direction="upgrade" if plan.direction == "upgrade" else "downgrade",
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
    from safe_migrations.operations.restore import (
        describe_backup,
        find_backup,
        local_copy,
        restore_backup,
    )

    backup = find_backup(env, spec, foreign)
    if backup["own"]:
        confirm.refuse_without_terminal(env, yes, interactive)
    elif not yes and not interactive:
        raise BlockedError(
            f"Restoring a foreign backup into {env.name} needs a terminal to type the "
            "environment's name on, or --yes."
        )
    options = RunOptions(yes=yes, interactive=interactive, expect_current=expect)
    run = Run.start(env, options, console=console, operation=operation)
    with recorded(run) as record:
        run.at(read_current(env))
        check_expected(run)
        record.target_revision = reported(backup.get("revision")) if backup["own"] else None
        if not backup["own"]:
            run.console.say(describe_backup(env, backup))
        if not backup["own"] and interactive and not yes:
            confirm.confirm(
                env,
                f"restore this foreign backup into {env.masked_url}",
                run.console.ask,
                run.console.say,
                typed=True,
            )
        elif confirm.needs_confirmation(env, yes):
            confirm.confirm(
                env,
                f"restore {backup['path']} into {env.masked_url}",
                ask=run.console.ask,
                say=run.console.say,
            )
        with timed() as clock, migration_lock(env):
            run.at(read_current(env))
            check_expected(run)
            with local_copy(env, backup) as local:  # a store's object: downloaded, then removed
                restore_backup(env, local)
        where = backup.get("remote") or backup["path"]
        record.restored_from = where
        run.step(StepResult("restore", True, f"restored {where}", duration=clock.seconds))
        return record


def backup(env: Environment, console: Console | None = None) -> RunRecord:
    """Take a verified backup on its own, with a report, under the migration lock."""
    run = Run.start(env, RunOptions(backup=True), console=console, operation="backup")
    # the report's template compiles beside the dump, not on the way to it
    progress = run.console.progress or Progress()
    progress.when_started(prewarm)
    with recorded(run, prewarm=False), migration_lock(env):
        run.at(read_current(env))
        record_backup(run, progress)
        return run.record
