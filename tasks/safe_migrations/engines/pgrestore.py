"""PostgreSQL restores: archives replayed on our own connection, in one transaction, from
``pg_restore --file=-`` (which reads the archive and connects nowhere): no psql, so
nothing inside an archive can run as a client command. In the same transaction, every
object of the archive's schemas that the archive does not hold is dropped first, so the
database is exactly the backup again; extensions are left alone."""

from __future__ import annotations

import contextlib
import re
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safe_migrations.core.database import make_engine
from safe_migrations.core.errors import BackupError
from safe_migrations.engines.pgdump import archive_listing, find_binary
from safe_migrations.stores.backupfiles import child_environment

if TYPE_CHECKING:
    from safe_migrations.core.config import Environment


def archive_contents(env: Environment, path: Path) -> list[str]:
    """What an archive holds, for the lines restore shows before it asks."""
    listing = archive_listing(env, path)
    header = {
        key.strip(): value.strip()
        for line in listing
        if line.startswith(";") and ":" in line
        for key, value in [line[1:].split(":", 1)]
    }
    lines = [
        f"{key.lower()}: {header[key]}"
        for key in ("Dbname", "Dumped from database version", "Archive created at")
        if key in header
    ]
    kinds = Counter(entry.kind for entry in toc_entries(listing))
    lines.append("holds: " + ", ".join(f"{n} {kind.lower()}" for kind, n in sorted(kinds.items())))
    return lines


# pg_dump's entry descriptions that hold a space; any other description is one word.
MULTI_WORD = (
    "MATERIALIZED VIEW DATA",
    "SEQUENCE OWNED BY",
    "MATERIALIZED VIEW",
    "FOREIGN DATA WRAPPER",
    "FOREIGN TABLE",
    "FOREIGN SERVER",
    "TABLE DATA",
    "SEQUENCE SET",
    "DEFAULT ACL",
    "FK CONSTRAINT",
    "EVENT TRIGGER",
    "CHECK CONSTRAINT",
    "TEXT SEARCH CONFIGURATION",
    "TEXT SEARCH DICTIONARY",
    "TEXT SEARCH PARSER",
    "TEXT SEARCH TEMPLATE",
    "OPERATOR CLASS",
    "OPERATOR FAMILY",
    "LARGE OBJECT",
    "BLOB DATA",
    "BLOBS",
    "USER MAPPING",
    "PUBLICATION TABLE",
    "PUBLICATION TABLES IN SCHEMA",
    "ACCESS METHOD",
    "POLICY",
    "ROW SECURITY",
    "INDEX ATTACH",
    "STATISTICS DATA",
)
_TOC_LINE = re.compile(r"^\d+; \d+ \d+ (?P<rest>.*)$")
DROP_ORDER = {
    "VIEW": 0,
    "MATERIALIZED VIEW": 0,
    "TABLE": 1,
    "FOREIGN TABLE": 1,
    "SEQUENCE": 2,
    "FUNCTION": 3,
    "PROCEDURE": 3,
    "AGGREGATE": 3,
    "DOMAIN": 4,
    "TYPE": 4,
}


@dataclass(frozen=True)
class TocEntry:
    kind: str
    schema: str
    name: str
    line: str


def toc_entries(listing: list[str]) -> list[TocEntry]:
    """Every entry of ``pg_restore --list``: description, schema, name."""
    entries = []
    for line in listing:
        match = _TOC_LINE.match(line)
        if not match:
            continue
        rest = match.group("rest")
        kind = next((k for k in MULTI_WORD if rest.startswith(k + " ")), rest.split(" ")[0])
        parts = rest[len(kind) + 1 :].split(" ")
        if len(parts) < 2:
            continue
        entries.append(TocEntry(kind, parts[0], " ".join(parts[1:-1]) or parts[1], line))
    return entries


INVENTORY_SQL = """
WITH owned AS (  -- members of an extension, or parts of another object (identity sequences,
                 -- range constructors): they go with their owner, never on their own
  SELECT classid, objid FROM pg_depend WHERE deptype IN ('e', 'i'))
SELECT CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
         WHEN 'S' THEN 'SEQUENCE' WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END,
       n.nspname, c.relname::text, format('%%I.%%I', n.nspname, c.relname),
       pg_has_role(c.relowner, 'USAGE')
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = ANY(%(schemas)s) AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
  AND NOT EXISTS (SELECT 1 FROM owned o
                  WHERE o.classid = 'pg_class'::regclass AND o.objid = c.oid)
UNION ALL
SELECT CASE t.typtype WHEN 'd' THEN 'DOMAIN' ELSE 'TYPE' END,
       n.nspname, t.typname::text, format('%%I.%%I', n.nspname, t.typname),
       pg_has_role(t.typowner, 'USAGE')
FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
WHERE n.nspname = ANY(%(schemas)s)
  AND (t.typtype IN ('e', 'd', 'r')
       OR (t.typtype = 'c' AND (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c'))
  AND NOT EXISTS (SELECT 1 FROM owned o
                  WHERE o.classid = 'pg_type'::regclass AND o.objid = t.oid)
UNION ALL
SELECT CASE p.prokind WHEN 'p' THEN 'PROCEDURE' WHEN 'a' THEN 'AGGREGATE' ELSE 'FUNCTION' END,
       n.nspname, p.proname || '(' || pg_catalog.oidvectortypes(p.proargtypes) || ')',
       format('%%I.%%I(%%s)', n.nspname, p.proname, pg_get_function_identity_arguments(p.oid)),
       pg_has_role(p.proowner, 'USAGE')
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = ANY(%(schemas)s)
  AND NOT EXISTS (SELECT 1 FROM owned o
                  WHERE o.classid = 'pg_proc'::regclass AND o.objid = p.oid)
"""


