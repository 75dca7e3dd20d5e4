"""The Invoke tasks: parse flags, load the environment, call the steps, map errors to exits.

The steps are imported inside the tasks, not for a cycle (there is none) but for
start-up: importing them all at the top was measured at 0.35 s for `invoke --list`
against 0.23 s (SQLAlchemy and Alembic come with them).
"""

from __future__ import annotations

import functools
import json
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from invoke import Collection, Exit, task

from safe_migrations.core.errors import EXIT_BLOCKED, EXIT_FAILED, ToolError, UsageError

ENV_HELP = "environment name, a file in environments/ (default: local)"
JSON_HELP = "print machine-readable JSON instead of text"
RUN_HELP = {
    "env": ENV_HELP,
    "revision": "target revision id, 'head' or a unique prefix",
    "backup": "take a verified backup before migrating",
    "no_backup": "skip the backup (refused where the environment requires one)",
    "skip_health_checks": "run even if a blocking health check fails",
    "skip_validation": "do not validate the database after migrating",
    "yes": "do not ask for confirmation (required without a terminal)",
    "dry_run": "print the SQL that would run; change nothing",
    "no_backup_if_allowed": "skip the backup unless the environment requires one (for CI inputs)",
}


def exits_with_documented_codes(function: Callable[..., Any]) -> Callable[..., Any]:
    """Turn our errors into one sentence on stderr and the documented exit code.

    Under GitHub Actions the exit code also goes to ``$GITHUB_OUTPUT`` as ``exit_code``,
    so a later job can tell a failed migration (1) from a refusal (2, 3, 4).
    ``SAFE_MIGRATIONS_DEBUG=1`` prints the full traceback as well.
    """

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        # A cancelled CI job sends SIGTERM: stop like Ctrl-C, so reports are still written.
        signal.signal(signal.SIGTERM, _interrupt)
        code = EXIT_FAILED
        try:
            result = _mapped(function, *args, **kwargs)
            code = 0
            return result
        except Exit as exc:
            code = exc.code
            raise
        finally:
            _github_output("exit_code", str(code))

    return wrapper


