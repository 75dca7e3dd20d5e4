"""Tasks about the project's revisions: generate one, lint them, check them (drift and
the stairway), rehearse them on a copy."""

from __future__ import annotations

import json
from typing import Any

from invoke import Exit, task

from safe_migrations.commands.common import (
    ENV_HELP,
    FLEET_HELP,
    JSON_HELP,
    OUTPUT_HELP,
    exits_with_documented_codes,
    fleet_of,
    load_env,
    one_database,
    say,
)
from safe_migrations.core.errors import EXIT_FAILED, UsageError


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

    environment = one_database(load_env(env), "generate", only) if autogenerate else load_env(env)
    say(
        new_revision(
            message, autogenerate, environment if autogenerate else None, project_for(environment)
        )
    )


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

    environment = one_database(load_env(env), "lint", only)
    project = project_for(environment)
    if baseline and (range_ or since):
        raise UsageError("--baseline covers the whole history; drop --range/--since.")
    chosen = selected_revisions(environment, project, range_, all_ or baseline, since)
    if baseline and not engine_for(environment.dialect).squawk_rules:
        raise UsageError(
            "--baseline accepts squawk's findings, and squawk does not run on "
            f"{engine_for(environment.dialect).name}."
        )
    result = engine_for(environment.dialect).lint(
        environment, project, chosen, Baseline() if baseline else None
    )
    say(json.dumps(result.to_dict(), indent=2) if json_ else result.render())
    if result.nothing_checked:
        raise result.nothing_rendered()
    if baseline:
        path, count = write_baseline(project, result.findings, PROJECT_ROOT)
        say(f"wrote {path}: {count} finding(s) accepted; fill in each reason there.")
        return
    if result.blocking:
        raise Exit(code=EXIT_FAILED)


@task(
    help={
        "env": ENV_HELP,
        "stairway": "also run the stairway test (up, down one, up) on a scratch database",
        "accept_drift": "write today's differences from the models into drift-baseline.yml "
        "(beside the revisions): validation and check then fail only on new ones",
        "json_": JSON_HELP,
    }
    | FLEET_HELP
)
@exits_with_documented_codes
def check(
    c: Any,
    env: str | None = None,
    stairway: bool = False,
    accept_drift: bool = False,
    json_: bool = False,
    only: str = "",
    exclude: str = "",
    jobs: int = 0,
) -> None:
    """One head, models match the database, pending SQL linted; --stairway for downgrades."""
    from safe_migrations.core.results import render_checks
    from safe_migrations.operations.check import accept_drift as accept
    from safe_migrations.operations.check import run_check
    from safe_migrations.project.alembic_api import project_for

    environment = load_env(env)
    if accept_drift:
        path, count = accept(one_database(environment, "check", only), project_for(environment))
        say(f"wrote {path}: {count} difference(s) accepted; fill in each reason there.")
        return
    if environment.is_fleet:
        from safe_migrations.operations import fleet_work

        work = fleet_work.check(stairway)
        fleet_of(environment, "check", work, only, exclude, jobs, True, json_=json_, reports=False)
        return
    results = run_check(environment, project_for(environment), stairway)
    failed = [r for r in results if r.blocks]  # a warning is shown, never fails the check
    say(render_checks(results, failed, json_))
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
        "traffic": "N synthetic clients reading and writing the touched tables on the copy "
        "while it upgrades (default: rehearsal.traffic)",
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
    traffic: int = -1,
) -> None:
    """Run the migration on a temporary copy; report locks, rewrites and timings per revision."""
    from safe_migrations.core.config import with_traffic
    from safe_migrations.operations.rehearsal import rehearse as run_rehearsal
    from safe_migrations.pipeline.context import Console

    def print_json(report: dict[str, Any]) -> None:
        say(json.dumps(report, indent=2))

    environment = one_database(load_env(env), "rehearse", only)
    run_rehearsal(
        with_traffic(environment, traffic) if traffic >= 0 else environment,
        revision,
        from_backup or None,
        console=Console(say=lambda _text: None) if json_ else Console(),
        on_report=print_json if json_ else None,
    )


@task(
    name="pr-comment",
    help={
        "input": "the folder of the pull-request jobs' reports (lint.json, check.json, "
        "rehearsal.json, staging.json or staging-skipped.txt)",
        "output": OUTPUT_HELP,
    },
)
@exits_with_documented_codes
def pr_comment(c: Any, input_: str = "", output: str = "") -> None:
    """The pull request's comment about its new revisions; exit 1 when the verdict fails."""
    from pathlib import Path

    from safe_migrations.commands.common import emit, github_output
    from safe_migrations.operations.pr_comment import read_inputs, render
    from safe_migrations.pipeline.report import run_url

    if not input_:
        raise UsageError("pr-comment needs --input, the folder the pull-request jobs wrote.")
    inputs = read_inputs(Path(input_))
    emit(render(inputs, run_url()), output)
    github_output("verdict", "pass" if inputs.passed else "fail")
    if not inputs.passed:
        raise Exit("pr-comment: the verdict fails; the comment says why.", code=EXIT_FAILED)
