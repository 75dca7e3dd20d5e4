"""Waiting for a lock without queueing in front of the application (PostgreSQL).

A statement that waits for a lock makes every later query on that table queue
behind it. So each attempt queues for one short ``lock_timeout`` at most; while it
queues, a second connection notes what it waits for (relation, mode, and the pids
``pg_blocking_pids()`` names). After the timeout the revision is rolled back and
those holders are watched from the side, through ``pg_locks``, which enqueues
nothing; the moment they let go the revision is tried again, within a per-revision
budget. Optionally, holders idle in a transaction for too long are terminated.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

from safe_migrations.core.config import Environment
from safe_migrations.core.database import connect
from safe_migrations.core.sampling import SAMPLE_INTERVAL

_WAITING_SQL = "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %(pid)s"
_WAIT_SQL = """
SELECT l.relation, l.relation::regclass::text AS name, l.mode, pg_blocking_pids(l.pid) AS pids
FROM pg_locks l
WHERE l.pid = %(pid)s AND NOT l.granted AND l.locktype = 'relation'
LIMIT 1
"""
# What every role may see of another session: pid, role and application always;
# state and ages only with pg_read_all_stats (they read NULL otherwise).
_HOLDERS_SQL = """
SELECT a.pid, a.usename, a.application_name, a.state,
       EXTRACT(EPOCH FROM now() - a.xact_start) AS xact_age,
       EXTRACT(EPOCH FROM now() - a.state_change) AS state_age,
       coalesce(r.rolsuper, false) AS superuser,
       (SELECT string_agg(DISTINCT l.mode, ', ') FROM pg_locks l
         WHERE l.pid = a.pid AND l.relation = %(relation)s AND l.granted) AS modes
FROM pg_stat_activity a LEFT JOIN pg_roles r ON r.oid = a.usesysid
WHERE a.pid = ANY(%(pids)s)
ORDER BY a.pid
"""
_STILL_HELD_SQL = """
SELECT count(*) FROM pg_locks
WHERE relation = %(relation)s AND granted AND pid = ANY(%(pids)s)
"""


@dataclass(frozen=True)
class Wait:
    """What one attempt queued for: a relation, the mode it asked, who was ahead."""

    relation: int
    name: str
    mode: str
    pids: tuple[int, ...]


@dataclass(frozen=True)
class Holder:
    pid: int
    role: str | None
    application: str | None
    state: str | None  # None: hidden from this role (no pg_read_all_stats)
    transaction_age: float | None
    state_age: float | None
    superuser: bool
    modes: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        parts = [self.role or "?"]
        if self.application:
            parts.append(self.application)
        parts.append(self.state or "state hidden: GRANT pg_read_all_stats")
        if self.transaction_age is not None:
            parts.append(f"transaction {self.transaction_age:.1f}s")
        if self.modes:
            parts.append(f"holds {self.modes}")
        return f"pid {self.pid} ({', '.join(parts)})"


class Watcher:
    """From a connection of its own, notes what the migration's backend queues for."""

    def __init__(self, env: Environment, pid: int) -> None:
        self.env = env
        self.pid = pid
        self.last: Wait | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lock-watcher", daemon=True)

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def take(self) -> Wait | None:
        """The last wait seen, forgotten so the next attempt starts clean."""
        seen, self.last = self.last, None
        return seen

    def _run(self) -> None:
        from sqlalchemy.exc import DBAPIError

        from safe_migrations.core.errors import UnreachableError

        try:
            with connect(self.env, role="watch", autocommit=True) as connection:
                sql = connection.exec_driver_sql
                while not self._stop.wait(SAMPLE_INTERVAL):
                    row = sql(_WAITING_SQL, {"pid": self.pid}).fetchone()
                    if not (row and row[0]):
                        continue
                    found = sql(_WAIT_SQL, {"pid": self.pid}).fetchone()
                    if found is not None and found[3]:
                        self.last = Wait(int(found[0]), found[1], found[2], tuple(found[3]))
        except (DBAPIError, UnreachableError, OSError):
            return  # without a watcher the runner falls back to a short pause


def holders(env: Environment, wait: Wait) -> list[Holder]:
    with connect(env, role="watch", autocommit=True) as connection:
        params = {"relation": wait.relation, "pids": list(wait.pids)}
        rows = connection.exec_driver_sql(_HOLDERS_SQL, params).fetchall()
    return [
        Holder(
            pid=r[0],
            role=r[1],
            application=r[2],
            state=r[3],
            transaction_age=None if r[4] is None else round(float(r[4]), 1),
            state_age=None if r[5] is None else round(float(r[5]), 1),
            superuser=bool(r[6]),
            modes=r[7],
        )
        for r in rows
    ]


@dataclass(frozen=True)
class Cancelled:
    pid: int
    role: str | None
    idle_for: float
    done: bool
    why: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cancel_idle_holders(env: Environment, found: list[Holder], after: float) -> list[Cancelled]:
    """Terminate holders idle in a transaction for more than ``after`` seconds (by their
    own state_change). Never a session running a query, never a superuser's; a holder
    whose state this role cannot see is left alone and named."""
    from sqlalchemy.exc import DBAPIError

    outcome = []
    for holder in found:
        if holder.superuser or holder.state is None or holder.state_age is None:
            if holder.state is None and not holder.superuser:
                outcome.append(
                    Cancelled(
                        holder.pid,
                        holder.role,
                        0.0,
                        False,
                        "its state is hidden from this role (GRANT pg_read_all_stats): waited",
                    )
                )
            continue
        if not holder.state.startswith("idle in transaction") or holder.state_age <= after:
            continue
        try:
            with connect(env, role="watch", autocommit=True) as connection:
                row = connection.exec_driver_sql(
                    "SELECT pg_terminate_backend(a.pid) FROM pg_stat_activity a "
                    "WHERE a.pid = %(pid)s AND a.state LIKE 'idle in transaction%%' "
                    "AND now() - a.state_change > make_interval(secs => %(after)s)",
                    {"pid": holder.pid, "after": after},
                ).fetchone()
            done, why = bool(row and row[0]), "idle in transaction, terminated"
        except DBAPIError:
            done, why = False, "not allowed (GRANT pg_signal_backend): waited"
        outcome.append(Cancelled(holder.pid, holder.role, holder.state_age, done, why))
    return outcome


def wait_until_released(
    env: Environment,
    wait: Wait,
    deadline: float,
    tick: Callable[[], None] | None = None,
    every: float = 0.5,
) -> bool:
    """Poll ``pg_locks`` until none of the pids ahead holds a lock on the relation, or the
    deadline (``time.monotonic()``) passes; ``tick`` runs every ``every`` seconds meanwhile.
    Enqueues nothing. True when released."""
    next_tick = time.monotonic()
    with connect(env, role="watch", autocommit=True) as connection:
        params = {"relation": wait.relation, "pids": list(wait.pids)}
        while True:
            row = connection.exec_driver_sql(_STILL_HELD_SQL, params).fetchone()
            if not (row and row[0]):
                return True
            now = time.monotonic()
            if now >= deadline:
                return False
            if tick is not None and now >= next_tick:
                tick()
                next_tick = now + every
            time.sleep(SAMPLE_INTERVAL)


def jitter(lock_timeout: float) -> float:
    """A short random pause before a retry, so runners released together do not collide."""
    return random.uniform(0, max(0.01, lock_timeout / 4))  # noqa: S311 - not cryptographic


@contextmanager
def watching(env: Environment, pid: int | None) -> Iterator[Watcher | None]:
    if pid is None:
        yield None
        return
    with Watcher(env, pid) as watcher:
        yield watcher
