"""Temporary copies of a database for rehearsals, owned by the process that made them.

A copy is named ``<rehearsal.prefix><12 hex digits>``. On PostgreSQL its maker holds a
session advisory lock keyed by that name from before the copy exists until after it
is dropped; ``pg_locks`` shows that lock to every session on the server, whatever
database it is connected to. So a copy whose owner's lock is gone was left by a
killed run and may be dropped, and a live rehearsal's copy is never touched. SQLite
copies are files in a private folder, each owned through ``flock`` on a lock file.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import tempfile
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from safe_migrations.core.config import Environment
from safe_migrations.core.database import connect
from safe_migrations.core.errors import ToolError, UsageError, first_line
from safe_migrations.core.files import private_folder

OWNER_SPACE = 0x5AFE  # the first key of every copy's advisory lock
_OWNER_SEEN_SQL = """
SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory'
               AND classid = %(space)s::oid AND objid = %(key)s::oid AND objsubid = 2)
"""
_SOURCE_SQL = """
SELECT pg_encoding_to_char(encoding), datcollate, datctype FROM pg_database
WHERE datname = current_database()
"""


@dataclass(frozen=True)
class Copy:
    name: str
    env: Environment  # the environment's settings, pointed at the copy
    server: str  # where it lives, masked
    dropped_stale: tuple[str, ...]  # copies of killed runs removed first


def owner_key(name: str) -> int:
    """The second advisory-lock key for a copy's name (a non-negative int4)."""
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


def is_copy_name(name: str, prefix: str) -> bool:
    return re.fullmatch(re.escape(prefix) + r"[0-9a-f]{12}", name) is not None


