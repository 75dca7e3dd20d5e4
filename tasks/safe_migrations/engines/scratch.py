"""Scratch databases: the rehearsal's copies and the stairway's empty database, and what
every engine's copies share (their names, the error when one cannot be made).

A copy is named ``<rehearsal.prefix><12 hex digits>`` and owned by the process that
made it, through a lock the engine keeps from before the copy exists until after it is
dropped (PostgreSQL: a session advisory lock; MySQL: GET_LOCK; SQLite: ``flock`` on a
file beside it). So a copy whose owner's lock is gone was left by a killed run and may
be dropped, and a live rehearsal's copy is never touched.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from safe_migrations.core.errors import ToolError, first_line

if TYPE_CHECKING:
    from safe_migrations.core.config import Environment


@dataclass(frozen=True)
class Copy:
    name: str
    env: Environment  # the environment's settings, pointed at the copy
    server: str  # where it lives, masked
    dropped_stale: tuple[str, ...]  # copies of killed runs removed first


class CopyError(ToolError):
    """The copy could not be made; the environment's database was not touched."""


def is_copy_name(name: str, prefix: str) -> bool:
    return re.fullmatch(re.escape(prefix) + r"[0-9a-f]{12}", name) is not None


def new_name(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


def pointed_at(env: Environment, server: Environment, name: str) -> Environment:
    """``env``'s settings with the URL of database ``name`` on ``server``."""
    from sqlalchemy.engine import make_url

    url = make_url(server.url).set(database=name).render_as_string(hide_password=False)
    return replace(env, url=url)


def create_failed(
    server: Environment, exc: BaseException, grant: str = "give the role CREATEDB"
) -> CopyError:
    """The sentence for a copy the server would not create; ``grant``: the engine's way
    to allow it (PostgreSQL's CREATEDB, MySQL's CREATE and DROP privileges)."""
    return CopyError(
        f"The rehearsal could not create its copy on {server.masked_url} "
        f"({first_line(exc)}); {grant}, or set rehearsal.server to a "
        "server where it may create databases."
    )
