"""The validate step: the database is at the target, answers, matches the models,
and (on PostgreSQL) has no index left INVALID by a failed CONCURRENTLY build.
"""

from __future__ import annotations

from typing import Any

from safe_migrations.core.config import Environment
from safe_migrations.core.database import connect
from safe_migrations.core.errors import UnreachableError, first_line
from safe_migrations.core.results import StepResult, timed
from safe_migrations.engines import engine_for
from safe_migrations.project.alembic_api import Project, current_revision


def schema_drift(connection: Any, metadata: Any) -> list[str]:
    """Alembic's compare, as ``alembic check`` does it: one readable line per difference."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from safe_migrations.operations.proof import TOOL_TABLES

    def include_object(obj: Any, name: str | None, kind: str, reflected: bool, _other: Any) -> bool:
        return not (kind == "table" and reflected and name in TOOL_TABLES)  # ours, not a model's

    context = MigrationContext.configure(
        connection,
        opts={"compare_type": True, "target_metadata": metadata, "include_object": include_object},
    )
    return [describe_diff(diff) for diff in compare_metadata(context, metadata)]


def describe_diff(diff: Any) -> str:
    """'add_column users.nickname' style text for one autogenerate difference."""
    if isinstance(diff, list):  # modify_* diffs come grouped per column
        return "; ".join(describe_diff(d) for d in diff)
    kind = diff[0]
    if kind in ("add_table", "remove_table"):
        return f"{kind} {diff[1].name}"
    if kind in ("add_column", "remove_column"):
        return f"{kind} {diff[2]}.{diff[3].name}"
    if kind in ("add_index", "remove_index", "add_constraint", "remove_constraint"):
        obj = diff[1]
        table = getattr(getattr(obj, "table", None), "name", "?")
        return f"{kind} {table}.{obj.name}"
    if kind.startswith("modify_"):
        return f"{kind} {diff[2]}.{diff[3]}: {diff[-2]!r} -> {diff[-1]!r}"
    if kind in ("add_fk", "remove_fk"):
        return f"{kind} {diff[1].parent.name}.{diff[1].name}"
    return str(diff)


def invalid_indexes(connection: Any) -> list[str]:
    from sqlalchemy import text

    rows = connection.execute(
        text("SELECT indexrelid::regclass::text FROM pg_index WHERE NOT indisvalid ORDER BY 1")
    )
    return [row[0] for row in rows]


def validate(
    env: Environment, project: Project, target: str | None, compare_models: bool
) -> list[StepResult]:
    """Each check as a result; any failure makes the run fail.

    Kept long: each check's result goes into one step result in a fixed order; the
    checks themselves are functions of their own."""
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    results: list[StepResult] = []
    try:
        with timed() as clock, connect(env, role="validate") as connection:
            connection.execute(text("SELECT 1"))
        results.append(StepResult("answers", True, "the database answers", duration=clock.seconds))
        with connect(env, role="validate") as connection:
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
            metadata = project.metadata(connection) if compare_models else None
            if metadata is not None:
                with timed() as clock:
                    drift = schema_drift(connection, metadata)
                results.append(
                    StepResult(
                        "schema",
                        not drift,
                        "schema matches the models"
                        if not drift
                        else f"schema differs from the models: {'; '.join(drift)}",
                        duration=clock.seconds,
                        details={"differences": drift},
                    )
                )
            if engine_for(env.dialect).invalid_indexes:  # MySQL builds all or nothing
                with timed() as clock:
                    invalid = invalid_indexes(connection)
                results.append(
                    StepResult(
                        "indexes",
                        not invalid,
                        "no invalid index"
                        if not invalid
                        else f"invalid indexes left by a failed build: {', '.join(invalid)}",
                        duration=clock.seconds,
                        details={"invalid": invalid},
                    )
                )
    except (DBAPIError, UnreachableError) as exc:
        results.append(
            StepResult("answers", False, f"the database does not answer: {first_line(exc)}")
        )
    return results