def _mapped(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """The one place that maps exception types to exit codes (see tasks/errors.py)."""
    import os

    from safe_migrations.core.errors import first_line
    from safe_migrations.core.escaping import terminal
    from safe_migrations.core.masking import redact

    try:
        return function(*args, **kwargs)
    except (ToolError, KeyboardInterrupt, EOFError, Exception) as exc:
        if os.environ.get("SAFE_MIGRATIONS_DEBUG") == "1":
            import traceback

            traceback.print_exc()
        if isinstance(exc, ToolError):
            message, code = exc.message, exc.exit_code
        elif isinstance(exc, KeyboardInterrupt):
            message = "interrupted; the report says where the database was left."
            code = EXIT_BLOCKED
        elif isinstance(exc, EOFError):
            message, code = "no answer on standard input; pass --yes to run unattended.", 3
        elif _is_database_error(exc):  # failed after connecting: a connect failure is ours
            message = f"the database failed: {first_line(exc)}; see the report for its revision."
            code = EXIT_FAILED
        else:
            raise
        raise Exit(f"error: {terminal(redact(message, []))}", code=code) from None


def _is_database_error(exc: BaseException) -> bool:
    from sqlalchemy.exc import DBAPIError

    try:
        import psycopg2
    except ImportError:  # pragma: no cover - installed with the project
        return isinstance(exc, DBAPIError)
    return isinstance(exc, DBAPIError | psycopg2.Error)


def _github_output(name: str, value: str) -> None:
    import os

    path = os.environ.get("GITHUB_OUTPUT")
    if path:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(f"{name}={value}\n")


def _print(text: object = "", end: str = "\n") -> None:
    """Print for a terminal: escape sequences in messages a user wrote never reach it."""
    from safe_migrations.core.escaping import terminal

    print(terminal(str(text)), end=end)


def _interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _environment(name: str | None, need_database: bool = True) -> Any:
    from safe_migrations.core.config import load_environment

    environment = load_environment(name, need_database=need_database)
    for warning in environment.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return environment


def _backup_flag(backup: bool, no_backup: bool, no_backup_if_allowed: bool = False) -> bool | None:
    """--backup / --no-backup / --no-backup-if-allowed as True / False / None (env decides)."""
    if sum([backup, no_backup, no_backup_if_allowed]) > 1:
        raise UsageError(
            "--backup, --no-backup and --no-backup-if-allowed contradict each "
            "other; pass one of them."
        )
    if no_backup_if_allowed:
        return None
    return True if backup else False if no_backup else None


FLEET_HELP = {
    "only": "fleet: only the members matching these comma-separated shell patterns",
    "exclude": "fleet: leave out the members matching these comma-separated shell patterns",
    "jobs": "fleet: members at a time, each in its own process (default: fleet.jobs)",
}
FLEET_RUN_HELP = FLEET_HELP | {
    "keep_going": "fleet: go on starting members after one fails",
    "shard": "fleet: only the I-th of K stable shards of the members (by name), as I/K",
}


def _fleet(
    environment: Any,
    operation: str,
    work: Any,
    only: str = "",
    exclude: str = "",
    jobs: int = 0,
    keep_going: bool = False,
    shard: str = "",
    json_: bool = False,
    reports: bool = True,
    chosen: Any = None,
    output: str = "",
    found: Any = None,
) -> None:
    """Run one task on every chosen member; a table (or JSON), and for a task that
    changes something (``reports``) a summary written beside the members' reports."""
    from safe_migrations.core.masking import redact_data, url_password
    from safe_migrations.operations import fleet

    found = fleet.members(environment) if found is None else found
    chosen = fleet.select(found, only, exclude, shard) if chosen is None else chosen
    summary = fleet.run_fleet(
        environment,
        chosen,
        operation,
        work,
        jobs or None,
        keep_going,
        shard or None,
        reports=reports,
    )
    for run in summary.orphaned:
        _print(
            f"warning: an earlier fleet {run['operation']} (pid {run['pid']}, started "
            f"{run['started_at']}) was killed before writing its summary; its members were "
            f"stopped with it: {', '.join(run['members'][:10])}"
            + (" ..." if len(run["members"]) > 10 else "")
            + ". Their own reports say where each stands."
        )
    path = fleet.write_summary(environment, summary, found) if reports else None
    secrets = [environment.password, *(url_password(m.url) for m in found)]
    if json_:
        _emit(json.dumps(redact_data(summary.to_dict(), secrets), indent=2), output)
    else:
        _emit(fleet.render_table(summary), output)
        if path is not None:
            _print(f"summary: {path}")
    if summary.exit_code:
        counts = ", ".join(f"{n} {outcome}" for outcome, n in sorted(summary.counts().items()))
        raise Exit(f"fleet {environment.name}: {counts}", code=summary.exit_code)


def _one_database(environment: Any, task_name: str, only: str = "") -> Any:
    """A task that works on one database: on a fleet, the one member --only names."""
    if not environment.is_fleet:
        return environment
    from safe_migrations.operations import fleet

    chosen = fleet.select(fleet.members(environment), only) if only else []
    if len(chosen) != 1:
        raise UsageError(
            f"invoke {task_name} works on one database and {environment.name} is a fleet; "
            "name one member with --only NAME."
        )
    return fleet.member_environment(environment, chosen[0])


def _confirm_fleet(environment: Any, operation: str, revision: str, yes: bool, chosen: Any) -> None:
    """Once for the chosen members (production: its name typed), before any starts."""
    from safe_migrations.pipeline import confirm

    interactive = _interactive()
    confirm.refuse_without_terminal(environment, yes, interactive)
    if confirm.needs_confirmation(environment, yes):
        names = [m.name for m in chosen]
        text = (
            f"environment: {environment.name} (a fleet: {len(names)} member(s) chosen)\n"
            f"operation:   {operation} to {revision} on each member\n"
            f"members:     {', '.join(names[:20])}{' ...' if len(names) > 20 else ''}"
        )
        confirm.confirm(environment, text, ask=input, say=print)


def _interactive() -> bool:
    from safe_migrations.pipeline.confirm import is_interactive

    return is_interactive()


@task(help={"env": ENV_HELP, "json_": JSON_HELP} | FLEET_HELP)
@exits_with_documented_codes
def status(
    c: Any,
    env: str | None = None,
    json_: bool = False,
    only: str = "",
    exclude: str = "",
    jobs: int = 0,
) -> None:
    """Current revision, applied history and pending migrations (a table for a fleet)."""
    from safe_migrations.pipeline.status import get_status

    environment = _environment(env)
    if environment.is_fleet:
        from safe_migrations.operations import fleet_work

        work = fleet_work.status()
        _fleet(environment, "status", work, only, exclude, jobs, True, json_=json_, reports=False)
        return
    result = get_status(environment)
    _print(json.dumps(result.to_dict(), indent=2) if json_ else result.render())


@task(help={"env": ENV_HELP + "; picks the Alembic project"})
@exits_with_documented_codes
def heads(c: Any, env: str | None = None) -> None:
    """The scripts' heads; warns (exit 1) when there are several."""
    from safe_migrations.project.alembic_api import heads as find_heads
    from safe_migrations.project.alembic_api import project_for

    found = find_heads(project_for(_environment(env)).scripts())
    for head in found:
        _print(head)
    if len(found) > 1:
        raise Exit(
            f"warning: {len(found)} heads; merge them with `alembic merge heads`.", code=EXIT_FAILED
        )


@task(
    help={
        "message": "what the revision does (required)",
        "autogenerate": "fill the revision from the difference between models and the "
        "database of --env",
        "env": ENV_HELP + "; used with --autogenerate",
        "only": "fleet: the one member to work on",
    }
)
@exits_with_documented_codes
def generate(
    c: Any, message: str = "", autogenerate: bool = False, env: str | None = None, only: str = ""
) -> None:
    """Create a new revision script in migrations/versions."""
    from safe_migrations.project.generate import new_revision

    if not message.strip():
        raise UsageError("A revision needs a message: invoke generate -m 'add orders table'.")
    from safe_migrations.project.alembic_api import project_for

    environment = (
        _one_database(_environment(env), "generate", only) if autogenerate else _environment(env)
    )
    _print(
        new_revision(
            message, autogenerate, environment if autogenerate else None, project_for(environment)
        )
    )


@dataclass(frozen=True)
class FleetFlags:
    """--only, --exclude, --jobs, --keep-going and --shard, for a fleet."""

    only: str = ""
    exclude: str = ""
    jobs: int = 0
    keep_going: bool = False
    shard: str = ""


def _run(
    env: str | None,
    direction: str,
    revision: str,
    backup: bool | None,
    skip_health_checks: bool,
    skip_validation: bool,
    yes: bool,
    dry_run: bool,
    flags: FleetFlags = FleetFlags(),
) -> None:
    """Shared body of migrate, downgrade and ci: the options, then the pipeline (on each
    member of a fleet, confirmed once for all)."""
    from safe_migrations.pipeline.migrate import RunOptions, migrate

    environment = _environment(env)
    options = RunOptions(
        revision=revision,
        direction="downgrade" if direction == "downgrade" else "upgrade",
        backup=backup,
        skip_health_checks=skip_health_checks,
        skip_validation=skip_validation,
        yes=yes,
        dry_run=dry_run,
        interactive=_interactive(),
    )
    if not environment.is_fleet:
        migrate(environment, options)
        return
    from dataclasses import replace

    from safe_migrations.operations import fleet, fleet_work

    found = fleet.members(environment)
    chosen = fleet.select(found, flags.only, flags.exclude, flags.shard)
    if not dry_run:
        _confirm_fleet(environment, direction, revision, yes, chosen)
    work = fleet_work.pipeline(replace(options, yes=True, interactive=False))
    operation = "dry-run" if dry_run else direction
    _fleet(
        environment,
        operation,
        work,
        jobs=flags.jobs,
        keep_going=flags.keep_going,
        shard=flags.shard,
        chosen=chosen,
        found=found,
    )


@task(aliases=["upgrade"], help=RUN_HELP | FLEET_RUN_HELP)
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
) -> None:
    """Health, confirm, lock, backup, upgrade, validate, report (alias: upgrade)."""
    chosen = _backup_flag(backup, no_backup, no_backup_if_allowed)
    flags = FleetFlags(only, exclude, jobs, keep_going, shard)
    _run(env, "upgrade", revision, chosen, skip_health_checks, skip_validation, yes, dry_run, flags)


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
    chosen = _backup_flag(backup, no_backup, no_backup_if_allowed)
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

    environment = _environment(env)
    if not environment.is_fleet:
        undo(environment, restore, yes, _interactive())
        return
    from safe_migrations.operations import fleet, fleet_work

    found = fleet.members(environment)
    chosen = fleet.to_roll_back(environment, fleet.select(found, only, exclude))
    if not chosen:
        _print(
            f"fleet {environment.name}: no member of the last fleet run failed with exit 1; "
            "nothing to roll back"
        )
        return
    _confirm_fleet(environment, "rollback", "each member's pre-revision", yes, chosen)
    _fleet(
        environment,
        "rollback",
        fleet_work.rollback(restore),
        jobs=jobs,
        keep_going=True,
        chosen=chosen,
        found=found,
    )


