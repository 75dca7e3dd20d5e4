"""`invoke restore`: only the environment's own verified backups, put back all or nothing.

A backup is the environment's own when it is a file this tool made in the
environment's backup folder and its manifest names this environment and the same
engine, host, port and database. Anything else needs ``--foreign``.

PostgreSQL archives are replayed on our own connection, in one transaction, from
``pg_restore --file=-`` (which reads the archive and connects nowhere): no psql,
so nothing inside an archive can run as a client command. In the same transaction,
every object of the archive's schemas that the archive does not hold is dropped
first (tables, views, sequences, types, domains, functions), so the database is
exactly the backup again; extensions are left alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safe_migrations.core.config import Environment
from safe_migrations.core.database import make_engine, sqlite_path
from safe_migrations.core.errors import BackupError, ConfigError
from safe_migrations.core.leftovers import DECRYPTED_PREFIX, claimed, sweep
from safe_migrations.pipeline.backup import (
    MANIFEST_SUFFIX,
    archive_listing,
    archive_of,
    database_identity,
    find_binary,
    is_own_backup,
    list_backups,
    sha256_of,
)
from safe_migrations.stores.backupfiles import child_environment
from safe_migrations.stores.encryption import SUFFIX


def find_backup(env: Environment, spec: str, foreign: bool = False) -> dict[str, Any]:
    """``latest`` or a path (archive or manifest) -> its manifest, with ``path`` (the
    archive, by location), ``own`` and, for another's backup, ``foreign_reason``."""
    from safe_migrations.stores.s3 import is_remote

    if is_remote(env):
        return find_remote_backup(env, spec)
    if spec == "latest":
        backups = list_backups(env)
        if not backups:
            raise ConfigError(
                f"There is no backup for {env.name} in {env.backup_dir}; "
                "take one with `invoke backup`."
            )
        data = dict(backups[0])
        archive = Path(data["path"])
    else:
        given = Path(spec).absolute()
        archive = archive_of(given) if given.name.endswith(MANIFEST_SUFFIX) else given
        if not archive.exists():
            raise ConfigError(
                f"No backup at {spec}; pass a path that `invoke backup` printed, or 'latest'."
            )
        manifest = Path(str(archive) + MANIFEST_SUFFIX)
        data = _read_manifest(manifest) or {}
        data["manifest"] = str(manifest) if manifest.is_file() else None
        data["path"] = str(archive)  # by location, never the manifest's own claim
    reason = foreign_reason(env, archive, data)
    data["own"], data["foreign_reason"] = reason is None, reason
    if reason and not foreign:
        raise ConfigError(
            f"{archive} is not one of {env.name}'s own backups ({reason}); restore runs only "
            "the environment's own backups. To restore it anyway pass --foreign (on a "
            "terminal you will be shown what it holds and asked to type the environment's name)."
        )
    return data


def find_remote_backup(env: Environment, spec: str) -> dict[str, Any]:
    """``latest``, or an object (s3:// URL, key or name) under the environment's prefix,
    with its manifest object; ``path`` is where it will be downloaded to."""
    from safe_migrations.stores.s3 import MANIFEST_SUFFIX as SUFFIX_
    from safe_migrations.stores.s3 import check_provenance, remote_manifests, store_for

    store = store_for(env)
    if spec == "latest":
        found = remote_manifests(env, store)
        if not found:
            raise ConfigError(
                f"There is no backup for {env.name} in s3://{store.bucket}/{store.prefix}; "
                "take one with `invoke backup`."
            )
        data = dict(found[0])
    else:
        name = store.name_of(spec)
        if name is None:
            raise ConfigError(
                f"{spec} is not under s3://{store.bucket}/{store.prefix}, where {env.name}'s "
                "backups are; restore runs only the environment's own backups (download "
                "another object and pass the file with --foreign)."
            )
        name = name.removesuffix(SUFFIX_)
        data = store.get_json(store.key(name + SUFFIX_)) or {}
        data["manifest"] = store.url(store.key(name + SUFFIX_)) if data else None
        data["name"] = name
    data["remote"] = store.url(store.key(data["name"]))
    data["path"] = str(env.backup_dir / data["name"])
    reason = foreign_reason(env, Path(data["path"]), data)
    if reason:
        raise ConfigError(f"{data['remote']} is not one of {env.name}'s own backups ({reason}).")
    check_provenance(env, store, data)
    data["own"], data["foreign_reason"] = True, None
    return data


