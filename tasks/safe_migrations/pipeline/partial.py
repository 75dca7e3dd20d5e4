"""What MySQL left half done, kept until the user says it is resolved.

MySQL commits every DDL statement on its own, so a revision that fails after its
first DDL statement is partly applied and nothing can roll it back; a restore
stopped midway leaves some tables replayed and others not. Such a run writes a
row into ``safe_migrations_partial`` in the database itself (so every runner and
CI machine sees it), and health blocks (exit 3) while a row is unresolved.
``invoke resolve`` closes a revision's row, ``invoke restore`` a restore's.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from safe_migrations.core.errors import ConfigError

if TYPE_CHECKING:
    from sqlalchemy import Table
    from sqlalchemy.engine import Connection

    from safe_migrations.core.config import Environment

TABLE = "safe_migrations_partial"
# The error of a journal's record while its run goes on (engines/mysqljournal.py): what
# is true of it if the runner never comes back.
RUNNING = "the runner stopped before the revision completed"
MAX_STATEMENT = 400  # characters of each statement kept in the record and messages

# Statements that change nothing, or that Alembic runs for its own bookkeeping.
_READS = re.compile(
    r"\s*(SELECT|SHOW|DESCRIBE|DESC|EXPLAIN|SET|USE|BEGIN|COMMIT|ROLLBACK|SAVEPOINT|RELEASE)\b",
    re.IGNORECASE,
)
# Statements after which MySQL has committed, whatever the transaction.
_IMPLICIT_COMMIT = re.compile(r"\s*(CREATE|ALTER|DROP|RENAME|TRUNCATE)\b", re.IGNORECASE)


def changes(statement: str) -> bool:
    return not _READS.match(statement) and "alembic_version" not in statement


def commits(statement: str) -> bool:
    return _IMPLICIT_COMMIT.match(statement) is not None


def shorten(statement: str, limit: int = MAX_STATEMENT) -> str:
    flat = " ".join(statement.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


@dataclass
class StatementLog:
    """The changing statements each revision completed, from the connection's events."""

    done: list[str] = field(default_factory=list)
    running: str | None = None  # the statement sent and not yet answered: the failing one

    def attach(self, connection: Connection) -> None:
        from sqlalchemy import event

        event.listen(connection, "before_cursor_execute", self._sent)
        event.listen(connection, "after_cursor_execute", self._completed)

    def _sent(self, _conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        self.running = statement if changes(statement) else None

    def _completed(self, _conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        self.running = None
        if changes(statement):
            self.done.append(statement)

    def next_revision(self) -> None:
        self.done, self.running = [], None

    def committed(self) -> list[str]:
        """What MySQL committed of the running revision: everything up to its last DDL
        statement, and everything before a DDL statement that failed (MySQL commits
        before it starts one); DML after the last DDL rolled back with the failure."""
        if self.running is not None and commits(self.running):
            last = len(self.done) - 1
        else:
            last = max((i for i, s in enumerate(self.done) if commits(s)), default=-1)
        return [shorten(s) for s in self.done[: last + 1]]

    def failing(self) -> str | None:
        return shorten(self.running) if self.running else None


# A DDL statement refused because its object exists already: the table, column, index,
# foreign key, routine, trigger or event. A revision meeting its own objects was partly
# applied by an earlier attempt (a killed runner's statement that ran on), not new.
ALREADY_EXISTS = frozenset({1050, 1060, 1061, 1304, 1359, 1537, 1826})


def met_own_objects(log: StatementLog, exc: BaseException) -> bool:
    """The revision failed on a DDL statement whose object exists already."""
    orig = getattr(exc, "orig", None)
    code = next(iter(getattr(orig, "args", ())), None)
    return code in ALREADY_EXISTS and log.running is not None and commits(log.running)


@functools.cache
def record_table() -> Table:
    """The record's table, built once (a statement must name one Table object)."""
    from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, Text

    return Table(
        TABLE,
        MetaData(),
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("kind", String(16), nullable=False),  # upgrade, downgrade or restore
        Column("revision", String(255), nullable=False),  # the revision, or the backup's name
        Column("version_at", String(255)),  # alembic_version when it was recorded
        Column("statements", Text, nullable=False),  # JSON list: what had been committed
        Column("error", Text),
        Column("recorded_at", DateTime, nullable=False),
        Column("resolved_at", DateTime),
        Column("resolution", String(16)),
        Column("resolved_by", String(255)),
    )


def record(
    env: Environment,
    kind: str,
    revision: str,
    statements: list[str],
    error: str,
    version_at: str | None,
) -> None:
    """Write the row on a connection of its own (the failed one may be gone)."""
    from safe_migrations.core.database import connect
    from safe_migrations.core.masking import redact

    table = record_table()
    with connect(env, role="record") as connection:
        table.create(connection, checkfirst=True)
        values = {
            "statements": json.dumps([redact(s, [env.password]) for s in statements]),
            "error": redact(error, [env.password])[:2000],
            "recorded_at": datetime.now(UTC).replace(tzinfo=None),
        }
        journaled = connection.execute(  # the journal's row for it (engines/mysqljournal.py)
            table.select().where(
                table.c.kind == kind, table.c.revision == revision, table.c.resolved_at.is_(None)
            )
        ).first()
        if journaled is None:
            connection.execute(
                table.insert().values(kind=kind, revision=revision, version_at=version_at, **values)
            )
        else:  # the journal wrote each commit as it happened: its list is the longer one
            if len(stored_statements(journaled.statements) or []) >= len(statements):
                del values["statements"]
            connection.execute(table.update().where(table.c.id == journaled.id).values(**values))
        connection.commit()


def note_error(env: Environment, kind: str, revision: str, error: str) -> None:
    """Put the failure's error on an open record (best effort: the record is there)."""
    import contextlib

    from safe_migrations.core.database import connect
    from safe_migrations.core.masking import redact

    table = record_table()
    with contextlib.suppress(Exception), connect(env, role="record") as connection:
        connection.execute(
            table.update()
            .where(
                table.c.kind == kind, table.c.revision == revision, table.c.resolved_at.is_(None)
            )
            .values(error=redact(error, [env.password])[:2000])
        )
        connection.commit()


def stored_statements(raw: str | None) -> list[str] | None:
    """A record's statements as the journal wrote them (a JSON list of strings); None
    when the column holds anything else (a record damaged by hand or by a crash)."""
    try:
        found = json.loads(raw or "[]")
    except ValueError:
        return None
    if not isinstance(found, list) or not all(isinstance(s, str) for s in found):
        return None
    return found


def summary(statements: list[str], most: int = 5) -> str:
    """The statements a message names: the first few, then an ellipsis."""
    return "; ".join(statements[:most]) + ("; ..." if len(statements) > most else "")


def unresolved(connection: Connection, kind: str | None = None) -> list[dict[str, Any]]:
    from sqlalchemy import inspect

    if not inspect(connection).has_table(TABLE):
        return []
    table = record_table()
    query = table.select().where(table.c.resolved_at.is_(None)).order_by(table.c.id)
    if kind is not None:
        query = query.where(table.c.kind == kind)
    rows = [dict(r) for r in connection.execute(query).mappings()]
    connection.rollback()
    for row in rows:
        found = stored_statements(row["statements"])
        row["damaged"] = found is None  # resolve still works; resume cannot know what ran
        row["statements"] = found or []
        row["recorded_at"] = row["recorded_at"].isoformat(timespec="seconds")
        row.pop("resolved_at", None)
    return rows


def describe(row: dict[str, Any], environment: str) -> str:
    """The one sentence health blocks with: what ran, where the version table is, how to
    go on."""
    statements = row["statements"]
    ran = summary(statements)
    if row["kind"] == "restore":
        return (
            f"a restore of {row['revision']} stopped midway at {row['recorded_at']} UTC, so "
            f"some tables are from the backup and others not ({row['error']}); the backup "
            f"itself is intact: run `invoke restore --env {environment}` again"
        )
    what = (
        "its runner stopped (killed?)" if (row["error"] or "").startswith(RUNNING) else "it failed"
    )
    if row.get("damaged"):
        return (
            f"revision {row['revision']} ({row['kind']}) is partly applied ({what} at "
            f"{row['recorded_at']} UTC), and its record of the statements MySQL committed "
            "is damaged (not the journal's list of statements), so nothing can say which "
            "ran: compare the schema with the revision by hand, finish or undo it, then run "
            f"`invoke resolve --env {environment} --revision {row['revision']} --applied` "
            "(finished) or `--reverted` (undone)"
        )
    return (
        f"revision {row['revision']} ({row['kind']}) is partly applied: {what} at "
        f"{row['recorded_at']} UTC after MySQL had committed {len(statements)} of its "
        f"statement(s), which cannot be rolled back: {ran}; the version table stayed at "
        f"{row['version_at'] or 'base'}. Finish or undo those changes by hand, then run "
        f"`invoke resolve --env {environment} --revision {row['revision']} --applied` "
        "(finished) or `--reverted` (undone); or run "
        f"`invoke migrate --env {environment} --resume` to go on after the statements "
        "that committed"
    )


def close(connection: Connection, row_id: int, resolution: str, user: str) -> None:
    table = record_table()
    connection.execute(
        table.update()
        .where(table.c.id == row_id)
        .values(
            resolved_at=datetime.now(UTC).replace(tzinfo=None),
            resolution=resolution,
            resolved_by=user[:255],
        )
    )


def find_open(connection: Connection, revision: str, environment: str) -> dict[str, Any]:
    """The revision's unresolved row, or one sentence naming what is on record."""
    rows = [r for r in unresolved(connection) if r["kind"] != "restore"]
    for row in rows:
        if row["revision"] == revision:
            return row
    listed = ", ".join(r["revision"] for r in rows)
    raise ConfigError(
        f"No partly applied revision {revision} is on record for {environment}"
        + (f"; on record: {listed}." if listed else "; nothing is waiting to be resolved.")
    )
