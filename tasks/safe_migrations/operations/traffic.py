"""The application's load during a rehearsal: ``invoke rehearse --traffic N``.

N synthetic clients, each on its own connection to the copy, loop over the tables the
pending revisions touch (named in their offline SQL): a point read, then a single-row
write (``UPDATE ... SET c = c`` of one row: the ROW EXCLUSIVE lock an application's
write takes), timing each. With ``rehearsal.long_reader_seconds`` one more client holds
a read transaction open that long, as a report query would. Each wait is laid against
the revision whose window it began in, so the report can say what each revision would
have cost the application; the verdict fails past ``policy.max_app_wait_ms``. The
clients are bounded in number (MAX_CLIENTS) and time (``limit`` seconds) and stop by
themselves.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from safe_migrations.core.config import Environment

MAX_CLIENTS = 32
PAUSE = 0.005  # between a client's operations: a busy application, not a flood
STATEMENT_LIMIT_MS = 30_000  # no single operation waits longer than this

_TOUCHED = re.compile(
    r"\b(?:ALTER\s+TABLE(?:\s+ONLY)?(?:\s+IF\s+EXISTS)?|INDEX(?:\s+CONCURRENTLY)?\s+\S+\s+ON(?:\s+ONLY)?"
    r"|UPDATE|INSERT\s+INTO|DELETE\s+FROM|LOCK\s+TABLE|TRUNCATE(?:\s+TABLE)?|REFERENCES)\s+"
    r'((?:"[^"]+"|\w+)(?:\.(?:"[^"]+"|\w+))?)',
    re.IGNORECASE,
)


def touched_tables(sql: str) -> list[str]:
    """Tables the SQL changes, locks or references, as written (schema-qualified or not)."""
    found = dict.fromkeys(m.group(1).replace('"', "") for m in _TOUCHED.finditer(sql))
    return [name for name in found if name.lower() != "alembic_version"]


@dataclass(frozen=True)
class Wait:
    started: float
    seconds: float
    kind: str  # read, write, long read
    table: str
    error: str | None = None


@dataclass
class Traffic:
    """The clients against ``env`` (the copy); ``start`` then ``stop`` for their waits."""

    env: Environment
    tables: list[str]
    clients: int
    limit: float = 600.0
    long_reader_seconds: float | None = None
    waits: list[Wait] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        deadline = time.monotonic() + self.limit
        count = min(self.clients, MAX_CLIENTS) if self.tables else 0
        for index in range(count):
            self._spawn(self._client, index, deadline)
        if self.long_reader_seconds and self.tables:
            self._spawn(self._long_reader, 0, deadline)

    def stop(self) -> list[Wait]:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=STATEMENT_LIMIT_MS / 1000 + 5)
        return list(self.waits)

    def _spawn(self, target: Any, index: int, deadline: float) -> None:
        thread = threading.Thread(target=target, args=(index, deadline), daemon=True)
        thread.start()
        self._threads.append(thread)

    def _connection(self) -> Any:
        from safe_migrations.core.database import make_engine

        engine = make_engine(
            self.env, role="traffic", statement_timeout=STATEMENT_LIMIT_MS / 1000, autocommit=True
        )
        return engine.connect()

    def _client(self, index: int, deadline: float) -> None:
        from sqlalchemy import text

        with self._connection() as connection:
            turn = index
            while not self._stop.is_set() and time.monotonic() < deadline:
                table = self.tables[turn % len(self.tables)]
                turn += 1
                quoted = _quoted(table)
                self._timed(connection, "read", table, text(f"SELECT * FROM {quoted} LIMIT 1"))
                column = _first_column(connection, table)
                if column is not None:
                    write = (
                        f'UPDATE {quoted} SET "{column}" = "{column}" '
                        f"WHERE ctid = (SELECT ctid FROM {quoted} LIMIT 1)"
                    )
                    self._timed(connection, "write", table, text(write))
                time.sleep(PAUSE)

    def _long_reader(self, _index: int, deadline: float) -> None:
        from sqlalchemy import text

        seconds = float(self.long_reader_seconds or 0)
        with self._connection() as connection:
            while not self._stop.is_set() and time.monotonic() < deadline:
                started = time.perf_counter()
                error = None
                try:
                    with connection.begin():
                        for table in self.tables:
                            connection.execute(text(f"SELECT count(*) FROM {_quoted(table)}"))
                        self._stop.wait(seconds)
                except Exception as exc:  # noqa: BLE001 - an application error, recorded
                    error = type(exc).__name__
                self._record(Wait(started, time.perf_counter() - started, "long read", "*", error))

    def _timed(self, connection: Any, kind: str, table: str, statement: Any) -> None:
        started = time.perf_counter()
        error = None
        try:
            connection.execute(statement)
        except Exception as exc:  # noqa: BLE001 - a table a revision changed: recorded
            error = type(getattr(exc, "orig", exc)).__name__
        self._record(Wait(started, time.perf_counter() - started, kind, table, error))

    def _record(self, wait: Wait) -> None:
        with self._lock:
            self.waits.append(wait)


def _quoted(table: str) -> str:
    """``schema.table`` or ``table``, as the offline SQL named it, quoted."""
    from safe_migrations.engines.pgsafe import qualified

    schema, _, name = table.rpartition(".")
    return qualified(schema or None, name)


def _first_column(connection: Any, table: str) -> str | None:
    """A column to write to itself (read each time: a revision may rename it)."""
    from sqlalchemy import text

    try:
        return connection.execute(
            text(
                "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(:t) "
                "AND attnum > 0 AND NOT attisdropped AND attgenerated = '' ORDER BY attnum LIMIT 1"
            ),
            {"t": _quoted(table)},
        ).scalar()
    except Exception:  # noqa: BLE001 - the table is gone for now
        return None


def per_revision(waits: list[Wait], windows: list[Any]) -> dict[str, dict[str, Any]]:
    """Each revision's waits (those that began in its window, or after it and before the
    next one: its commit), as p50, p99 and worst in ms, with counts."""
    ordered = sorted(windows, key=lambda w: w.start)
    found: dict[str, list[Wait]] = {w.revision: [] for w in ordered}
    for wait in waits:
        owner = None
        for window in ordered:
            if window.start <= wait.started:
                owner = window.revision
        if owner is not None:
            found[owner].append(wait)
    return {revision: histogram(items) for revision, items in found.items()}


def histogram(waits: list[Wait]) -> dict[str, Any]:
    timed = sorted(w.seconds * 1000 for w in waits if w.error is None)

    def at(share: float) -> int:
        return round(timed[min(len(timed) - 1, int(share * len(timed)))]) if timed else 0

    return {
        "operations": len(waits),
        "errors": sum(1 for w in waits if w.error),
        "p50_ms": at(0.5),
        "p99_ms": at(0.99),
        "worst_ms": round(timed[-1]) if timed else 0,
    }
