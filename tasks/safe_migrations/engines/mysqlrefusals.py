"""What breaks the running application on MySQL and MariaDB, refused before the first
statement, with the rules, markers and baseline PostgreSQL's refusals use (refusals.py):
a column renamed or dropped, a table renamed or dropped, on a table that was there
before the run. Asked while ``migration.online_ddl`` is on (``enforce`` or ``warn``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from safe_migrations.engines.refusals import Found, breaking, refuse, table_key

if TYPE_CHECKING:
    from safe_migrations.core.config import Environment
    from safe_migrations.project.alembic_api import Project, Revision


def preflight(env: Environment, project: Project, path: list[Revision], connection: Any) -> None:
    """RefusedError (exit 2) naming every breaking operation of every pending revision."""
    if env.settings.migration.online_ddl == "off" or not path:
        return
    refuse(
        env,
        project,
        path,
        "mysql",
        lambda op, created: judge(connection, op, created),
        "it would break the application that is running",
    )


def judge(connection: Any, op: Any, created: set[str]) -> Found:
    """(rule, what is wrong) for an operation that breaks the running application."""
    table = getattr(op, "table_name", None)
    if not table or table_key(op) in created or not _exists(connection, op.schema, table):
        return None
    return breaking(op)


def _exists(connection: Any, schema: str | None, table: str) -> bool:
    return bool(
        connection.exec_driver_sql(
            "SELECT COUNT(*) FROM information_schema.tables "
            "WHERE table_schema = COALESCE(%(s)s, DATABASE()) AND table_name = %(t)s",
            {"s": schema, "t": table},
        ).scalar()
    )
