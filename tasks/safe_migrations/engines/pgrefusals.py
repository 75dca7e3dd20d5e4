"""What cannot be made safe in place on PostgreSQL, refused before the first statement.

Before a run with ``migration.safe_operations`` on, the pending revisions are rendered
offline once with Alembic's operations listed (refusals.py, shared with MySQL), and the
listed operations are judged against the live catalog: a column added NOT NULL without
a default, or with a volatile default, to a table that has rows (the table is
rewritten, or the statement fails); a type change that rewrites the table; a column
renamed or dropped under the running application. Each refusal names the revision, the
operation and the expand/contract recipe; a revision that carries the allow marker for
the rule (``# squawk: allow <rule> -- why``, as lint reads it) takes the risk knowingly.
Tables that are not there before the run (the pending revisions make them, by
``create_table`` or by SQL) are nobody else's yet and never refused.
In ``check`` mode what would be rewritten is refused too, listed.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from safe_migrations.core.errors import RefusedError
from safe_migrations.engines.pgdata import large_data_change
from safe_migrations.engines.pgsafe import qualified
from safe_migrations.engines.refusals import breaking, is_op, refuse, table_key

if TYPE_CHECKING:
    from safe_migrations.core.config import Environment
    from safe_migrations.project.alembic_api import Project, Revision

_CALL = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*\(")  # function names in a default, read only
_LENGTHS = re.compile(r"\(([\d,\s]+)\)")


def preflight(env: Environment, project: Project, path: list[Revision], connection: Any) -> None:
    """Refuse the run (exit 2) before its first statement when a pending revision holds
    what cannot be made safe; in ``check`` mode, also what would be rewritten."""
    mode = env.settings.migration.safe_operations
    if mode == "off" or not path:
        return
    limit = env.settings.migration.max_rows_in_one_statement
    collected, created = refuse(
        env,
        project,
        path,
        "postgresql",
        lambda op, made: judge(connection, op, made, limit),
        "PostgreSQL cannot do this without blocking the application or failing midway",
    )
    if mode == "check":
        rewritable = [
            f"{revision}: {_describe(op)}"
            for revision, op in collected
            if _rewritable(op) and table_key(op) not in created
        ]
        if rewritable:
            raise RefusedError(
                "migration.safe_operations is check, and these operations would block the "
                "application in the form written (rewrite would run them without blocking): "
                + "; ".join(rewritable)
                + ". Set safe_operations: rewrite, or write them in their non-blocking form."
            )


def judge(
    connection: Any, op: Any, created: set[str], limit: int | None = None
) -> tuple[str, str] | None:
    """(rule, what is wrong) for an operation that cannot be made safe, else None."""
    if is_op(op, "ExecuteSQLOp"):
        return large_data_change(connection, op.sqltext, limit)
    if table_key(op) in created or not getattr(op, "table_name", None):
        return None  # a table of the run's own, or an operation on none (drop_index)
    table = qualified(op.schema, op.table_name)
    if connection.exec_driver_sql("SELECT to_regclass(%(t)s)", {"t": table}).scalar() is None:
        return None  # not there before the run: made by its revisions, used by no one yet
    found = breaking(op)
    if found is not None:
        return found
    if is_op(op, "AddColumnOp"):
        return _judge_add_column(connection, op, table)
    if (
        is_op(op, "AlterColumnOp")
        and op.modify_type is not None
        and _rewrites(connection, table, op)
    ):
        return (
            "changing-column-type",
            f"op.alter_column changes the type of {op.table_name}.{op.column_name}: "
            "PostgreSQL rewrites the table under ACCESS EXCLUSIVE, blocking reads and writes",
        )
    return None


def _judge_add_column(connection: Any, op: Any, table: str) -> tuple[str, str] | None:
    """A column added to a table that has rows: NOT NULL without a default, a volatile
    default, a generated or identity column each rewrite the table (or fail)."""
    column = op.column
    if not _has_rows(connection, table):
        return None
    generated = column.computed is not None or column.identity is not None
    if generated:
        kind = "an identity" if column.identity is not None else "a stored generated"
        return (
            "adding-generated-column",
            f"op.add_column adds {column.name} as {kind} column to {op.table_name}, which "
            "has rows: PostgreSQL computes it for every row, rewriting the table under "
            "ACCESS EXCLUSIVE",
        )
    if column.server_default is None and column.nullable is False:
        return (
            "adding-not-nullable-field",
            f"op.add_column adds {column.name} NOT NULL without a default to "
            f"{op.table_name}, which has rows (the statement fails, or with a volatile "
            "default rewrites the table)",
        )
    default = _default_text(column.server_default, connection)
    if default and _volatile(connection, default):
        return (
            "adding-field-with-default",
            f"op.add_column adds {column.name} with the volatile default {default} to "
            f"{op.table_name}, which has rows: PostgreSQL rewrites the whole table "
            "under ACCESS EXCLUSIVE, blocking reads and writes",
        )
    return None


def _rewrites(connection: Any, table: str, op: Any) -> bool:
    """Whether the type change rewrites: not when the new type is the same one with
    limits no tighter, or a binary-coercible one without a limit (varchar to text)."""
    from sqlalchemy.dialects import postgresql
    from sqlalchemy.sql.type_api import to_instance

    rows = connection.exec_driver_sql(
        "SELECT atttypid, format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = to_regclass(%(t)s) AND attname = %(c)s AND NOT attisdropped",
        {"t": table, "c": op.column_name},
    ).fetchall()
    if not rows:
        return False  # no such column yet: the revision fails on its own
    old_oid, old_text = rows[0]
    new_text = str(to_instance(op.modify_type).compile(dialect=postgresql.dialect()))
    new_oid = connection.exec_driver_sql(
        "SELECT to_regtype(%(t)s)::oid", {"t": re.sub(r"\(.*\)", "", new_text)}
    ).scalar()
    new_limits, old_limits = _LENGTHS.search(new_text), _LENGTHS.search(old_text)
    if new_oid == old_oid:
        if new_limits is None:
            return False
        if old_limits is None:
            return True
        new = [int(x) for x in new_limits.group(1).split(",")]
        old = [int(x) for x in old_limits.group(1).split(",")]
        return len(new) != len(old) or new[0] < old[0] or new[1:] != old[1:]
    method = connection.exec_driver_sql(
        "SELECT castmethod FROM pg_cast WHERE castsource = %(o)s AND casttarget = %(n)s",
        {"o": old_oid, "n": new_oid},
    ).scalar()
    return not (method == "b" and new_limits is None)


def _has_rows(connection: Any, table: str) -> bool:
    return bool(connection.exec_driver_sql(f"SELECT EXISTS (SELECT 1 FROM {table})").scalar())


def _volatile(connection: Any, default: str) -> bool:
    names = sorted({name.lower() for name in _CALL.findall(default)})
    if not names:
        return False
    return bool(
        connection.exec_driver_sql(
            "SELECT coalesce(bool_or(provolatile = 'v'), false) FROM pg_proc "
            "WHERE proname = ANY(%(names)s)",
            {"names": names},
        ).scalar()
    )


def _default_text(server_default: Any, connection: Any) -> str | None:
    if server_default is None:
        return None
    arg = getattr(server_default, "arg", server_default)
    if isinstance(arg, str):
        return arg
    return str(arg.compile(dialect=connection.dialect, compile_kwargs={"literal_binds": True}))


def _rewritable(op: Any) -> bool:
    return (
        is_op(op, "CreateIndexOp")
        or is_op(op, "DropIndexOp")
        or is_op(op, "CreateForeignKeyOp")
        or is_op(op, "CreateCheckConstraintOp")
        or is_op(op, "CreateUniqueConstraintOp")
        or is_op(op, "CreatePrimaryKeyOp")
        or (is_op(op, "AlterColumnOp") and op.modify_nullable is False)
    )


def _describe(op: Any) -> str:
    name = getattr(op, "index_name", None) or getattr(op, "constraint_name", None)
    kind = re.sub(r"(?<!^)(?=[A-Z])", "_", type(op).__name__.removesuffix("Op")).lower()
    return f"op.{kind} on {table_key(op).lstrip('.')}" + (f" ({name})" if name else "")