@task(help={"env": ENV_HELP} | FLEET_HELP)
@exits_with_documented_codes
def backup(
    c: Any, env: str | None = None, only: str = "", exclude: str = "", jobs: int = 0
) -> None:
    """Take a verified backup (manifest with size and sha256) and prune old ones."""
    from safe_migrations.operations.standalone import backup as take

    environment = _environment(env)
    if environment.is_fleet:
        from safe_migrations.operations import fleet_work

        _fleet(environment, "backup", fleet_work.backup(), only, exclude, jobs, True)
        return
    take(environment)


@task(name="backups", help={"env": ENV_HELP, "json_": JSON_HELP, "only": "fleet: whose backups"})
@exits_with_documented_codes
def backups_task(c: Any, env: str | None = None, json_: bool = False, only: str = "") -> None:
    """List the environment's backups, newest first, in its folder or its store."""
    from safe_migrations.pipeline.backup import all_backups, render_backups

    environment = _environment(env, need_database=False)
    if environment.is_fleet:
        environment = _one_database(_environment(env), "backups", only)
    found = all_backups(environment)
    _print(json.dumps(found, indent=2, default=str) if json_ else render_backups(found))


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
    environment = _one_database(_environment(env), "restore", only)
    put_back(environment, backup, yes, _interactive(), foreign=foreign)


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
    environment = _one_database(_environment(env), "resolve", only)
    _print(close_record(environment, project_for(environment), revision, applied))


