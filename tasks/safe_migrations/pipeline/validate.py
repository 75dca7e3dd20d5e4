"""The validate step: the database is at the target, answers, matches the models,
and (on PostgreSQL) has no index left INVALID by a failed CONCURRENTLY build and no
constraint left NOT VALID (a rewrite's part, or the tool's own ``sm_nn_*`` check, that a
kill or a failure left: it would reject new rows while checking none of the old).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from safe_migrations.core.config import Environment
from safe_migrations.core.database import connect
from safe_migrations.core.errors import UnreachableError, first_line
from safe_migrations.core.results import StepResult, timed
from safe_migrations.engines import engine_for
from safe_migrations.project.alembic_api import Project, current_revision
from safe_migrations.project.drift import Before


def schema_drift(connection: Any, project: Project, before: Before | None = None) -> Any:
    """The schema step's result: the differences from the models (the project's compare
    options), split by the drift baseline, and those this run introduced (not there in
    ``before``, the differences found before the run)."""
    from pathlib import Path

    from safe_migrations.project.drift import against_baseline, differences

    metadata, options = project.comparison(connection)
    if metadata is None:
        return None
    with timed() as clock:
        drift = against_baseline(
            differences(connection, metadata, options), Path(project.scripts().dir)
        )
    known = (
        before.resolve(connection, metadata, options) if before is not None and drift.new else None
    )
    introduced = [d for d in drift.new if known is not None and d not in known]
    said = []
    if drift.new:
        said.append(
            "schema differs from the models"
            + (f" (introduced by this run: {'; '.join(introduced)})" if introduced else "")
            + f": {'; '.join(drift.new)}"
        )
    else:
        said.append("schema matches the models")
    if drift.accepted:
        said.append(f"{len(drift.accepted)} accepted difference(s) in the drift baseline")
    if drift.stale:
        said.append(f"stale baseline entries (no longer differ): {'; '.join(drift.stale)}")
    return StepResult(
        "schema",
        not drift.new,
        ", ".join(said),
        duration=clock.seconds,
        details={
            "differences": drift.new,
            "accepted": drift.accepted,
            "stale": drift.stale,
            "introduced": introduced,
        },
    )


def invalid_indexes(connection: Any) -> list[str]:
    from sqlalchemy import text

    rows = connection.execute(
        text("SELECT indexrelid::regclass::text FROM pg_index WHERE NOT indisvalid ORDER BY 1")
    )
    return [row[0] for row in rows]


def unvalidated_constraints(connection: Any) -> list[str]:
    from sqlalchemy import text

    rows = connection.execute(
        text(
            "SELECT conrelid::regclass::text || '.' || conname FROM pg_constraint "
            "WHERE conrelid <> 0 AND (NOT convalidated OR conname LIKE 'sm\\_nn\\_%') "
            "ORDER BY 1"
        )
    )
    return [row[0] for row in rows]


def _leftovers(
    name: str, find: Callable[[], list[str]], clean: str, left: str, key: str
) -> StepResult:
    """A check that fails on what a failed or killed part left behind, naming each."""
    with timed() as clock:
        found = find()
    message = f"{left}: {', '.join(found)}" if found else clean
    return StepResult(name, not found, message, duration=clock.seconds, details={key: found})


def validate(
    env: Environment,
    project: Project,
    target: str | None,
    compare_models: bool,
    before: Before | None = None,
) -> list[StepResult]:
    """Each check as a result; any failure makes the run fail.

    Kept long: each check's result goes into one step result in a fixed order; the
    checks themselves are functions of their own."""
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    results: list[StepResult] = []
    try:
        with connect(env, role="validate") as connection:
            with timed() as clock:
                connection.execute(text("SELECT 1"))
            results.append(
                StepResult("answers", True, "the database answers", duration=clock.seconds)
            )
            with timed() as clock:
                current = current_revision(connection)
            ok = current == target
            results.append(
                StepResult(
                    "revision",
                    ok,
                    f"at {current or 'base'}"
                    if ok
                    else f"at {current or 'base'}, expected {target or 'base'}",
                    duration=clock.seconds,
                    details={"current": current, "target": target},
                )
            )
            schema = schema_drift(connection, project, before) if compare_models else None
            if schema is not None:
                results.append(schema)
            if engine_for(env.dialect).invalid_indexes:  # MySQL builds all or nothing
                results.append(
                    _leftovers(
                        "indexes",
                        lambda: invalid_indexes(connection),
                        "no invalid index",
                        "invalid indexes left by a failed build",
                        "invalid",
                    )
                )
                results.append(
                    _leftovers(
                        "constraints",
                        lambda: unvalidated_constraints(connection),
                        "no constraint left NOT VALID",
                        "constraints left NOT VALID (they reject new rows and check no old "
                        "one; VALIDATE or drop them)",
                        "unvalidated",
                    )
                )
    except (DBAPIError, UnreachableError) as exc:
        results.append(
            StepResult("answers", False, f"the database does not answer: {first_line(exc)}")
        )
    return results
