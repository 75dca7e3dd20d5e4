"""PostgreSQL copies: each made under its owner's session advisory lock, which
``pg_locks`` shows to every session on the server, whatever database it is connected
to; copies whose owner's lock is gone (killed runs) are dropped first."""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from safe_migrations.core.database import connect
from safe_migrations.engines.scratch import (
    Copy,
    CopyError,
    create_failed,
    is_copy_name,
    new_name,
    pointed_at,
)

if TYPE_CHECKING:
    from safe_migrations.core.config import Environment

OWNER_SPACE = 0x5AFE  # the first key of every copy's advisory lock
_OWNER_SEEN_SQL = """
SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory'
               AND classid = %(space)s::oid AND objid = %(key)s::oid AND objsubid = 2)
"""
_SOURCE_SQL = """
SELECT pg_encoding_to_char(encoding), datcollate, datctype FROM pg_database
WHERE datname = current_database()
"""


def owner_key(name: str) -> int:
    """The second advisory-lock key for a copy's name (a non-negative int4)."""
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


@contextlib.contextmanager
def database_copy(env: Environment, server: Environment) -> Iterator[Copy]:
    """An empty database on ``server`` (the environment's, or the rehearsal server),
    made under its owner lock, dropped after, whatever happens."""
    name = new_name(env.settings.rehearsal.prefix)
    with connect(server, role="rehearse", autocommit=True) as owner:
        sql = owner.exec_driver_sql
        sql("SELECT pg_advisory_lock(%(space)s, %(key)s)", _keys(name))
        try:
            stale = drop_stale_copies(server, env.settings.rehearsal.prefix)
            template = ""
            if server.url == env.url:  # same server: the same encoding and collation
                encoding, collate, ctype = sql(_SOURCE_SQL).one()
                template = (
                    f" TEMPLATE template0 ENCODING '{encoding}' "
                    f"LC_COLLATE '{_literal(collate)}' LC_CTYPE '{_literal(ctype)}'"
                )
            try:
                create_database(server, name, "rehearse", template)
            except Exception as exc:
                raise create_failed(server, exc) from None
            try:
                yield Copy(name, pointed_at(env, server, name), server.masked_url, tuple(stale))
            finally:
                drop_database(server, name, "rehearse")
        finally:
            with contextlib.suppress(Exception):  # the lock goes with the connection anyway
                sql("SELECT pg_advisory_unlock(%(space)s, %(key)s)", _keys(name))


def _keys(name: str) -> dict[str, int]:
    return {"space": OWNER_SPACE, "key": owner_key(name)}


def _literal(text: str) -> str:
    return text.replace("'", "''")


def create_database(server: Environment, name: str, role: str, template: str = "") -> None:
    with connect(server, role=role, autocommit=True) as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"{template}')


def drop_database(server: Environment, name: str, role: str) -> None:
    """Dropped even with sessions left on it (WITH (FORCE), from PostgreSQL 13)."""
    with connect(server, role=role, autocommit=True) as connection:
        version = int(connection.exec_driver_sql("SHOW server_version_num").scalar() or 0)
        force = " WITH (FORCE)" if version >= 130000 else ""
        connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"{force}')


def check_can_create(server: Environment) -> None:
    """Before any backup is taken for it: the role may create the copy (CREATEDB)."""
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
    with connect(server, role="rehearse", autocommit=True) as connection:
        found = connection.exec_driver_sql(
            "SELECT count(*) FROM pg_database WHERE datname = %(name)s", {"name": name}
        ).scalar()
    return bool(found)


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
                drop_database(server, name, "rehearse")
            except DBAPIError:
                continue
            dropped.append(name)
    return dropped
