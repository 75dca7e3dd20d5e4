"""`invoke check`: one head, models match the database, lint of what is pending, and on
request the stairway test (up, down one, up again, for every revision) on a scratch database.
"""

from __future__ import annotations

import functools
from typing import Any

from safe_migrations.core.config import Environment
from safe_migrations.core.database import connect
from safe_migrations.core.results import StepResult, timed
from safe_migrations.engines import engine_for
from safe_migrations.pipeline.health import check_single_head
from safe_migrations.pipeline.status import read_current
from safe_migrations.project.alembic_api import Project, current_revision, history
from safe_migrations.project.lint import lint_pending


def check_drift(env: Environment, project: Project) -> StepResult:
    """Models against the database, with env.py's compare options and the drift baseline;
    only meaningful when the database is at the head."""
    from pathlib import Path

    from safe_migrations.project.drift import against_baseline, differences

    with timed() as clock, connect(env, role="check") as connection:
        current = current_revision(connection)
        head = project.scripts().get_current_head()
        metadata, options = project.comparison(connection)
        if metadata is None:
            return StepResult(
                "drift",
                False,
                "no models to compare: the project's env.py passes no target_metadata to "
                "context.configure; pass your models' MetaData there (as for autogenerate)",
                severity="warning",
                duration=clock.seconds,
            )
        if current != head:
            return StepResult(
                "drift",
                True,
                f"database at {current or 'base'}, not the head {head}: "
                "compared after the pending revisions run",
                severity="info",
                duration=clock.seconds,
            )
        drift = against_baseline(
            differences(connection, metadata, options), Path(project.scripts().dir)
        )
    message = (
        "models match the database"
        if not drift.new
        else f"models differ from the database (a model change without a revision?): "
        f"{'; '.join(drift.new)}"
    )
    if drift.accepted:
        message += f"; {len(drift.accepted)} accepted in the drift baseline"
    if drift.stale:
        message += f"; stale baseline entries (no longer differ): {'; '.join(drift.stale)}"
    return StepResult(
        "drift",
        not drift.new,
        message,
        duration=clock.seconds,
        details={"differences": drift.new, "accepted": drift.accepted, "stale": drift.stale},
    )


def accept_drift(env: Environment, project: Project) -> tuple[str, int]:
    """Write every current difference into the drift baseline (reasons kept); the
    database must be at the head, where the models describe it."""
    from pathlib import Path

    from safe_migrations.core.errors import UsageError
    from safe_migrations.project.drift import differences, write_baseline

    with connect(env, role="check") as connection:
        current = current_revision(connection)
        head = project.scripts().get_current_head()
        if current != head:
            raise UsageError(
                f"--accept-drift compares the models with the database at the head {head}, "
                f"but {env.name} is at {current or 'base'}; migrate it first."
            )
        metadata, options = project.comparison(connection)
        if metadata is None:
            raise UsageError(
                "--accept-drift needs models: the project's env.py passes no target_metadata "
                "to context.configure."
            )
        found = differences(connection, metadata, options)
    path, count = write_baseline(Path(project.scripts().dir), found, head)
    return str(path), count


def check_lint(env: Environment, project: Project) -> StepResult:
    return lint_pending(
        project,
        read_current(env),
        project.scripts().get_current_head(),
        functools.partial(engine_for(env.dialect).lint, env),
    )


def _snapshot(connection: Any) -> dict[str, Any]:
    """Tables, columns, indexes, foreign keys and unique constraints, comparable."""
    from sqlalchemy import inspect

    from safe_migrations.operations.proof import TOOL_TABLES

    inspector = inspect(connection)
    snapshot: dict[str, Any] = {}
    for table in sorted(inspector.get_table_names()):
        if table == "alembic_version" or table in TOOL_TABLES:
            continue
        snapshot[table] = {
            "columns": sorted(
                (c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(table)
            ),
            "indexes": sorted(i["name"] or "" for i in inspector.get_indexes(table)),
            "foreign_keys": sorted(
                str(fk["referred_table"]) + ":" + ",".join(fk["constrained_columns"])
                for fk in inspector.get_foreign_keys(table)
            ),
            "unique": sorted(u["name"] or "" for u in inspector.get_unique_constraints(table)),
        }
    return snapshot


def stairway(env: Environment, project: Project) -> StepResult:
    """For each revision: upgrade, downgrade one, compare with before, upgrade again."""
    from safe_migrations.pipeline.upgrade import MigrationError, run_migrations

    revisions = history(project.scripts())
    with (
        timed() as clock,
        engine_for(env.dialect).scratch_database(env, env.resolve("var/scratch")) as scratch,
    ):
        for revision in revisions:
            with connect(scratch, role="stairway") as connection:
                before = _snapshot(connection)
            try:
                run_migrations(scratch, project, revision.revision)
                run_migrations(scratch, project, revision.down_revision, "downgrade")
            except MigrationError as exc:  # a failed step is the stairway's finding
                return StepResult(
                    "stairway",
                    False,
                    f"revision {revision.revision} ({revision.path}): {exc.message}",
                    duration=clock.seconds,
                    details={"revision": revision.revision, "failed": exc.revision},
                )
            with connect(scratch, role="stairway") as connection:
                after = _snapshot(connection)
            if after != before:
                left = sorted(set(after) - set(before)) or sorted(
                    t for t in after if after[t] != before.get(t)
                )
                return StepResult(
                    "stairway",
                    False,
                    f"revision {revision.revision} ({revision.path}): its downgrade does "
                    f"not undo its upgrade; left behind or changed: {', '.join(left)}",
                    duration=clock.seconds,
                    details={"revision": revision.revision, "tables": left},
                )
            run_migrations(scratch, project, revision.revision)
    return StepResult(
        "stairway",
        True,
        f"{len(revisions)} revision(s): each downgrade undoes its upgrade",
        duration=clock.seconds,
    )


def run_check(env: Environment, project: Project, with_stairway: bool) -> list[StepResult]:
    results = [check_single_head(project), check_drift(env, project), check_lint(env, project)]
    if with_stairway:
        results.append(stairway(env, project))
    return results