@contextlib.contextmanager
def local_copy(env: Environment, backup: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The backup as a local file: itself, or a store's object downloaded into the backup
    folder (0600) for the restore and removed afterwards."""
    if not backup.get("remote"):
        yield backup
        return
    from safe_migrations.stores.s3 import downloaded

    with downloaded(env, backup) as local:
        yield local


def _read_manifest(manifest: Path) -> dict[str, Any] | None:
    if manifest.is_symlink() or not manifest.is_file():
        return None
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def foreign_reason(env: Environment, archive: Path, manifest: dict[str, Any]) -> str | None:
    """Why a backup is not this environment's own, or None when it is."""
    if not is_own_backup(env, archive):
        return f"it is not a backup this tool made in {env.backup_dir}"
    if not manifest.get("manifest"):
        return "it has no readable manifest"
    if manifest.get("environment") != env.name:
        return f"its manifest names the environment {manifest.get('environment')!r}"
    target = manifest.get("target")
    if not isinstance(target, dict):
        return "its manifest names no database (taken by an older version)"
    if target != database_identity(env):
        where = ", ".join(f"{k} {v}" for k, v in target.items() if k != "engine")
        return f"it was taken of another database ({where})"
    return None


def verify_checksum(backup: dict[str, Any]) -> None:
    path = Path(backup["path"])
    if not path.exists():
        raise BackupError(f"The backup {path} is missing.")
    expected = backup.get("sha256")
    if not expected:
        raise BackupError(f"The backup {path.name} has no checksum to verify it against.")
    actual = sha256_of(path)
    if actual != expected:
        raise BackupError(
            f"The backup {path.name} does not match its manifest's sha256 "
            f"(expected {str(expected)[:12]}..., found {actual[:12]}...); "
            "it was changed or damaged and will not be restored."
        )


def describe_backup(env: Environment, backup: dict[str, Any]) -> str:
    """What a (foreign) archive holds, shown before asking to restore it."""
    path = Path(backup["path"])
    lines = [f"backup:   {path}", f"manifest: {backup.get('manifest') or '(none)'}"]
    if backup.get("foreign_reason"):
        lines.append(f"foreign:  {backup['foreign_reason']}")
    with readable_archive(env, backup) as plain:
        if env.is_sqlite:
            import sqlite3

            with contextlib.closing(sqlite3.connect(f"file:{plain}?mode=ro", uri=True)) as db:
                rows = db.execute("SELECT name FROM sqlite_master WHERE type='table'")
                names = [r[0] for r in rows]
            lines.append(f"tables ({len(names)}): {', '.join(sorted(names))}")
            return "\n".join(lines)
        if env.is_mysql:
            from safe_migrations.engines.mysqldump import dump_tables

            names = dump_tables(plain)
            lines.append(f"tables ({len(names)}): {', '.join(sorted(names))}")
            return "\n".join(lines)
        listing = archive_listing(env, plain)
    header = {
        key.strip(): value.strip()
        for line in listing
        if line.startswith(";") and ":" in line
        for key, value in [line[1:].split(":", 1)]
    }
    for key in ("Dbname", "Dumped from database version", "Archive created at"):
        if key in header:
            lines.append(f"{key.lower()}: {header[key]}")
    kinds = Counter(entry.kind for entry in toc_entries(listing))
    lines.append("holds: " + ", ".join(f"{n} {kind.lower()}" for kind, n in sorted(kinds.items())))
    return "\n".join(lines)


@contextlib.contextmanager
def readable_archive(env: Environment, backup: dict[str, Any]) -> Iterator[Path]:
    """The archive in clear: itself, or (encrypted, ``.age``) decrypted with the identity
    in SAFE_MIGRATIONS_AGE_IDENTITY into a private folder inside the backup folder,
    removed afterwards."""
    path = Path(backup["path"])
    if not path.name.endswith(SUFFIX):
        yield path
        return
    from safe_migrations.stores.encryption import decrypt_file, identities

    keys = identities()
    sweep(path.parent)  # a killed restore's plaintext goes before any new one is made
    folder = path.parent / f"{DECRYPTED_PREFIX}{uuid.uuid4().hex[:12]}"
    with claimed(folder):
        os.mkdir(folder, 0o700)
        try:
            plain = folder / path.name[: -len(SUFFIX)]
            decrypt_file(path, plain, keys)
            yield plain
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def restore_backup(env: Environment, backup: dict[str, Any]) -> None:
    """Checksum first (own backups always have one), then put the database back."""
    if backup.get("own") or backup.get("sha256"):
        verify_checksum(backup)
    with readable_archive(env, backup) as path:
        if env.is_sqlite:
            _restore_sqlite(env, path)
        elif env.is_mysql:
            from safe_migrations.engines.mysqldump import restore_mysql

            restore_mysql(env, path)
        else:
            _restore_postgres(env, path)


def _restore_sqlite(env: Environment, path: Path) -> None:
    import sqlite3

    target = sqlite_path(env.url)
    if target is None:
        raise ConfigError("An in-memory SQLite database cannot be restored.")
    source = sqlite3.connect(path)
    destination = sqlite3.connect(target)
    try:
        source.backup(destination)
    finally:
        destination.close()
        source.close()


# --- PostgreSQL -----------------------------------------------------------------------

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
    """COPY data for psycopg2's copy_expert, read line by line from the script."""

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


def _restore_postgres(env: Environment, path: Path) -> None:
    """Drop what the backup does not hold, replay the archive; one transaction."""
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
