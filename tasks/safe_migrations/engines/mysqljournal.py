"""A journal of what MySQL committed, statement by statement, and ``migrate --resume``.

MySQL commits each DDL statement on its own, and with it every statement the revision
ran before it. So as each one commits, the journal writes the revision's changing
statements so far into its ``safe_migrations_partial`` row, on a connection of its own
with autocommit: a runner killed between two statements leaves an exact record. The
row is deleted once the revision is applied.

``migrate --resume`` runs a partly applied revision again and skips the statements the
journal holds. Each skipped statement must be the one the revision issues at that place
now (same SQL), and each skipped DDL statement must be visible in the catalog (the
table, column, index or constraint is there, or is gone for a DROP). Otherwise the run
stops before executing anything (exit 3) and ``invoke resolve`` is the way. The first
DDL statement after the journal is skipped too when the catalog shows it applied: a
statement that committed in the instant before the runner could write the journal.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from safe_migrations.core.errors import JournalError
from safe_migrations.pipeline.partial import (
    RUNNING,
    TABLE,
    changes,
    commits,
    record_table,
    shorten,
)

if TYPE_CHECKING:
    from safe_migrations.core.config import Environment
    from safe_migrations.project.alembic_api import Revision


@dataclass
class Journal:
    """One run's journal, and the record it resumes (None: a run without --resume)."""

    env: Environment
    resumed: dict[str, Any] | None = None
    revision: str | None = None
    statements: list[str] = field(default_factory=list)
    row_id: int | None = None
    skip: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    written: int = 0  # how many of the statements the record holds
    version_at: str | None = None
    _engine: Any = None
    _open: Any = None  # the journal's connection
    _holder: int | None = None  # the run's lock connection, read at the first write

    def enter(self, revision: Revision) -> None:
        """A statement of ``revision``: a new revision starts its own record."""
        if revision.revision == self.revision:
            return
        self.revision, self.statements, self.row_id, self.skip = revision.revision, [], None, []
        self.skipped, self.written, self.version_at = [], 0, revision.down_revision
        row = self.resumed
        if row is not None and row["revision"] == revision.revision:
            if row.get("damaged"):
                raise JournalError(
                    f"the record of revision {revision.revision}'s committed statements is "
                    "damaged (not the journal's list of statements), so --resume cannot "
                    "tell which ran; compare the schema with the revision by hand, then use "
                    f"`invoke resolve --env {self.env.name} --revision {revision.revision}`."
                )
            if (row["version_at"] or None) != revision.down_revision:
                raise JournalError(
                    f"the record of revision {revision.revision} was made at version "
                    f"{row['version_at'] or 'base'}, but the revision follows "
                    f"{revision.down_revision or 'base'}; it cannot be resumed. Use "
                    f"`invoke resolve --env {self.env.name} --revision {revision.revision}`."
                )
            self.row_id, self.skip = row["id"], list(row["statements"])
            self.statements, self.written = list(self.skip), len(self.skip)

    def should_skip(self, sql: str, construct: Any) -> bool:
        """Whether this changing statement already committed (then it is not run)."""
        position = len(self.skipped)
        if position < len(self.skip):
            if shorten(sql) != self.skip[position]:
                raise JournalError(
                    f"statement {position + 1} of revision {self.revision} is now "
                    f"`{shorten(sql, 120)}`, but the journal holds "
                    f"`{shorten(self.skip[position], 120)}`: the revision changed since it "
                    f"was partly applied. Use `invoke resolve --env {self.env.name} "
                    f"--revision {self.revision}`."
                )
            if commits(sql) and self._in_catalog(construct) is not True:
                raise JournalError(
                    f"the journal says statement {position + 1} of revision {self.revision} "
                    f"(`{shorten(sql, 120)}`) committed, but the catalog does not show it; "
                    f"nothing was run. Use `invoke resolve --env {self.env.name} --revision "
                    f"{self.revision}`."
                )
            self.skipped.append(sql)
            return True
        if (
            self.skip
            and position == len(self.skip)
            and commits(sql)
            and self._in_catalog(construct) is True
        ):
            self.skipped.append(sql)  # committed just before the runner could write it
            self.statements.append(shorten(sql))
            self._write()
            return True
        return False

    def before(self, sql: str) -> None:
        """MySQL commits what ran before a DDL statement as that statement starts."""
        if commits(sql) and len(self.statements) > self.written:
            self._write()

    def after(self, sql: str) -> None:
        if not changes(sql):
            return
        self.statements.append(shorten(sql))
        if commits(sql):
            self._write()

    def applied(self, connection: Any) -> None:
        """The revision is applied: its record goes, on the migration's ``connection``
        (the version table's update and this delete commit together)."""
        if self.row_id is not None:
            table = record_table()
            connection.execute(table.delete().where(table.c.id == self.row_id))
        self.row_id, self.revision, self.statements, self.skip = None, None, [], []
        self.skipped, self.written = [], 0

    def close(self) -> None:
        if self._open is not None:
            with contextlib.suppress(Exception):  # a lost connection has nothing to close
                self._open.close()
        if self._engine is not None:
            self._engine.dispose()

    def _write(self) -> None:
        table = record_table()
        values = {
            "statements": json.dumps([self._redacted(s) for s in self.statements]),
            "recorded_at": datetime.now(UTC).replace(tzinfo=None),
        }
        self.written = len(self.statements)
        connection = self._connection()
        if self.row_id is None:
            if self._holder is None:  # once a run: the table, and whose run this is
                table.create(connection, checkfirst=True)
                self._holder = _lock_holder(connection)
            self.row_id = connection.execute(
                table.insert().values(
                    kind="upgrade",
                    revision=self.revision,
                    version_at=self.version_at,
                    error=f"{RUNNING} (lock connection {self._holder})",
                    **values,
                )
            ).inserted_primary_key[0]
        else:
            connection.execute(table.update().where(table.c.id == self.row_id).values(**values))

    def _redacted(self, statement: str) -> str:
        from safe_migrations.core.masking import redact

        return redact(statement, [self.env.password])

    def _connection(self) -> Any:
        """The journal's own autocommit connection, opened once for the run: each write
        commits before the migration's next statement runs."""
        if self._open is None:
            from safe_migrations.core.database import make_engine

            self._engine = make_engine(self.env, role="record", autocommit=True)
            self._open = self._engine.connect()
        return self._open

    def _in_catalog(self, construct: Any) -> bool | None:
        """Whether the catalog shows what the DDL construct does (None: cannot tell)."""
        from sqlalchemy import inspect

        return in_catalog(construct, inspect(self._connection()))