OUTPUT_HELP = "also write the output to this file (folders are created)"


def _emit(text: str, output: str) -> None:
    """Print, and write to ``output`` too when given (for CI artifacts)."""
    text = text if text.endswith("\n") else text + "\n"
    _print(text, end="")
    if output:
        from pathlib import Path

        from safe_migrations.core.files import private_folder, write_atomic

        private_folder(Path(output).resolve().parent)
        write_atomic(Path(output), text)  # 0600: health results and issue bodies stay private


def _health(
    env: str | None, revision: str, json_: bool, output: str, only: str = "", exclude: str = ""
) -> None:
    from safe_migrations.core.results import render_checks
    from safe_migrations.pipeline.health import blocking, run_health
    from safe_migrations.project.alembic_api import project_for

    environment = _environment(env)
    if environment.is_fleet:
        from safe_migrations.operations import fleet_work

        work = fleet_work.health(revision)
        _fleet(
            environment,
            "health",
            work,
            only,
            exclude,
            0,
            True,
            json_=json_,
            reports=False,
            output=output,
        )
        return
    results = run_health(environment, project_for(environment), revision)
    failed = blocking(results)
    _emit(render_checks(results, failed, json_), output)
    if failed:
        raise Exit(f"blocked: {', '.join(r.name for r in failed)}", code=EXIT_BLOCKED)


@task(
    help={
        "env": ENV_HELP,
        "revision": "target revision the checks apply to",
        "json_": JSON_HELP,
        "output": OUTPUT_HELP,
        "only": FLEET_HELP["only"],
        "exclude": FLEET_HELP["exclude"],
    }
)
@exits_with_documented_codes
def health(
    c: Any,
    env: str | None = None,
    revision: str = "head",
    json_: bool = False,
    output: str = "",
    only: str = "",
    exclude: str = "",
) -> None:
    """The health step alone; exit 0 unless a blocking check fails (then 3)."""
    _health(env, revision, json_, output, only, exclude)


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

    if _environment(env).is_fleet:
        raise UsageError(
            "invoke ci runs one database; for a fleet run `invoke migrate --env E --yes` "
            "(with --shard I/K in a matrix job)."
        )

    _health(env, revision, True, health_output)
    backup = None if skip_backup else True  # skipped only where the environment allows
    try:
        _run(env, "upgrade", revision, backup, False, False, True, False)
    finally:
        _print(get_status(_environment(env)).render())


