"""Online DDL on MySQL and MariaDB: ``migration.online_ddl``.

Without an ALGORITHM clause the server picks how to run an ``ALTER TABLE``, and for a
type change or a column added in the middle it copies the table under a lock that
blocks writes. With ``enforce`` each ``ALTER TABLE``, ``CREATE INDEX`` and
``DROP INDEX`` that Alembic's MySQL impl issues carries ``ALGORITHM=INSTANT`` (tried
first, where the change can be instant) or else ``ALGORITHM=INPLACE, LOCK=NONE``. The
clause is added to the statement Alembic compiled from its own construct, in the impl's
``_exec``, on the run's MigrationContext only. A server that refuses both (the change
needs COPY or a lock) refuses before doing anything: the run stops there, naming the
operation, what the server would need and the way out. ``warn`` runs it as written
and says so. ``off`` is Alembic's behaviour. ``op.execute`` text is never touched.
A table this run created (an earlier ``CREATE TABLE`` of the same run) is nobody
else's yet: its statements run as written, as PostgreSQL's rewrites leave such tables
alone, so a revision that creates a table and then adds its foreign keys never stops
halfway on a database the run is building.
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from safe_migrations.engines.mysqljournal import Journal
from safe_migrations.pipeline.partial import changes

if TYPE_CHECKING:
    from safe_migrations.core.config import Environment
    from safe_migrations.project.alembic_api import Revision

MODES = ("enforce", "warn", "off")
ALLOW_RULE = "online-ddl"  # `# squawk: allow online-ddl -- why` in the revision
NOT_SUPPORTED = {1845, 1846}  # ER_ALTER_OPERATION_NOT_SUPPORTED(_REASON)
INSTANT = "ALGORITHM=INSTANT"
INPLACE = "ALGORITHM=INPLACE, LOCK=NONE"


class OnlineDDLRefused(Exception):
    """The server cannot run this statement online; nothing of it ran."""


@dataclass
class OnlineDDL:
    """One run's statements on MySQL: the online-DDL mode, what each DDL statement ran
    with, and the journal of what committed (engines/mysqljournal.py)."""

    env: Environment
    mode: str
    journal: Journal
    rewritten: list[dict[str, Any]] = field(default_factory=list)
    swept: bool = False
    created: set[str] = field(default_factory=set)  # tables this run's CREATE TABLEs made

    def take(self) -> list[dict[str, Any]]:
        """What ran since the last call (the revision that just applied, or failed)."""
        found, self.rewritten = self.rewritten, []
        return found

    def applied(self, connection: Any) -> None:
        """The revision is applied: its journal record is deleted in the transaction
        that moves the version table, so the two commit together."""
        self.journal.applied(connection)

    def attach(self, context: Any, running: Callable[[], Revision], direction: str) -> None:
        """Wrap this MigrationContext's impl: each statement of an upgrade journaled (or
        skipped when ``--resume`` proves it committed), its DDL with the algorithm clause."""
        self.sweep()
        impl = context.impl
        original = impl._exec
        journal = self.journal if direction == "upgrade" else None

        def _exec(construct: Any, *args: Any, **kwargs: Any) -> Any:
            if getattr(impl, "as_sql", False):
                return original(construct, *args, **kwargs)
            sql = (
                construct
                if isinstance(construct, str)
                else str(construct.compile(dialect=impl.dialect)).strip()
            )
            revision = running()
            if journal is None:
                return self._statement(original, construct, sql, revision, args, kwargs)
            journal.enter(revision)
            if changes(sql) and journal.should_skip(sql, construct):
                operation = statement_kind(sql) or " ".join(sql.split()[:2]).upper()
                self._note(operation, sql, "skipped: the journal shows it committed", "skipped")
                return None
            journal.before(sql)
            result = self._statement(original, construct, sql, revision, args, kwargs)
            journal.after(sql)
            return result

        impl._exec = _exec

    def _statement(
        self,
        original: Callable[..., Any],
        construct: Any,
        sql: str,
        revision: Revision,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        """One statement: DDL in its online form when the mode asks; text as written."""
        kind = statement_kind(sql)
        if sql[:12].upper() == "CREATE TABLE":
            self.created.add(_target(sql).lower())
        if self.mode == "off" or kind is None or isinstance(construct, str):
            return original(construct, *args, **kwargs)  # op.execute text: as written
        if _target(sql).lower() in self.created:
            self._note(kind, sql, "as written (a table this run created)")
            return original(construct, *args, **kwargs)
        if ALLOW_RULE in _markers(revision):
            self._note(kind, sql, "as written (allowed in the revision)")
            return original(construct, *args, **kwargs)
        return self._online(original, kind, sql, revision, args, kwargs)

    def _online(
        self,
        original: Callable[..., Any],
        kind: str,
        sql: str,
        revision: Revision,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        from sqlalchemy.exc import DBAPIError

        refusals: list[str] = []
        for clause in [INPLACE] if kind == "CREATE INDEX" else [INSTANT, INPLACE]:
            try:
                result = original(with_algorithm(sql, kind, clause), *args, **kwargs)
            except DBAPIError as exc:
                found = getattr(exc.orig, "args", ())
                if not found or found[0] not in NOT_SUPPORTED:
                    raise
                refusals.append(str(found[1]) if len(found) > 1 else str(exc))
                continue
            self._note(kind, sql, clause)
            return result
        needed = _needed(refusals[-1])
        small = self.env.settings.migration.online_ddl_small_table_mb
        size = _table_mb(original, _target(sql)) if small else None
        if size is not None and size < small:
            self._note(
                kind, sql, f"as written ({needed} on a {size:.1f} MB table, under {small:g} MB)"
            )
            return original(sql, *args, **kwargs)
        if kind == "ALTER TABLE" and self.env.settings.migration.online_tool == "pt-osc":
            return self._through_pt_osc(original, sql, needed)
        if self.mode == "warn":
            print(
                f"warning: {revision.revision}: {_short(sql)} cannot run online (the server "
                f"needs {needed}); running it as written, which blocks writes to the table.",
                file=sys.stderr,
            )
            self._note(kind, sql, f"as written ({needed}: writes blocked)")
            return original(sql, *args, **kwargs)
        raise OnlineDDLRefused(
            f"{_short(sql)} cannot run online on this server (it needs {needed}: "
            f"{refusals[-1]}); migration.online_ddl is enforce, so it was not run. Run it "
            "through pt-online-schema-change, or add `# squawk: allow online-ddl -- why` to "
            f"revision {revision.revision} to take the lock knowingly"
        )

    def _through_pt_osc(self, original: Callable[..., Any], sql: str, needed: str) -> None:
        """The change the server can only copy, run by pt-online-schema-change; this
        session commits first so that it holds no lock pt-osc's swap would wait for."""
        from safe_migrations.engines.mysqlptosc import run_pt_osc, split_alter

        table, spec = split_alter(sql)
        original("COMMIT")
        seconds = run_pt_osc(self.env, table, spec)
        self.rewritten.append(
            {
                "operation": "ALTER TABLE",
                "target": table,
                "parts": [f"pt-online-schema-change (the server needs {needed})"],
                "outcome": f"ran in {seconds:.1f} s",
            }
        )

    def sweep(self) -> None:
        """Drop what a killed pt-osc run of ours left (once per run), and say so."""
        if self.swept or self.env.settings.migration.online_tool != "pt-osc":
            return
        from safe_migrations.engines.mysqlptosc import drop_helpers

        self.swept = True
        dropped = drop_helpers(self.env)
        if dropped:
            print(
                "note: dropped what an interrupted pt-online-schema-change run left: "
                + ", ".join(dropped),
                file=sys.stderr,
            )
            self.rewritten.append(
                {
                    "operation": "cleanup",
                    "target": "pt-online-schema-change helpers",
                    "parts": dropped,
                    "outcome": "dropped before the first statement",
                }
            )

    def _note(self, kind: str, sql: str, clause: str, outcome: str = "ran") -> None:
        self.rewritten.append(
            {"operation": kind, "target": _target(sql), "parts": [clause], "outcome": outcome}
        )