_RUNNING = re.compile(re.escape(RUNNING) + r" \(lock connection (\d+)\)")


def _lock_holder(connection: Any) -> int | None:
    """The connection holding this database's migration lock: the run's own."""
    from sqlalchemy import text

    from safe_migrations.engines.mysqlserver import lock_name

    database = connection.execute(text("SELECT DATABASE()")).scalar_one()
    holder = connection.execute(text("SELECT IS_USED_LOCK(:name)"), {"name": lock_name(database)})
    return holder.scalar()


def in_progress(connection: Any, row: dict[str, Any]) -> bool:
    """A journal record of a run that is still going (its lock connection holds the
    migration lock): not a partly applied revision yet, the lock step waits for it."""
    found = _RUNNING.fullmatch(row.get("error") or "")
    return found is not None and str(_lock_holder(connection)) == found.group(1)


def in_catalog(construct: Any, inspector: Any) -> bool | None:
    """True when the schema already is as ``construct`` leaves it, False when not, None
    for a statement the catalog cannot speak for (text, a type change it cannot compare)."""
    kind = type(construct).__name__
    element: Any = getattr(construct, "element", None)
    if kind in ("CreateTable", "DropTable"):
        there = inspector.has_table(element.name)
        return there if kind == "CreateTable" else not there
    if kind in ("CreateIndex", "DropIndex"):
        names = {i["name"] for i in inspector.get_indexes(element.table.name)}
        return (element.name in names) is (kind == "CreateIndex")
    if kind in ("AddColumn", "DropColumn"):
        columns = {c["name"] for c in inspector.get_columns(construct.table_name)}
        return (construct.column.name in columns) is (kind == "AddColumn")
    if kind in ("AddConstraint", "DropConstraint") and getattr(element, "name", None):
        table = element.table.name
        names = {i["name"] for i in inspector.get_indexes(table)}
        names |= {f["name"] for f in inspector.get_foreign_keys(table)}
        names |= {u["name"] for u in inspector.get_unique_constraints(table)}
        names |= {c["name"] for c in inspector.get_check_constraints(table)}
        return (element.name in names) is (kind == "AddConstraint")
    return None


__all__ = ["TABLE", "Journal", "JournalError", "in_catalog", "in_progress"]
