"""What every task shares: the flags' help, loading the environment, the fleet's
selection, printing, and the one place errors become a sentence and an exit code."""

from __future__ import annotations

import functools
import json
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from invoke import Exit

from safe_migrations.core.errors import EXIT_BLOCKED, EXIT_FAILED, ToolError, UsageError
from safe_migrations.core.quick_exit import freeze_at_exit

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
        freeze_at_exit()
        code = EXIT_FAILED
        try:
            result = _mapped(function, *args, **kwargs)
            code = 0
            return result
        except Exit as exc:
            code = exc.code
            raise
        finally:
            github_output("exit_code", str(code))

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


def github_output(name: str, value: str) -> None:
    import os

    path = os.environ.get("GITHUB_OUTPUT")
    if path:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(f"{name}={value}\n")


def say(text: object = "", end: str = "\n") -> None:
    """Print for a terminal: escape sequences in messages a user wrote never reach it."""
    from safe_migrations.core.escaping import terminal

    print(terminal(str(text)), end=end)


def _interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def load_env(name: str | None, need_database: bool = True) -> Any:
    from safe_migrations.core.config import load_environment

    environment = load_environment(name, need_database=need_database)
    for warning in environment.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return environment


def backup_flag(backup: bool, no_backup: bool, no_backup_if_allowed: bool = False) -> bool | None:
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


def fleet_of(
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
        say(
            f"warning: an earlier fleet {run['operation']} (pid {run['pid']}, started "
            f"{run['started_at']}) was killed before writing its summary; its members were "
            f"stopped with it: {', '.join(run['members'][:10])}"
            + (" ..." if len(run["members"]) > 10 else "")
            + ". Their own reports say where each stands."
        )
    path = fleet.write_summary(environment, summary, found) if reports else None
    secrets = [environment.password, *(url_password(m.url) for m in found)]
    if json_:
        emit(json.dumps(redact_data(summary.to_dict(), secrets), indent=2), output)
    else:
        emit(fleet.render_table(summary), output)
        if path is not None:
            say(f"summary: {path}")
    if summary.exit_code:
        counts = ", ".join(f"{n} {outcome}" for outcome, n in sorted(summary.counts().items()))
        raise Exit(f"fleet {environment.name}: {counts}", code=summary.exit_code)


def one_database(environment: Any, task_name: str, only: str = "") -> Any:
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


def confirm_fleet(environment: Any, operation: str, revision: str, yes: bool, chosen: Any) -> None:
    """Once for the chosen members (production: its name typed), before any starts."""
    from safe_migrations.pipeline import confirm

    on_terminal = interactive()
    confirm.refuse_without_terminal(environment, yes, on_terminal)
    if confirm.needs_confirmation(environment, yes):
        names = [m.name for m in chosen]
        text = (
            f"environment: {environment.name} (a fleet: {len(names)} member(s) chosen)\n"
            f"operation:   {operation} to {revision} on each member\n"
            f"members:     {', '.join(names[:20])}{' ...' if len(names) > 20 else ''}"
        )
        confirm.confirm(environment, text, ask=input, say=print)


def interactive() -> bool:
    from safe_migrations.pipeline.confirm import is_interactive

    return is_interactive()


@dataclass(frozen=True)
class FleetFlags:
    """--only, --exclude, --jobs, --keep-going and --shard, for a fleet."""

    only: str = ""
    exclude: str = ""
    jobs: int = 0
    keep_going: bool = False
    shard: str = ""


NO_FLEET = FleetFlags()  # a single database: no --only, --exclude or --keep-going


OUTPUT_HELP = "also write the output to this file (folders are created)"


def emit(text: str, output: str) -> None:
    """Print, and write to ``output`` too when given (for CI artifacts)."""
    text = text if text.endswith("\n") else text + "\n"
    say(text, end="")
    if output:
        from pathlib import Path

        from safe_migrations.core.files import private_folder, write_atomic

        private_folder(Path(output).resolve().parent)
        write_atomic(Path(output), text)  # 0600: health results and issue bodies stay private
