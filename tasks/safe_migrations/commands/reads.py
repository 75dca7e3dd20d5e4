"""Tasks that read and change nothing but their own output: status, heads, health,
report, dashboard."""

from __future__ import annotations

import json
from typing import Any

from invoke import Exit, task

from safe_migrations.commands.common import (
    ENV_HELP,
    FLEET_HELP,
    JSON_HELP,
    OUTPUT_HELP,
    emit,
    exits_with_documented_codes,
    fleet_of,
    load_env,
    say,
)
from safe_migrations.core.errors import EXIT_BLOCKED, EXIT_FAILED, UsageError


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

    environment = load_env(env)
    if environment.is_fleet:
        from safe_migrations.operations import fleet_work

        work = fleet_work.status()
        fleet_of(environment, "status", work, only, exclude, jobs, True, json_=json_, reports=False)
        return
    result = get_status(environment)
    say(json.dumps(result.to_dict(), indent=2) if json_ else result.render())


@task(help={"env": ENV_HELP + "; picks the Alembic project"})
@exits_with_documented_codes
def heads(c: Any, env: str | None = None) -> None:
    """The scripts' heads; warns (exit 1) when there are several."""
    from safe_migrations.project.alembic_api import heads as find_heads
    from safe_migrations.project.alembic_api import project_for

    found = find_heads(project_for(load_env(env)).scripts())
    for head in found:
        say(head)
    if len(found) > 1:
        raise Exit(
            f"warning: {len(found)} heads; merge them with `alembic merge heads`.", code=EXIT_FAILED
        )


def show_health(
    env: str | None, revision: str, json_: bool, output: str, only: str = "", exclude: str = ""
) -> None:
    from safe_migrations.core.results import render_checks
    from safe_migrations.pipeline.health import blocking, run_health
    from safe_migrations.project.alembic_api import project_for

    environment = load_env(env)
    if environment.is_fleet:
        from safe_migrations.operations import fleet_work

        work = fleet_work.health(revision)
        fleet_of(
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
    emit(render_checks(results, failed, json_), output)
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
    show_health(env, revision, json_, output, only, exclude)


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
    environment = load_env(env, need_database=False)  # reads files only: no secrets
    from safe_migrations.core.errors import ConfigError
    from safe_migrations.pipeline.report import no_report_issue_body

    try:
        data = find_report(environment, path or None, failed_only=issue_body)
    except ConfigError:
        if not issue_body or path:
            raise
        emit(no_report_issue_body(environment.name), output)
        return
    emit(show(data, "issue" if issue_body else format, [environment.password]), output)


DASHBOARD_HELP = {
    "env": "an environment to show (repeat for several; default: every file in environments/)",
    "offline": "read only the files runs left (no database is contacted)",
    "output": "where to write the page (default: var/dashboard.html)",
}


@task(iterable=["env"], help=DASHBOARD_HELP)
@exits_with_documented_codes
def dashboard(
    c: Any, env: list[str] | None = None, offline: bool = False, output: str = ""
) -> None:
    """One self-contained HTML page: every environment and fleet member at a glance."""
    import os
    from pathlib import Path

    from safe_migrations.core.config import PROJECT_ROOT
    from safe_migrations.operations.dashboard import databases, gather
    from safe_migrations.operations.dashboard_page import summary, write_page

    folder = os.environ.get("MIGRATE_ENVIRONMENTS_DIR")
    envs = databases(list(env or []), Path(folder) if folder else None, offline)
    views = gather(envs, offline)
    page = write_page(
        views, Path(output) if output else PROJECT_ROOT / "var" / "dashboard.html", offline
    )
    counts = summary(views)
    say(
        f"dashboard: {page} ({counts['databases']} database(s), {counts['behind']} behind head, "
        f"{counts['failed']} with a failed last run, {counts['unreachable']} unreachable)"
    )
