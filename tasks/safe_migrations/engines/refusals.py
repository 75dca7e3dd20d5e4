"""What every engine's refusals share: the pending revisions' operations listed by one
offline rendering each, the operations that break the running application whatever the
engine (a column or table renamed or dropped), the recipes, and the loop that refuses
them all at once unless the revision's allow marker or the lint baseline accepts them.
PostgreSQL's rules on top of these are in pgrefusals.py and pgdata.py, MySQL's
existence check in mysqlrefusals.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safe_migrations.core.errors import RefusedError

if TYPE_CHECKING:
    from safe_migrations.core.config import Environment
    from safe_migrations.project.alembic_api import Project, Revision

Found = tuple[str, str] | None  # (rule, what is wrong), or nothing to refuse

RECIPES = {
    "adding-not-nullable-field": (
        "add it nullable (or with a constant default, which PostgreSQL stores without a "
        "rewrite), backfill it in short batches, then alter it to NOT NULL (rewritten into "
        "a validated check, no long lock)"
    ),
    "adding-field-with-default": (
        "add it without the default, set the default in a second statement (it then applies "
        "to new rows only), and backfill the existing rows in short batches"
    ),
    "changing-column-type": (
        "add a column of the new type, write both from the application, backfill in short "
        "batches, switch reads, then drop the old column in a later release"
    ),
    "renaming-column": (
        "add the new column, write both and backfill, move the application to the new "
        "name, then drop the old one in a later release"
    ),
    "ban-drop-column": (
        "release the application without any use of the column first, then drop it in a "
        "later revision marked as such"
    ),
    "adding-generated-column": (
        "add a plain nullable column, fill it with safe_migrations.ops.backfill (and a "
        "trigger or the application for new rows), then add its constraints"
    ),
    "renaming-table": (
        "create the new table (or a view under the new name), move the application to it, "
        "then drop or rename the old one in a later release"
    ),
    "ban-drop-table": (
        "release the application without any use of the table first, then drop it in a "
        "later revision marked as such"
    ),
    "large-data-change": (
        "update it with safe_migrations.ops.backfill, which commits short batches sized by "
        "time, in a revision of its own"
    ),
}


def refuse(
    env: Environment,
    project: Project,
    path: list[Revision],
    dialect: str,
    judge: Callable[[Any, set[str]], Found],
    because: str,
) -> tuple[list[tuple[str, Any]], set[str]]:
    """RefusedError (exit 2) naming every operation ``judge`` refuses in every pending
    revision, unless its marker or the lint baseline accepts it; else the listed
    operations and the tables the pending revisions create (``judge`` gets those too:
    nobody else uses them yet)."""
    collected = collect(env, project, path, dialect)
    created = {table_key(op) for _r, op in collected if is_op(op, "CreateTableOp")}
    accepts = accepting(project)
    refused = []
    for revision, op in collected:
        found = judge(op, created)
        if found is None:
            continue
        rule, what = found
        step = next(r for r in path if r.revision == revision)
        if accepts(step, rule):
            continue  # allowed by its marker, or history the lint baseline accepts
        refused.append(
            f"revision {revision} ({step.path}): {what}; instead, {RECIPES[rule]}, or mark "
            f"the revision `# squawk: allow {rule} -- why` to take the risk knowingly"
        )
    if refused:
        raise RefusedError(
            f"Refused before any statement ran, since {because}: " + " | ".join(refused)
        )
    return collected, created


def collect(
    env: Environment, project: Project, path: list[Revision], dialect: str
) -> list[tuple[str, Any]]:
    """The pending revisions' operations, in order, from one offline rendering each (the
    wrappers pgsafe.py installs list them, whatever the dialect)."""
    from safe_migrations.engines.pgsafe import safe_operations
    from safe_migrations.project.alembic_api import render_sql

    with safe_operations(env, "collect") as safety:
        assert safety is not None
        for step in path:
            safety.revision = step.revision
            render_sql(project.config(), project.scripts(), [step], dialect)
        return list(safety.collected)


def breaking(op: Any) -> Found:
    """A renamed or dropped column or table: the running application still uses it."""
    if is_op(op, "RenameTableOp"):
        return (
            "renaming-table",
            f"op.rename_table renames {op.table_name} to {op.new_table_name}: the running "
            "application's queries name the old table",
        )
    if is_op(op, "DropTableOp"):
        return (
            "ban-drop-table",
            f"op.drop_table drops {op.table_name}: the running application may still read "
            "or write it, and its rows are gone",
        )
    if is_op(op, "AlterColumnOp") and op.modify_name is not None:
        return (
            "renaming-column",
            f"op.alter_column renames {op.table_name}.{op.column_name} to "
            f"{op.modify_name}: the running application still uses the old name",
        )
    if is_op(op, "DropColumnOp"):
        return (
            "ban-drop-column",
            f"op.drop_column drops {op.table_name}.{op.column_name}: the running application "
            "may still read or write it",
        )
    return None


def accepting(project: Project | None) -> Callable[[Revision, str], bool]:
    """Whether a revision takes a rule's risk knowingly: its allow marker, or the lint
    baseline's entry (read once) while its file is unchanged."""
    from safe_migrations.project.baseline import Baseline, load_baseline
    from safe_migrations.project.lint import allow_markers

    baseline = load_baseline(project) if project is not None else Baseline()

    def accepts(step: Revision, rule: str) -> bool:
        file = revision_file(step)
        return rule in allow_markers(file) or bool(baseline.find(step.revision, file, rule, None))

    return accepts


def revision_file(step: Revision) -> Path:
    from safe_migrations.core.config import PROJECT_ROOT

    return Path(step.path) if Path(step.path).is_absolute() else PROJECT_ROOT / step.path


def is_op(op: Any, name: str) -> bool:
    return any(cls.__name__ == name for cls in type(op).__mro__)


def table_key(op: Any) -> str:
    """The table an operation is on, as ``schema.table`` (a foreign key: its source)."""
    schema = getattr(op, "schema", None) or getattr(op, "source_schema", None)
    table = getattr(op, "table_name", None) or getattr(op, "source_table", None)
    return f"{schema or ''}.{table}"