def stale_objects(cursor: Any, entries: list[TocEntry]) -> tuple[list[str], list[str]]:
    """(DROP statements for what the archive's schemas hold beyond the archive,
    names of those the role may not drop). Names are compared as pg_dump writes them:
    with an empty search_path, so argument types come schema-qualified."""
    compared = [e for e in entries if e.kind in DROP_ORDER]
    schemas = sorted({e.schema for e in compared if e.schema not in ("-", "")} or {"public"})
    held = {(e.kind, e.schema, e.name) for e in compared}
    cursor.execute("SELECT set_config('search_path', '', true)")
    cursor.execute(INVENTORY_SQL, {"schemas": schemas})
    drops, refused = [], []
    for kind, schema, name, qualified, may_drop in sorted(
        cursor.fetchall(), key=lambda row: DROP_ORDER[row[0]]
    ):
        if (kind, schema, name) in held:
            continue
        if not may_drop:
            refused.append(f"{kind.lower()} {qualified}")
        drops.append(f"DROP {kind} IF EXISTS {qualified} CASCADE")
    return drops, refused


def _use_list(listing: list[str], installed: set[str]) -> str:
    """The archive's list with installed extensions (and their comments) left out."""
    lines = []
    for line in listing:
        match = _TOC_LINE.match(line)
        rest = match.group("rest") if match else ""
        skip = any(
            rest.startswith(f"EXTENSION - {name} ")
            or rest.startswith(f"COMMENT - EXTENSION {name} ")
            for name in installed
        )
        lines.append(";" + line if skip else line)
    return "\n".join(lines) + "\n"


class _CopyReader:
    """COPY data for psycopg2's copy_expert, a block of whole lines per read."""

    def __init__(self, lines: Any) -> None:
        self.lines = lines

    def read(self, _size: int = -1) -> bytes:
        return next(self.lines, b"")

    readline = read


@contextlib.contextmanager
def _blocking_io() -> Any:
    """psycopg2 refuses COPY under the wait callback that makes queries interruptible;
    lift it for one COPY (Ctrl-C then lands when that COPY ends)."""
    import psycopg2.extensions

    callback = psycopg2.extensions.get_wait_callback()
    psycopg2.extensions.set_wait_callback(None)
    try:
        yield
    finally:
        psycopg2.extensions.set_wait_callback(callback)


def restore_postgres(env: Environment, path: Path) -> None:
    """Drop what the backup does not hold, replay the archive; one transaction.

    Kept long: one transaction's lifetime (drops, the replayed script, COPY data) and
    its rollback on every failure sit in one try block."""
    import psycopg2

    from safe_migrations.engines.sqlscript import Copy, ScriptError, split_script

    listing = archive_listing(env, path)
    entries = toc_entries(listing)
    lock_timeout = env.settings.migration.lock_timeout or None
    engine = make_engine(env, role="restore", lock_timeout=lock_timeout)
    raw = engine.raw_connection()
    producer: subprocess.Popen[bytes] | None = None
    try:
        cursor = raw.cursor()
        drops, refused = stale_objects(cursor, entries)
        if refused:
            raise BackupError(
                f"Restoring {path.name} would have to drop objects the role may not drop: "
                f"{', '.join(refused[:10])}; nothing was changed. Restore as their owner."
            )
        cursor.execute("SELECT extname FROM pg_extension")
        installed = {row[0] for row in cursor.fetchall()}
        with tempfile.NamedTemporaryFile("w", suffix=".list") as use_list:
            use_list.write(_use_list(listing, installed))
            use_list.flush()
            with tempfile.TemporaryFile() as errors:
                producer = subprocess.Popen(
                    [
                        find_binary("pg_restore"),
                        "--clean",
                        "--if-exists",
                        "--no-owner",
                        f"--use-list={use_list.name}",
                        "--file=-",
                        str(path),
                    ],
                    env=child_environment(),  # writes a script, connects nowhere
                    stdout=subprocess.PIPE,
                    stderr=errors,
                )
                assert producer.stdout is not None
                for statement in drops:
                    cursor.execute(statement)
                for item in split_script(producer.stdout):
                    if isinstance(item, Copy):
                        with _blocking_io():
                            cursor.copy_expert(item.sql, _CopyReader(item.lines))
                    elif not re.match(rb"SET lock_timeout\b", item):  # ours applies
                        cursor.execute(item)
                if producer.wait() != 0:
                    errors.seek(0)
                    first = (errors.read().decode(errors="replace").strip().splitlines() or [""])[0]
                    raise BackupError(
                        f"pg_restore could not read {path.name}: {first}; nothing was changed."
                    )
        raw.commit()
    except psycopg2.Error as exc:
        raw.rollback()
        primary = getattr(exc.diag, "message_primary", None) or str(exc).strip().splitlines()[0]
        raise BackupError(
            f"Restoring {path.name} failed and was rolled back, the database is unchanged: "
            f"ERROR: {primary}"
        ) from None
    except ScriptError as exc:
        raw.rollback()
        raise BackupError(
            f"Refusing to restore {path.name}: it holds {exc}, which pg_dump never writes "
            "(the archive was changed after it was made). Nothing was run; the database "
            "is unchanged."
        ) from None
    except BaseException:
        with contextlib.suppress(psycopg2.Error):
            raw.rollback()
        raise
    finally:
        if producer is not None and producer.poll() is None:
            producer.kill()
            producer.wait()
        if producer is not None and producer.stdout is not None:
            producer.stdout.close()
        raw.close()
