"""The health step: can the migration start safely right now?

Each check is a function returning a StepResult. Blocking failures stop a run
(exit 3); low disk is a warning; a missing ``alembic_version`` means "first
migration", which is fine.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

from safe_migrations.core.config import Environment
from safe_migrations.core.database import closed_after, make_engine
from safe_migrations.core.errors import ConfigError, first_line
from safe_migrations.core.results import StepResult, timed
from safe_migrations.core.revisions import resolve_revision
from safe_migrations.engines import engine_for
from safe_migrations.project.alembic_api import Project, current_revision, heads


def connect_checked(env: Environment) -> tuple[StepResult, Any]:
    """Connect within ``database.connect_timeout`` (a silent host fails at the deadline):
    the result and, when it passed, the connection it opened, for the checks that
    follow (one connection less per run)."""
    timeout = env.settings.database.connect_timeout
    outcome: dict[str, Any] = {}

    def attempt() -> None:
        from sqlalchemy import text

        try:
            connection = make_engine(env, role="health").connect()
            outcome["version"] = connection.execute(
                text(engine_for(env.dialect).version_sql)
            ).scalar()
            outcome["connection"] = connection
        except Exception as exc:  # reported below, never swallowed
            outcome["error"] = exc

    with timed() as clock:
        worker = threading.Thread(target=attempt, daemon=True)
        worker.start()
        worker.join(timeout)
    if worker.is_alive():
        return StepResult(
            "connection",
            False,
            f"no answer from {env.masked_url} within {timeout:g}s "
            "(host unreachable or not a database server)",
            duration=clock.seconds,
            details={"timeout": timeout},
        ), None
    if "error" in outcome:
        message = connection_message(env, outcome["error"])
        return StepResult("connection", False, message, duration=clock.seconds), None
    return StepResult(
        "connection",
        True,
        f"connected, server {outcome['version']}",
        duration=clock.seconds,
        details={"server_version": outcome["version"]},
    ), outcome["connection"]


def connection_message(env: Environment, exc: BaseException) -> str:
    """One sentence for a failed connection; the wording only, never the exit code."""
    if engine_for(env.dialect).password_rejected(getattr(exc, "orig", None)):
        return f"password rejected for {env.masked_url}; check DB_USER and DB_PASSWORD"
    text = str(getattr(exc, "orig", None) or exc).strip()
    first = first_line(exc)
    if "refused" in text.lower():
        return f"connection refused by {env.masked_url} (is the server running on that port?)"
    if "timeout" in text.lower() or "timed out" in text.lower():
        return f"no answer from {env.masked_url} within the connect timeout"
    return f"cannot connect to {env.masked_url}: {first}"


def database_size(env: Environment, connection: Any) -> int:
    return engine_for(env.dialect).database_size(env, connection)


def check_report_folder(env: Environment) -> StepResult:
    """The report must be writable before anything changes: a run must be able to say
    what it did."""
    from safe_migrations.core.files import probe_writable

    with timed() as clock:
        problem = probe_writable(env.report_dir)
    return StepResult(
        "reports",
        problem is None,
        f"{env.report_dir} is writable"
        if problem is None
        else f"cannot write reports to {env.report_dir} ({problem}); free space there or "
        "choose a writable reports.folder",
        duration=clock.seconds,
    )


def check_version_table(connection: Any, project: Project) -> StepResult:
    """Absent is a first migration; a revision the scripts do not know blocks the run."""
    from sqlalchemy import inspect

    with timed() as clock:
        present = inspect(connection).has_table("alembic_version")
        current = current_revision(connection) if present else None
        known = {s.revision for s in project.scripts().walk_revisions()}
        unknown = [r for r in (current or "").split(",") if r and r not in known]
    details = {"present": present, "current": current}
    if unknown:
        return StepResult(
            "alembic_version",
            False,
            f"the database is at {', '.join(unknown)}, which these scripts do not contain "
            "(deployed from newer code?); deploy the code that has it",
            duration=clock.seconds,
            details=details,
        )
    message = (
        f"alembic_version present, at {current or 'base'}"
        if present
        else "no alembic_version: first migration"
    )
    return StepResult(
        "alembic_version", True, message, severity="info", duration=clock.seconds, details=details
    )


def check_single_head(project: Project) -> StepResult:
    with timed() as clock:
        found = heads(project.scripts())
    ok = len(found) == 1
    message = (
        f"one head: {found[0]}"
        if ok
        else f"{len(found)} heads ({', '.join(found) or 'none'}); merge them with "
        "`alembic merge heads`"
        if found
        else "no revisions yet"
    )
    return StepResult("single_head", ok, message, duration=clock.seconds, details={"heads": found})


def check_target(project: Project, target: str, current: str | None = None) -> StepResult:
    with timed() as clock:
        try:
            resolved = resolve_revision(project.scripts(), target, current)
            ok, message = True, f"target {target} is {resolved or 'base'}"
        except ConfigError as exc:
            resolved, ok, message = None, False, exc.message
    return StepResult(
        "target",
        ok,
        message,
        duration=clock.seconds,
        details={"target": target, "resolved": resolved},
    )


def run_health(
    env: Environment, project: Project, target: str = "head", backing_up: bool = True
) -> list[StepResult]:
    """All checks in order; a failed connection skips those that need the database.
    ``backing_up`` false (a run that takes no backup) skips the backup store's probe."""
    checked, opened = connect_checked(env)
    results = [checked]
    db_size: int | None = None
    current: str | None = None
    if opened is not None:
        engine = engine_for(env.dialect)
        with closed_after(opened) as connection:
            first = engine.first_checks(env, connection)  # before the catalog queries
            results += first
            if not all(result.ok for result in first):
                return results
            db_size = database_size(env, connection)
            results.append(check_version_table(connection, project))
            current = results[-1].details["current"]
            results += engine.session_checks(env, connection)
    from safe_migrations.stores import store_for

    results += store_for(env).health(db_size, backing_up)
    results.append(check_report_folder(env))
    results.append(check_single_head(project))
    results.append(check_target(project, target, current))
    if env.settings.health.lint and results[0].ok and results[-1].ok:
        from safe_migrations.project.lint import lint_pending

        results.append(
            lint_pending(
                project,
                current,
                results[-1].details["resolved"],
                functools.partial(engine_for(env.dialect).lint, env),
            )
        )
    return results


def blocking(results: list[StepResult]) -> list[StepResult]:
    return [r for r in results if r.blocks]
