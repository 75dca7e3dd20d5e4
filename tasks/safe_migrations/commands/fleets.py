"""Tasks for CI fleets: the shard matrix, and the merged report of the shards."""

from __future__ import annotations

import json
from typing import Any

from invoke import task

from safe_migrations.commands.common import (
    ENV_HELP,
    JSON_HELP,
    OUTPUT_HELP,
    emit,
    exits_with_documented_codes,
    github_output,
    load_env,
    say,
)
from safe_migrations.core.errors import ToolError, UsageError


@task(
    name="fleet-matrix",
    help={"env": ENV_HELP, "shards": "how many shards (matrix jobs) to split the fleet into"},
)
@exits_with_documented_codes
def fleet_matrix(c: Any, env: str | None = None, shards: int = 4) -> None:
    """Print the JSON a GitHub Actions matrix takes: one entry per stable shard."""
    from safe_migrations.operations import fleet

    environment = load_env(env)
    if not environment.is_fleet:
        raise UsageError(f"{environment.name} is not a fleet; fleet-matrix needs a fleet file.")
    found = json.dumps(fleet.matrix(fleet.members(environment), shards))
    say(found)
    github_output("matrix", found)  # a workflow's job output, for strategy.matrix


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

    environment = load_env(env, need_database=False)  # reads files only: no secrets
    folder = Path(input) if input else environment.report_dir / "fleets"
    merged = merge_summaries(environment, folder)
    if merged is None:
        raise UsageError(
            f"No fleet summary for {environment.name} under {folder}; the shards wrote none "
            "(see their logs)."
        )
    if json_:
        emit(json.dumps(merged, indent=2), output)
    else:
        emit(render(merged, "fleet_issue.md.j2" if issue_body else "fleet.md.j2"), output)
    if merged["problems"] and not issue_body:  # the issue body's job is to say so
        problems = merged["problems"]
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise ToolError(
            f"The shards' summaries do not add up to the fleet run: {problems[0]}{more}. "
            "The merged summary says so; do not read it as the fleet's outcome."
        )