def statement_kind(sql: str) -> str | None:
    """ALTER TABLE, CREATE INDEX or DROP INDEX: the statements the clause applies to."""
    head = " ".join(sql.split()[:4]).upper()
    if head.startswith("ALTER TABLE"):
        return "ALTER TABLE"
    if re.match(r"CREATE (UNIQUE |FULLTEXT |SPATIAL )?INDEX\b", head):
        return "CREATE INDEX"
    if head.startswith("DROP INDEX"):
        return "DROP INDEX"
    return None


_DROP_INDEX = re.compile(r"DROP\s+INDEX\s+(?P<index>.+?)\s+ON\s+(?P<table>.+)$", re.I | re.S)


def with_algorithm(sql: str, kind: str, clause: str) -> str:
    """The statement with the clause: a last item of an ALTER TABLE's list, or CREATE
    INDEX's trailing options. ``DROP INDEX ix ON t`` takes none on MariaDB (a 1064
    syntax error there, where MySQL accepts it), so it becomes the ALTER TABLE both
    servers read: ``ALTER TABLE t DROP INDEX ix, ALGORITHM=...``."""
    if kind == "DROP INDEX":
        found = _DROP_INDEX.match(sql.strip())
        if found:
            return f"ALTER TABLE {found['table']} DROP INDEX {found['index']}, {clause}"
    if kind in ("ALTER TABLE", "DROP INDEX"):
        return f"{sql}, {clause}"
    return f"{sql} {clause.replace(',', '')}"