@task(
    name="report",
    help={
        "env": ENV_HELP,
        "path": "a JSON report to render instead of the environment's last one",
        "last": "render the environment's last report (the default)",
        "format": "md, json or html (html is autoescaped)",
        "issue_body": "print the issue body for a failed run (for the workflow)",
        "output": OUTPUT_HELP,
    },
)
@exits_with_documented_codes
def report_task(
    c: Any,
    env: str | None = None,
    path: str = "",
    last: bool = False,
    format: str = "md",  # noqa: A002 - the flag users type is --format
    issue_body: bool = False,
    output: str = "",
) -> None:
    """Render a run report: Markdown, JSON, autoescaped HTML, or a GitHub issue body."""
    from safe_migrations.pipeline.report import find_report, show

    if last and path:
        raise UsageError("--last and --path contradict each other; pass one of them.")
    environment = _environment(env, need_database=False)  # reads files only: no secrets
    from safe_migrations.core.errors import ConfigError
    from safe_migrations.pipeline.report import no_report_issue_body

    try:
        data = find_report(environment, path or None, failed_only=issue_body)
    except ConfigError:
        if not issue_body or path:
            raise
        _emit(no_report_issue_body(environment.name), output)
        return
    _emit(show(data, "issue" if issue_body else format, [environment.password]), output)


@task(
    help={
        "env": ENV_HELP + "; its pending revisions are linted by default",
        "range_": "revisions A:B to lint (A exclusive, as in Alembic), e.g. base:head",
        "since": "lint only the revisions after this one (an id, prefix, head-2, ...)",
        "all_": "lint every revision",
        "baseline": "accept every finding of the whole history in the migrations folder's "
        "lint-baseline.yml; later runs fail only on new findings",
        "json_": JSON_HELP,
        "only": "fleet: the one member to work on",
    }
)
@exits_with_documented_codes
def lint(
    c: Any,
    env: str | None = None,
    range_: str = "",
    since: str = "",
    all_: bool = False,
    baseline: bool = False,
    json_: bool = False,
    only: str = "",
) -> None:
    """Check the migrations' SQL with squawk for locking and data-losing operations."""
    from safe_migrations.core.config import PROJECT_ROOT
    from safe_migrations.engines import engine_for
    from safe_migrations.project.alembic_api import project_for
    from safe_migrations.project.baseline import Baseline, write_baseline
    from safe_migrations.project.lint import selected_revisions

    environment = _one_database(_environment(env), "lint", only)
    project = project_for(environment)
    if baseline and (range_ or since):
        raise UsageError("--baseline covers the whole history; drop --range/--since.")
    chosen = selected_revisions(environment, project, range_, all_ or baseline, since)
    if baseline and not engine_for(environment.dialect).squawk_rules:
        raise UsageError(
            "--baseline accepts squawk's findings, and squawk does not run on "
            f"{engine_for(environment.dialect).name}."
        )
    result = engine_for(environment.dialect).lint(project, chosen, Baseline() if baseline else None)
    _print(json.dumps(result.to_dict(), indent=2) if json_ else result.render())
    if result.nothing_checked:
        raise result.nothing_rendered()
    if baseline:
        path, count = write_baseline(project, result.findings, PROJECT_ROOT)
        _print(f"wrote {path}: {count} finding(s) accepted; fill in each reason there.")
        return
    if result.blocking:
        raise Exit(code=EXIT_FAILED)


@task(
    help={
        "env": ENV_HELP,
        "stairway": "also run the stairway test (up, down one, up) on a scratch database",
        "json_": JSON_HELP,
    }
    | FLEET_HELP
)
@exits_with_documented_codes
def check(
    c: Any,
    env: str | None = None,
    stairway: bool = False,
    json_: bool = False,
    only: str = "",
    exclude: str = "",
    jobs: int = 0,
) -> None:
    """One head, models match the database, pending SQL linted; --stairway for downgrades."""
    from safe_migrations.core.results import render_checks
    from safe_migrations.operations.check import run_check
    from safe_migrations.project.alembic_api import project_for

    environment = _environment(env)
    if environment.is_fleet:
        from safe_migrations.operations import fleet_work

        work = fleet_work.check(stairway)
        _fleet(environment, "check", work, only, exclude, jobs, True, json_=json_, reports=False)
        return
    results = run_check(environment, project_for(environment), stairway)
    failed = [r for r in results if r.blocks]  # a warning is shown, never fails the check
    _print(render_checks(results, failed, json_))
    if failed:
        raise Exit(f"check failed: {', '.join(r.name for r in failed)}", code=EXIT_FAILED)


