"""MySQL and MariaDB copies: each made under its owner's GET_LOCK, taken before it
exists; copies whose owner's lock is free (killed runs) are dropped first. MySQL grants
CREATE per database name, so the CREATE DATABASE itself tells whether the role may."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from safe_migrations.core.database import connect
from safe_migrations.engines.scratch import Copy, create_failed, is_copy_name, new_name, pointed_at

if TYPE_CHECKING:
    from safe_migrations.core.config import Environment


def _owner_lock(name: str) -> str:
    """MySQL: the named lock a copy's owner holds (server-wide, at most 64 characters)."""
    return f"safe-migrations-copy:{name}"[:64]


@contextlib.contextmanager
def database_copy(env: Environment, server: Environment) -> Iterator[Copy]:
    prefix = env.settings.rehearsal.prefix
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
                        drop_database(server, found, "rehearse")
                        stale.append(found)
            try:
                create_database(server, name, "rehearse")
            except Exception as exc:
                pattern = prefix.replace("_", "\\_") + "%"
                grant = (
                    "grant the account CREATE, DROP and the rights to fill them on the "
                    f"copies' databases (GRANT ALL ON `{pattern}`.* TO the account)"
                )
                raise create_failed(server, exc, grant) from None
            try:
                yield Copy(name, pointed_at(env, server, name), server.masked_url, tuple(stale))
            finally:
                drop_database(server, name, "rehearse")
        finally:
            with contextlib.suppress(Exception):
                sql("SELECT RELEASE_LOCK(%(lock)s)", {"lock": _owner_lock(name)})


def create_database(server: Environment, name: str, role: str) -> None:
    with connect(server, role=role, autocommit=True) as connection:
        connection.exec_driver_sql(f"CREATE DATABASE `{name}`")


def drop_database(server: Environment, name: str, role: str) -> None:
    with connect(server, role=role, autocommit=True) as connection:
        connection.exec_driver_sql(f"DROP DATABASE IF EXISTS `{name}`")


def copy_exists(server: Environment, name: str) -> bool:
    with connect(server, role="rehearse", autocommit=True) as connection:
        return bool(
            connection.exec_driver_sql(
                "SELECT count(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %(n)s",
                {"n": name},
            ).scalar()
        )