def _table_mb(run: Callable[..., Any], table: str) -> float | None:
    """The table's data and indexes in MB, as information_schema estimates them."""
    from sqlalchemy import text

    schema, _dot, name = table.rpartition(".")
    found = run(
        text(
            "SELECT (data_length + index_length) / 1048576 FROM information_schema.tables "
            "WHERE table_schema = COALESCE(:schema, DATABASE()) AND table_name = :name"
        ).bindparams(schema=schema or None, name=name)
    ).scalar()
    return None if found is None else float(found)


def _needed(message: str) -> str:
    found = re.search(r"Try (ALGORITHM=\w+|LOCK=\w+)", message)
    return found.group(1) if found else "ALGORITHM=COPY"


def _short(sql: str) -> str:
    flat = " ".join(sql.split())
    return flat if len(flat) <= 120 else flat[:117] + "..."


def _target(sql: str) -> str:
    found = re.search(
        r"(?:ALTER TABLE|\bON|CREATE TABLE|DROP TABLE)\s+(`?[\w$]+`?(?:\.`?[\w$]+`?)?)", sql, re.I
    )
    return found.group(1).replace("`", "") if found else ""


def _markers(revision: Revision) -> dict[str, str | None]:
    from safe_migrations.engines.refusals import revision_file
    from safe_migrations.project.lint import allow_markers

    return allow_markers(revision_file(revision))


@contextlib.contextmanager
def online_ddl(env: Environment, resume: bool = False) -> Iterator[OnlineDDL]:
    """The run's statements: online DDL as ``migration.online_ddl`` says, journaled;
    with ``resume``, the journal of the oldest partly applied revision on record."""
    from safe_migrations.core.leftovers import sweep

    sweep(env.backup_dir)  # a killed run's pt-osc option file (it holds the password) first
    journal = Journal(env, resumed=_open_record(env) if resume else None)
    try:
        yield OnlineDDL(env, env.settings.migration.online_ddl, journal)
    finally:
        journal.close()


def _open_record(env: Environment) -> dict[str, Any] | None:
    from safe_migrations.core.database import connect
    from safe_migrations.pipeline.partial import unresolved

    with connect(env, role="record") as connection:
        rows = [row for row in unresolved(connection) if row["kind"] == "upgrade"]
    return rows[0] if rows else None