@task(
    help={
        "env": ENV_HELP,
        "revision": "rehearse up to this revision (default: head)",
        "from_backup": "copy from this backup (a path, s3:// URL or 'latest') instead of "
        "a fresh one",
        "json_": "print the rehearsal report as JSON instead of text",
        "only": "fleet: the one member to work on",
    }
)
@exits_with_documented_codes
def rehearse(
    c: Any,
    env: str | None = None,
    revision: str = "head",
    from_backup: str = "",
    json_: bool = False,
    only: str = "",
) -> None:
    """Run the migration on a temporary copy; report locks, rewrites and timings per revision."""
    from safe_migrations.operations.rehearsal import rehearse as run_rehearsal
    from safe_migrations.pipeline.context import Console

    def print_json(report: dict[str, Any]) -> None:
        _print(json.dumps(report, indent=2))

    run_rehearsal(
        _one_database(_environment(env), "rehearse", only),
        revision,
        from_backup or None,
        console=Console(say=lambda _text: None) if json_ else Console(),
        on_report=print_json if json_ else None,
    )


@task(
    name="fleet-matrix",
    help={"env": ENV_HELP, "shards": "how many shards (matrix jobs) to split the fleet into"},
)
@exits_with_documented_codes
def fleet_matrix(c: Any, env: str | None = None, shards: int = 4) -> None:
    """Print the JSON a GitHub Actions matrix takes: one entry per stable shard."""
    from safe_migrations.operations import fleet

    environment = _environment(env)
    if not environment.is_fleet:
        raise UsageError(f"{environment.name} is not a fleet; fleet-matrix needs a fleet file.")
    found = json.dumps(fleet.matrix(fleet.members(environment), shards))
    _print(found)
    _github_output("matrix", found)  # a workflow's job output, for strategy.matrix


@task(
    name="fleet-report",
    help={
        "env": ENV_HELP,
        "input": "a folder holding the shards' reports (as a workflow downloads them); "
        "default: the environment's reports folder",
        "issue_body": "print the issue body for a fleet run with failed members",
        "json_": JSON_HELP,
        "output": OUTPUT_HELP,
    },
)
@exits_with_documented_codes
def fleet_report(
    c: Any,
    env: str | None = None,
    input: str = "",  # noqa: A002 - the flag users type is --input
    issue_body: bool = False,
    json_: bool = False,
    output: str = "",
) -> None:
    """Merge the shards' fleet summaries into one; Markdown, JSON or a GitHub issue body."""
    from pathlib import Path

    from safe_migrations.operations.fleet_merge import merge_summaries
    from safe_migrations.pipeline.report import render

    environment = _environment(env, need_database=False)  # reads files only: no secrets
    folder = Path(input) if input else environment.report_dir / "fleets"
    merged = merge_summaries(environment, folder)
    if merged is None:
        raise UsageError(
            f"No fleet summary for {environment.name} under {folder}; the shards wrote none "
            "(see their logs)."
        )
    if json_:
        _emit(json.dumps(merged, indent=2), output)
    else:
        _emit(render(merged, "fleet_issue.md.j2" if issue_body else "fleet.md.j2"), output)
    if merged["problems"] and not issue_body:  # the issue body's job is to say so
        problems = merged["problems"]
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise ToolError(
            f"The shards' summaries do not add up to the fleet run: {problems[0]}{more}. "
            "The merged summary says so; do not read it as the fleet's outcome."
        )


ns = Collection(
    status,
    heads,
    generate,
    migrate,
    downgrade,
    rollback,
    backup,
    backups_task,
    restore_task,
    resolve,
    health,
    report_task,
    ci,
    lint,
    check,
    rehearse,
    fleet_matrix,
    fleet_report,
)
