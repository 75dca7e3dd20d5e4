"""One migration at a time: the engine's lock (a PostgreSQL advisory lock, MySQL's
GET_LOCK, a lock file beside a SQLite database), held from the backup to the end of the
upgrade; engines/ implements each."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from safe_migrations.core.config import Environment
from safe_migrations.engines import engine_for


@contextmanager
def migration_lock(env: Environment, wait: float | None = None) -> Iterator[None]:
    """Hold the environment's migration lock; raise LockHeldError after ``wait`` seconds."""
    wait = env.settings.migration.lock_wait if wait is None else wait
    with engine_for(env.dialect).migration_lock(env, wait):
        yield
