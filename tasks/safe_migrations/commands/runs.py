"""Tasks that change the database, each a run with a report under the migration lock:
migrate, downgrade, ci, rollback, backup (and the backups list), restore, resolve."""

from __future__ import annotations

import json
from typing import Any

from invoke import task

from safe_migrations.commands.common import (
    ENV_HELP,
    FLEET_HELP,
    FLEET_RUN_HELP,
    JSON_HELP,
    NO_FLEET,
    RUN_HELP,
    FleetFlags,
    backup_flag,
    confirm_fleet,
    exits_with_documented_codes,
    fleet_of,
    interactive,
    load_env,
    one_database,
    say,
)
from safe_migrations.commands.reads import show_health
from safe_migrations.core.errors import UsageError


def _run(
    env: str | None,
    direction: str,
    revision: str,
    backup: bool | None,
    skip_health_checks: bool,
    skip_validation: bool,
    yes: bool,
    dry_run: bool,
    flags: FleetFlags = NO_FLEET,
    resume: bool = False,
) -> None:
    """Shared body of migrate, downgrade and ci: the options, then the pipeline (on each
    member of a fleet, confirmed once for all)."""
    from safe_migrations.pipeline.migrate import RunOptions, migrate

    environment = load_env(env)
    options = RunOptions(
        revision=revision,
        direction="downgrade" if direction == "downgrade" else "upgrade",
        backup=backup,
        skip_health_checks=skip_health_checks,
        skip_validation=skip_validation,
        yes=yes,
        dry_run=dry_run,
        interactive=interactive(),
        resume=resume,
    )
    if not environment.is_fleet:
        migrate(environment, options)
        return
    from dataclasses import replace

    from safe_migrations.operations import fleet, fleet_work

    found = fleet.members(environment)
    chosen = fleet.select(found, flags.only, flags.exclude, flags.shard)
    if not dry_run:
        confirm_fleet(environment, direction, revision, yes, chosen)
    work = fleet_work.pipeline(replace(options, yes=True, interactive=False))
    operation = "dry-run" if dry_run else direction
    fleet_of(
        environment,
        operation,
        work,
        jobs=flags.jobs,
        keep_going=flags.keep_going,
        shard=flags.shard,
        chosen=chosen,
        found=found,
    )


RESUME_HELP = {
    "resume": "MySQL: go on with a partly applied revision after the statements its journal "
    "shows committed (checked against the catalog)"
}


@task(aliases=["upgrade"], help=RUN_HELP | FLEET_RUN_HELP | RESUME_HELP)
@exits_with_documented_codes
def migrate(
    c: Any,
    env: str | None = None,
    revision: str = "head",
    backup: bool = False,
    no_backup: bool = False,
    no_backup_if_allowed: bool = False,
    skip_health_checks: bool = False,
    skip_validation: bool = False,
    yes: bool = False,
    dry_run: bool = False,
    only: str = "",
    exclude: str = "",
    jobs: int = 0,
    keep_going: bool = False,
    shard: str = "",
    resume: bool = False,
) -> None:
    """Health, confirm, lock, backup, upgrade, validate, report (alias: upgrade)."""
    chosen = backup_flag(backup, no_backup, no_backup_if_allowed)
    flags = FleetFlags(only, exclude, jobs, keep_going, shard)
    _run(
        env,
        "upgrade",
        revision,
        chosen,
        skip_health_checks,
        skip_validation,
        yes,
        dry_run,
        flags,
        resume,
    )


@task(
    help=RUN_HELP
    | FLEET_RUN_HELP
    | {"revision": "revision to go down to (required): an id or 'base'"}
)
@exits_with_documented_codes
def downgrade(
    c: Any,
    revision: str = "",
    env: str | None = None,
    backup: bool = False,
    no_backup: bool = False,
    no_backup_if_allowed: bool = False,
    skip_health_checks: bool = False,
    skip_validation: bool = False,
    yes: bool = False,
    dry_run: bool = False,
    only: str = "",
    exclude: str = "",
    jobs: int = 0,
    keep_going: bool = False,
    shard: str = "",
) -> None:
    """The pipeline downward, to an explicit --revision."""
    if not revision:
        raise UsageError("downgrade needs an explicit target: --revision <id> or --revision base.")
    chosen = backup_flag(backup, no_backup, no_backup_if_allowed)
    flags = FleetFlags(only, exclude, jobs, keep_going, shard)
    _run(
        env, "downgrade", revision, chosen, skip_health_checks, skip_validation, yes, dry_run, flags
    )


@task(
    help={
        "env": ENV_HELP,
        "restore": "restore the last run's backup instead of downgrading",
        "yes": RUN_HELP["yes"],
    }
    | FLEET_HELP
)
@exits_with_documented_codes
def rollback(
    c: Any,
    env: str | None = None,
    restore: bool = False,
    yes: bool = False,
    only: str = "",
    exclude: str = "",
    jobs: int = 0,
) -> None:
    """Undo the last migrate: downgrade to its pre-revision, or restore its backup. On a
    fleet: only the members the last fleet run changed that failed with exit code 1."""
    from safe_migrations.operations.standalone import rollback as undo

    environment = load_env(env)
    if not environment.is_fleet:
        undo(environment, restore, yes, interactive())
        return
    from safe_migrations.operations import fleet, fleet_work

    found = fleet.members(environment)
    chosen = fleet.to_roll_back(environment, fleet.select(found, only, exclude))
    if not chosen:
        say(
            f"fleet {environment.name}: no member of the last fleet run failed with exit 1; "
            "nothing to roll back"
        )
        return
    confirm_fleet(environment, "rollback", "each member's pre-revision", yes, chosen)
    fleet_of(
        environment,
        "rollback",
        fleet_work.rollback(restore),
        jobs=jobs,
        keep_going=True,
        chosen=chosen,
        found=found,
    )


