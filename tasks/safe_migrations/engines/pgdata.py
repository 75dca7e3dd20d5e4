"""Data statements over large tables on PostgreSQL: an ``UPDATE``, ``DELETE`` or
``INSERT ... SELECT`` that the planner expects to touch more rows than
``migration.max_rows_in_one_statement`` holds every row lock it takes until its
transaction ends, stalling the application's writers of those rows for as long.

Judged twice: before the run, for the statements revisions pass to ``op.execute``
(pgrefusals.py refuses them with the others), and as a revision issues them (a loop
over ``op.get_bind()``), where an oversized one stops the revision before it runs.
``safe_migrations.ops.backfill``'s batches are exempt, and so is a table the run made.
"""

from __future__ import annotations

import re
from typing import Any

from safe_migrations.core.errors import RefusedError
from safe_migrations.engines.pgsafe import qualified
from safe_migrations.engines.refusals import RECIPES, accepting

RECIPE = RECIPES["large-data-change"]
_DATA = re.compile(r"^\s*(?:with\b.*?\)\s*)?(update|delete|insert)\b", re.I | re.S)


def large_data_change(connection: Any, sql: Any, limit: int | None) -> tuple[str, str] | None:
    """An UPDATE, DELETE or INSERT ... SELECT the planner expects to touch more than
    ``limit`` rows: one transaction holding every row lock it takes (writers of those
    rows wait for all of it), refused with the ``backfill`` recipe. A table that is not
    there yet, or made by the run itself, is nobody else's: not judged."""
    text = str(sql) if not isinstance(sql, str) else sql
    if limit is None or not _DATA.match(text) or ";" in text.strip().rstrip(";"):
        return None
    estimate = estimated_rows(connection, text.strip().rstrip(";"))
    if estimate is None or estimate <= limit:
        return None
    return ("large-data-change", too_many_rows(text, estimate, limit))


def too_many_rows(statement: str, estimate: int, limit: int) -> str:
    shown = " ".join(statement.split())[:80]
    return (
        f"`{shown}` would change about {estimate:,} rows in one transaction (more than "
        f"migration.max_rows_in_one_statement={limit:,}), holding every row lock it takes "
        "until it ends and stalling the writers of those rows"
    )


def estimated_rows(connection: Any, statement: str) -> int | None:
    """The planner's estimate of the rows a data statement touches (the largest of its
    plan's nodes), on a savepoint; None where it cannot be planned here (a table the run
    makes) or the target table is the transaction's own."""
    return _estimate_raw(connection.connection.dbapi_connection, statement, None)


def guard_data_statements(connection: Any, limit: int) -> None:
    """Data statements a revision issues as it runs (a loop over ``op.get_bind()``):
    each UPDATE, DELETE or INSERT ... SELECT is planned first, and one the planner
    expects to touch more than ``limit`` rows stops the revision before it runs (the
    revision's transaction rolls back). ``backfill``'s batches are exempt."""
    from sqlalchemy import event

    from safe_migrations.engines.pgsafe import CURRENT

    def allowed() -> bool:
        """The running revision's marker allows it, or the lint baseline accepts it."""
        safety = CURRENT.get()
        if safety is None or safety.running is None:
            return False
        return accepting(safety.project)(safety.running(), "large-data-change")

    small: set[str] = set()

    def before(conn: Any, cursor: Any, statement: str, parameters: Any, *rest: Any) -> None:
        if rest[-1] or not _DATA.match(statement) or "alembic_version" in statement:
            return  # executemany, not a data statement, or the version table
        if rest[0] is not None and rest[0].execution_options.get("safe_migrations_backfill"):
            return  # backfill's batches, sized by time
        if statement in small:
            return  # planned before, within the limit: a loop's statement is planned once
        safety = CURRENT.get()
        made = frozenset(safety.created) if safety is not None else frozenset()
        estimate = _estimate_raw(cursor.connection, statement, parameters, made)
        if estimate is None or estimate <= limit:
            small.add(statement)
            return
        if not allowed():
            what = too_many_rows(statement.replace("%%", "%"), estimate, limit)
            raise RefusedError(
                f"Stopped before it ran: {what}; instead, {RECIPE}, "
                "or mark the revision "
                "`# squawk: allow large-data-change -- why` to take the risk knowingly"
            )

    event.listen(connection, "before_cursor_execute", before)


def _estimate_raw(
    dbapi: Any, statement: str, parameters: Any, made: frozenset[int] = frozenset()
) -> int | None:
    """estimated_rows on the driver's connection (inside a cursor event, where the
    SQLAlchemy connection is busy): a savepoint when a transaction is open. The
    parameters are the driver's (None: a statement as written, with its ``%`` kept);
    ``made``: the oids of the tables earlier revisions of this run created."""
    import psycopg2

    cursor = dbapi.cursor()
    savepoint = not dbapi.autocommit
    try:
        if savepoint:
            cursor.execute("SAVEPOINT sm_estimate")
        try:
            cursor.execute("EXPLAIN (FORMAT JSON, VERBOSE) " + statement, parameters)
            plan = cursor.fetchone()[0]

            def scalar(sql: str, params: dict[str, Any]) -> Any:
                cursor.execute(sql, params)
                row = cursor.fetchone()
                return row[0] if row else None

            new = _new_target(scalar, plan, made)
        except psycopg2.Error:
            return None
        finally:
            if savepoint:
                cursor.execute("ROLLBACK TO SAVEPOINT sm_estimate")
                cursor.execute("RELEASE SAVEPOINT sm_estimate")
    finally:
        cursor.close()
    return None if new else _plan_rows(plan)


def _plan_rows(plan: Any) -> int:
    import json

    found = json.loads(plan) if isinstance(plan, str) else plan

    def rows(node: dict[str, Any]) -> int:
        return max([int(node.get("Plan Rows", 0))] + [rows(c) for c in node.get("Plans", [])])

    return rows(found[0]["Plan"])


def _new_target(scalar: Any, plan: Any, made: frozenset[int] = frozenset()) -> bool:
    """Whether the statement's target table was made by the transaction running now,
    or by an earlier revision of this run (``made``): nobody else uses it yet."""
    import json

    top = (json.loads(plan) if isinstance(plan, str) else plan)[0]["Plan"]
    relation = top.get("Relation Name")
    if not relation:
        return False
    return bool(
        scalar(
            "SELECT t.xmin::text = (pg_current_xact_id_if_assigned()::xid)::text "
            "OR c.oid::bigint = ANY(%(made)s) "
            "FROM pg_class c JOIN pg_type t ON t.oid = c.reltype "
            "WHERE c.oid = to_regclass(%(t)s)",
            {"t": qualified(top.get("Schema"), relation), "made": sorted(made)},
        )
    )
