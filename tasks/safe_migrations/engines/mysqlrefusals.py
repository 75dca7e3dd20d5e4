"""What breaks the running application on MySQL and MariaDB, refused before the first
statement, with the rules, markers and baseline PostgreSQL's refusals use: a column
renamed or dropped, a table renamed or dropped. The pending revisions are rendered
offline once for MySQL with their operations listed (pgrefusals.py's ``collect``);
tables the pending revisions create are nobody else's yet and never refused. Asked
while ``migration.online_ddl`` is on (``enforce`` or ``warn``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from safe_migrations.core.errors import RefusedError
from safe_migrations.engines.pgdata import revision_file
from safe_migrations.engines.pgrefusals import RECIPES, collect

if TYPE_CHECKING:
    from safe_migrations.core.config import Environment
    from safe_migrations.project.alembic_api import Project, Revision


def preflight(env: Environment, project: Project, path: list[Revision], connection: Any) -> None:
    """RefusedError (exit 2) naming every breaking operation of every pending revision."""
    from safe_migrations.project.baseline import load_baseline
    from safe_migrations.project.lint import allow_markers

    if env.settings.migration.online_ddl == "off" or not path:
        return
    collected = collect(env, project, path, "mysql")
    created = {_key(op) for _r, op in collected if _is(op, "CreateTableOp")}
    accepted = load_baseline(project)
    refused = []
    for revision, op in collected:
        found = judge(connection, op, created)
        if found is None:
            continue
        rule, what = found
        step = next(r for r in path if r.revision == revision)
        file = revision_file(step)
        if rule in allow_markers(file) or accepted.find(revision, file, rule, None):
            continue
        refused.append(
            f"revision {revision} ({step.path}): {what}; instead, {RECIPES[rule]}, or mark "
            f"the revision `# squawk: allow {rule} -- why` to take the risk knowingly"
        )
    if refused:
        raise RefusedError(
            "Refused before any statement ran, since it would break the application that "
            "is running: " + " | ".join(refused)
        )


def judge(connection: Any, op: Any, created: set[str]) -> tuple[str, str] | None:
    """(rule, what is wrong) for an operation that breaks the running application."""
    table = getattr(op, "table_name", None)
    if not table or _key(op) in created or not _exists(connection, op.schema, table):
        return None
    if _is(op, "RenameTableOp"):
        return (
            "renaming-table",
            f"op.rename_table renames {table} to {op.new_table_name}: the running "
            "application's queries name the old table",
        )
    if _is(op, "DropTableOp"):
        return (
            "ban-drop-table",
            f"op.drop_table drops {table}: the running application may still read or "
            "write it, and its rows are gone",
        )
    if _is(op, "AlterColumnOp") and op.modify_name is not None:
        return (
            "renaming-column",
            f"op.alter_column renames {table}.{op.column_name} to {op.modify_name}: the "
            "running application still uses the old name",
        )
    if _is(op, "DropColumnOp"):
        return (
            "ban-drop-column",
            f"op.drop_column drops {table}.{op.column_name}: the running application may "
            "still read or write it",
        )
    return None


def _exists(connection: Any, schema: str | None, table: str) -> bool:
    return bool(
        connection.exec_driver_sql(
            "SELECT COUNT(*) FROM information_schema.tables "
            "WHERE table_schema = COALESCE(%(s)s, DATABASE()) AND table_name = %(t)s",
            {"s": schema, "t": table},
        ).scalar()
    )


def _is(op: Any, name: str) -> bool:
    return any(cls.__name__ == name for cls in type(op).__mro__)


def _key(op: Any) -> str:
    return (
        f"{getattr(op, 'schema', None) or ''}.{op.table_name}" if hasattr(op, "table_name") else ""
    )