PROVE_HELP = "restore it into a scratch database and compare every table with the source"


@task(help={"env": ENV_HELP, "prove": PROVE_HELP} | FLEET_HELP)
@exits_with_documented_codes
def backup(
    c: Any,
    env: str | None = None,
    prove: bool = False,
    only: str = "",
    exclude: str = "",
    jobs: int = 0,
) -> None:
    """Take a verified backup (manifest with size and sha256) and prune old ones."""
    from safe_migrations.core.config import with_proof
    from safe_migrations.operations.standalone import backup as take

    environment = load_env(env)
    if prove:
        environment = with_proof(environment)
    if environment.is_fleet:
        from safe_migrations.operations import fleet_work

        fleet_of(environment, "backup", fleet_work.backup(), only, exclude, jobs, True)
        return
    take(environment)


@task(
    name="backups",
    help={
        "env": ENV_HELP,
        "json_": JSON_HELP,
        "only": "fleet: whose backups",
        "prove": "PATH or 'latest': restore that backup into a scratch database and compare "
        "it with what its source held (recorded when it was taken)",
    },
)
@exits_with_documented_codes
def backups_task(
    c: Any, env: str | None = None, json_: bool = False, only: str = "", prove: str = ""
) -> None:
    """List the environment's backups, newest first, in its folder or its store."""
    from safe_migrations.pipeline.backup import all_backups, render_backups

    environment = load_env(env, need_database=bool(prove))
    if environment.is_fleet:
        environment = one_database(load_env(env), "backups", only)
    if prove:
        from safe_migrations.pipeline.backup_proof import prove_existing, summary

        proven = prove_existing(environment, prove)
        say(f"{proven['path']}: {summary(proven['proof'])}")
        return
    found = all_backups(environment)
    say(json.dumps(found, indent=2, default=str) if json_ else render_backups(found))


@task(
    name="restore",
    help={
        "env": ENV_HELP,
        "backup": "a backup path, or 'latest'",
        "yes": RUN_HELP["yes"],
        "foreign": "allow a backup that is not this environment's own (shown first; on a "
        "terminal the environment's name must be typed)",
        "only": "fleet: the one member to restore (its own backups only)",
    },
)
@exits_with_documented_codes
def restore_task(
    c: Any,
    backup: str = "",
    env: str | None = None,
    yes: bool = False,
    foreign: bool = False,
    only: str = "",
) -> None:
    """Verify one of the environment's own backups, then restore it (all or nothing)."""
    from safe_migrations.operations.standalone import restore as put_back

    if not backup:
        raise UsageError("restore needs --backup PATH or --backup latest.")
    environment = one_database(load_env(env), "restore", only)
    put_back(environment, backup, yes, interactive(), foreign=foreign)


@task(
    help={
        "env": ENV_HELP,
        "revision": "the partly applied revision, as the blocked run named it (required)",
        "applied": "you finished its remaining changes by hand: the version table moves past it",
        "reverted": "you undid what it had applied: the version table stays where it is",
        "only": "fleet: the one member to resolve",
    }
)
@exits_with_documented_codes
def resolve(
    c: Any,
    revision: str = "",
    env: str | None = None,
    applied: bool = False,
    reverted: bool = False,
    only: str = "",
) -> None:
    """MySQL/MariaDB: say a partly applied revision is whole again (recorded in the audit log)."""
    from safe_migrations.operations.resolve import resolve as close_record
    from safe_migrations.project.alembic_api import project_for

    if not revision or applied == reverted:
        raise UsageError(
            "resolve needs --revision REV and exactly one of --applied (you finished it by "
            "hand) or --reverted (you undid it)."
        )
    environment = one_database(load_env(env), "resolve", only)
    say(close_record(environment, project_for(environment), revision, applied))


@task(
    help={
        "env": ENV_HELP,
        "revision": RUN_HELP["revision"],
        "skip_backup": "skip the backup unless the environment requires one",
        "health_output": "where to save the health results as JSON",
    }
)
@exits_with_documented_codes
def ci(
    c: Any,
    env: str | None = None,
    revision: str = "head",
    skip_backup: bool = False,
    health_output: str = "var/health/health.json",
) -> None:
    """One line for any CI system: health (saved as JSON), migrate --yes, then status."""
    from safe_migrations.pipeline.status import get_status

    if load_env(env).is_fleet:
        raise UsageError(
            "invoke ci runs one database; for a fleet run `invoke migrate --env E --yes` "
            "(with --shard I/K in a matrix job)."
        )

    show_health(env, revision, True, health_output)
    backup = None if skip_backup else True  # skipped only where the environment allows
    try:
        _run(env, "upgrade", revision, backup, False, False, True, False)
    finally:
        say(get_status(load_env(env)).render())