def new_name(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


@contextlib.contextmanager
def database_copy(env: Environment, server: Environment) -> Iterator[Copy]:
    """An empty database to restore into, on ``server`` (the environment itself, or the
    rehearsal server): made under its owner lock, dropped after, whatever happens."""
    prefix = env.settings.rehearsal.prefix
    if env.is_sqlite:
        with _sqlite_copy(env, prefix) as made:
            yield made
        return
    if env.is_mysql:
        with _mysql_copy(env, server, prefix) as made:
            yield made
        return
    from sqlalchemy.engine import make_url

    name = new_name(prefix)
    with connect(server, role="rehearse", autocommit=True) as owner:
        sql = owner.exec_driver_sql
        sql("SELECT pg_advisory_lock(%(space)s, %(key)s)", _keys(name))
        try:
            stale = drop_stale_copies(server, prefix)
            template = ""
            if server.url == env.url:  # same server: the same encoding and collation
                encoding, collate, ctype = sql(_SOURCE_SQL).one()
                template = (
                    f" TEMPLATE template0 ENCODING '{encoding}' "
                    f"LC_COLLATE '{_literal(collate)}' LC_CTYPE '{_literal(ctype)}'"
                )
            _create(sql, name, template, server)
            try:
                url = make_url(server.url).set(database=name).render_as_string(False)
                yield Copy(name, replace(env, url=url), server.masked_url, tuple(stale))
            finally:
                drop_database(server, name)
        finally:
            with contextlib.suppress(Exception):  # the lock goes with the connection anyway
                sql("SELECT pg_advisory_unlock(%(space)s, %(key)s)", _keys(name))


def _keys(name: str) -> dict[str, int]:
    return {"space": OWNER_SPACE, "key": owner_key(name)}


def _literal(text: str) -> str:
    return text.replace("'", "''")


def _create(sql: object, name: str, template: str, server: Environment) -> None:
    from sqlalchemy.exc import DBAPIError

    try:
        quoted = f"`{name}`" if server.is_mysql else f'"{name}"'
        sql(f"CREATE DATABASE {quoted}{template}")  # type: ignore[operator]
    except DBAPIError as exc:
        raise CopyError(
            f"The rehearsal could not create its copy on {server.masked_url} "
            f"({first_line(exc)}); give the role CREATEDB, or set rehearsal.server to a "
            "server where it may create databases."
        ) from None


class CopyError(ToolError):
    """The copy could not be made; the environment's database was not touched."""


def check_can_create(server: Environment) -> None:
    """Before any backup is taken for it: the role may create the copy (CREATEDB).
    MySQL grants CREATE per database name: the CREATE DATABASE itself tells."""
    if server.is_sqlite or server.is_mysql:
        return
    with connect(server, role="rehearse", autocommit=True) as connection:
        allowed = connection.exec_driver_sql(
            "SELECT rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user"
        ).scalar()
    if not allowed:
        raise CopyError(
            f"The rehearsal cannot create its copy on {server.masked_url}: the role may not "
            "create databases; give it CREATEDB, or set rehearsal.server to a server where "
            "it may. Nothing was backed up or changed."
        )


def copy_exists(server: Environment, name: str) -> bool:
    """Whether a copy is still there (the report says whether it was dropped)."""
    if server.is_sqlite:
        return (copies_folder() / f"{name}.db").exists()
    if server.is_mysql:
        with connect(server, role="rehearse", autocommit=True) as connection:
            return bool(
                connection.exec_driver_sql(
                    "SELECT count(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %(n)s",
                    {"n": name},
                ).scalar()
            )
    with connect(server, role="rehearse", autocommit=True) as connection:
        found = connection.exec_driver_sql(
            "SELECT count(*) FROM pg_database WHERE datname = %(name)s", {"name": name}
        ).scalar()
    return bool(found)


def drop_database(server: Environment, name: str) -> None:
    with connect(server, role="rehearse", autocommit=True) as connection:
        if server.is_mysql:
            connection.exec_driver_sql(f"DROP DATABASE IF EXISTS `{name}`")
            return
        version = int(connection.exec_driver_sql("SHOW server_version_num").scalar() or 0)
        force = " WITH (FORCE)" if version >= 130000 else ""
        connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"{force}')


def drop_stale_copies(server: Environment, prefix: str) -> list[str]:
    """Drop copies whose owner's lock is gone (their run was killed); returns their names.
    A copy this role may not drop is left, and named in no error: it is not ours to fix."""
    from sqlalchemy.exc import DBAPIError

    with connect(server, role="rehearse", autocommit=True) as connection:
        names = connection.exec_driver_sql(
            "SELECT datname FROM pg_database WHERE NOT datistemplate "
            "AND left(datname, length(%(prefix)s)) = %(prefix)s",
            {"prefix": prefix},
        ).scalars()
        candidates = [n for n in names if is_copy_name(n, prefix)]
        dropped = []
        for name in candidates:
            if connection.exec_driver_sql(_OWNER_SEEN_SQL, _keys(name)).scalar():
                continue  # a live rehearsal's copy
            try:
                drop_database(server, name)
            except DBAPIError:
                continue
            dropped.append(name)
    return dropped


def _owner_lock(name: str) -> str:
    """MySQL: the named lock a copy's owner holds (server-wide, at most 64 characters)."""
    return f"safe-migrations-copy:{name}"[:64]


@contextlib.contextmanager
def _mysql_copy(env: Environment, server: Environment, prefix: str) -> Iterator[Copy]:
    """A new database on ``server`` under its owner's GET_LOCK, taken before it exists;
    copies whose owner's lock is free (killed runs) are dropped first."""
    from sqlalchemy.engine import make_url

    name = new_name(prefix)
    with connect(server, role="rehearse", autocommit=True) as owner:
        sql = owner.exec_driver_sql
        sql("SELECT GET_LOCK(%(lock)s, 10)", {"lock": _owner_lock(name)})
        try:
            stale = []
            names = sql(
                "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE %(p)s",
                {"p": prefix.replace("_", "\\_") + "%"},
            ).scalars()
            for found in [n for n in names if is_copy_name(n, prefix) and n != name]:
                if sql("SELECT IS_FREE_LOCK(%(lock)s)", {"lock": _owner_lock(found)}).scalar():
                    with contextlib.suppress(Exception):
                        drop_database(server, found)
                        stale.append(found)
            _create(sql, name, "", server)
            try:
                url = make_url(server.url).set(database=name).render_as_string(False)
                yield Copy(name, replace(env, url=url), server.masked_url, tuple(stale))
            finally:
                drop_database(server, name)
        finally:
            with contextlib.suppress(Exception):
                sql("SELECT RELEASE_LOCK(%(lock)s)", {"lock": _owner_lock(name)})


def copies_folder() -> Path:
    """Where SQLite copies live: a folder of this user's own under the system's temp
    (one that someone else made, or a symlink, is refused)."""
    folder = private_folder(
        Path(tempfile.gettempdir()) / f"safe-migrations-rehearsals-{os.getuid()}"
    )
    info = folder.lstat()
    if folder.is_symlink() or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise UsageError(
            f"{folder} is not a private folder of this user's; remove it and rehearse again."
        )
    return folder


@contextlib.contextmanager
def _sqlite_copy(env: Environment, prefix: str) -> Iterator[Copy]:
    folder = copies_folder()
    stale = _drop_stale_files(folder, prefix)
    name = new_name(prefix)
    lock_path = folder / f"{name}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        target = folder / f"{name}.db"
        try:
            if env.url in ("sqlite://", "sqlite:///:memory:"):
                raise UsageError("An in-memory SQLite database cannot be rehearsed.")
            yield Copy(name, replace(env, url=f"sqlite:///{target}"), str(folder), tuple(stale))
        finally:
            for path in (target, target.with_name(target.name + "-journal"), lock_path):
                path.unlink(missing_ok=True)


def _drop_stale_files(folder: Path, prefix: str) -> list[str]:
    dropped = []
    for lock_path in folder.glob(f"{prefix}*.lock"):
        name = lock_path.stem
        if not is_copy_name(name, prefix):
            continue
        with open(lock_path, "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live rehearsal's copy
            (folder / f"{name}.db").unlink(missing_ok=True)
            lock_path.unlink(missing_ok=True)
        dropped.append(name)
    return dropped
