"""What a rehearsal sees of each revision (PostgreSQL): locks, rewrites, plain index builds.

Two sources, both beside the migration, never in its way. A second connection samples
``pg_locks`` for the migration's backend every SAMPLE_INTERVAL (holds shorter than
that may be missed, and the report says so). Inside each revision's transaction, just
before it commits, the migration's own connection lists the locks the revision holds
(every one it took, however short, since relation locks last until commit) and reads
the catalog, so a changed ``relfilenode`` shows a rewritten table or index. The
analysis below is pure: samples and snapshots in, findings per revision out.

On engines that do not observe locks (their ``rehearsal_limits`` is set) it only times
each revision. Kept long: the sampler, the snapshots and the pure analysis of both are
one model of PostgreSQL's locks; the analysis is pure and tested on its own.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from safe_migrations.core.config import Environment
from safe_migrations.core.database import connect
from safe_migrations.core.sampling import SAMPLE_INTERVAL

# Modes that stop the application: reads and writes, or writes only.
BLOCKS_ALL = frozenset({"AccessExclusiveLock"})
BLOCKS_WRITES = frozenset({"ShareLock", "ShareRowExclusiveLock", "ExclusiveLock"})
PLAIN_INDEX_BUILD = "ShareLock"  # CREATE INDEX; CONCURRENTLY takes ShareUpdateExclusiveLock
FIRST_USER_OID = 16384  # below it: the system catalogs

_SAMPLE_SQL = f"""
SELECT relation::bigint, mode FROM pg_locks
WHERE pid = %(pid)s AND granted AND locktype = 'relation' AND relation >= {FIRST_USER_OID}
  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""
_OWN_LOCKS_SQL = f"""
SELECT relation::bigint, mode FROM pg_locks
WHERE pid = pg_backend_pid() AND granted AND locktype = 'relation'
  AND relation >= {FIRST_USER_OID}
"""
# Rows this transaction wrote, per table (the revision's own: read inside it).
_ROWS_SQL = """
SELECT relid::bigint, n_tup_ins, n_tup_upd + n_tup_del FROM pg_stat_xact_user_tables
WHERE n_tup_ins + n_tup_upd + n_tup_del > 0
"""
_CATALOG_SQL = """
SELECT c.oid::bigint, c.oid::regclass::text, c.relkind::text, c.relfilenode::bigint,
       pg_relation_size(c.oid), c.reltuples::bigint, i.indrelid::bigint
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_index i ON i.indexrelid = c.oid
WHERE c.relkind IN ('r', 'p', 'm', 'i')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg_toast%%' AND n.nspname NOT LIKE 'pg_temp%%'
"""


@dataclass(frozen=True)
class Relation:
    name: str
    kind: str  # r table, p partitioned table, m materialized view, i index
    filenode: int
    size: int  # bytes
    rows: int  # the planner's estimate (-1: never analysed)
    parent: int | None  # an index's table


Catalog = dict[int, Relation]


def read_catalog(connection: Any) -> Catalog:
    rows = connection.exec_driver_sql(_CATALOG_SQL).fetchall()
    return {int(r[0]): Relation(r[1], r[2], int(r[3]), int(r[4]), int(r[5]), r[6]) for r in rows}


def own_locks(connection: Any) -> frozenset[tuple[int, str]]:
    return frozenset((int(r[0]), r[1]) for r in connection.exec_driver_sql(_OWN_LOCKS_SQL))


def rows_written(connection: Any) -> dict[int, tuple[int, int]]:
    """Per table: (rows inserted, rows updated or deleted) by the open transaction."""
    rows = connection.exec_driver_sql(_ROWS_SQL).fetchall()
    return {int(r[0]): (int(r[1]), int(r[2])) for r in rows}


def _raw_rows_written(connection: Any) -> dict[int, tuple[int, int]]:
    """rows_written on the driver's own cursor: read from inside a "begin" event, where a
    statement through SQLAlchemy would start what is being begun."""
    cursor = connection.connection.dbapi_connection.cursor()
    try:
        cursor.execute(_ROWS_SQL)
        return {int(r[0]): (int(r[1]), int(r[2])) for r in cursor.fetchall()}
    finally:
        cursor.close()


def _since(
    now: dict[int, tuple[int, int]], before: dict[int, tuple[int, int]]
) -> dict[int, tuple[int, int]]:
    """The revision's own writes: the counters now less those when it began."""
    found = {}
    for oid, (inserted, changed) in now.items():
        was = before.get(oid, (0, 0))
        own = (inserted - was[0], changed - was[1])
        if own != (0, 0):
            found[oid] = own
    return found


def mode_name(mode: str) -> str:
    """'AccessExclusiveLock' -> 'ACCESS EXCLUSIVE', as PostgreSQL's documentation names it."""
    return " ".join(re.findall(r"[A-Z][a-z]*", mode.removesuffix("Lock"))).upper()


@dataclass(frozen=True)
class Window:
    """One revision's stretch of time, with the catalog before and after it."""

    revision: str
    start: float
    end: float
    before: Catalog
    after: Catalog
    held_at_end: frozenset[tuple[int, str]]
    rows: dict[int, tuple[int, int]] = field(default_factory=dict)
    error: str | None = None
    statement: str | None = None


class Sampler:
    """Samples the migration backend's granted relation locks on a connection of its own."""

    def __init__(self, env: Environment, interval: float = SAMPLE_INTERVAL) -> None:
        self.env = env
        self.interval = interval
        self.pid: int | None = None
        self.samples: list[tuple[int, float, int, str]] = []  # tick, time, relation, mode
        self.ticks = 0
        self.started = 0.0
        self.stopped = 0.0
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rehearsal-sampler", daemon=True)

    def start(self) -> None:
        self.started = time.perf_counter()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self.stopped = time.perf_counter()

    @property
    def per_second(self) -> float:
        elapsed = (self.stopped or time.perf_counter()) - self.started
        return round(self.ticks / elapsed, 1) if elapsed > 0 else 0.0

    def _run(self) -> None:
        from sqlalchemy.exc import DBAPIError

        from safe_migrations.core.errors import UnreachableError, first_line

        try:
            with connect(self.env, role="observe", autocommit=True) as connection:
                sql = connection.exec_driver_sql
                next_at = time.perf_counter()
                while not self._stop.wait(max(0.0, next_at - time.perf_counter())):
                    next_at += self.interval
                    pid = self.pid
                    if pid is None:
                        continue
                    rows = sql(_SAMPLE_SQL, {"pid": pid}).fetchall()
                    now = time.perf_counter()
                    self.ticks += 1
                    self.samples.extend((self.ticks, now, int(r[0]), r[1]) for r in rows)
        except (DBAPIError, UnreachableError) as exc:
            self.error = first_line(exc)


@dataclass
class RevisionObserver:
    """The upgrade's Observer (upgrade.py): snapshots per revision, a sampler beside it."""

    env: Environment
    sampler: Sampler | None = None
    windows: list[Window] = field(default_factory=list)
    _before: Catalog = field(default_factory=dict)
    _start: float = 0.0
    _next: bool = False  # the next transaction to begin is the next revision's
    # The write counters when the revision's transaction began: PostgreSQL 15 keeps a
    # backend's unflushed counts in pg_stat_xact_user_tables across its transactions.
    _counted: dict[int, tuple[int, int]] = field(default_factory=dict)

    @property
    def observed(self) -> bool:
        """Locks and the catalog are read on this engine (else revisions are timed)."""
        from safe_migrations.engines import engine_for

        return engine_for(self.env.dialect).rehearsal_limits is None

    def begin(self, connection: Any, pid: int | None) -> None:
        from sqlalchemy import event

        if pid is not None:  # SQLite: timed only
            self._before = read_catalog(connection)
        self._start, self._next = time.perf_counter(), True
        event.listen(connection, "begin", self._began)
        if pid is None:
            return
        if self.sampler is None:
            self.sampler = Sampler(self.env)
            self.sampler.start()
        self.sampler.pid = pid

    def applied(self, connection: Any, revision: str) -> None:
        now = time.perf_counter()
        held: frozenset[tuple[int, str]] = frozenset()
        after: Catalog = {}
        rows: dict[int, tuple[int, int]] = {}
        if self.observed:  # elsewhere timed only
            held, after = own_locks(connection), read_catalog(connection)
            rows = _since(rows_written(connection), self._counted)
        self.windows.append(Window(revision, self._start, now, self._before, after, held, rows))
        self._before, self._start, self._next = after, time.perf_counter(), True

    def _began(self, _connection: Any) -> None:
        """A revision's window starts when its transaction begins, after the previous one
        committed (so a lock seen during that commit is the previous revision's); the
        transactions an autocommit block opens inside a revision do not move it."""
        if self._next:
            self._start, self._next = time.perf_counter(), False
            if self.observed:  # the baseline, inside the transaction (no flush until it ends)
                self._counted = _raw_rows_written(_connection)

    def failed(self, revision: str, error: str, statement: str | None) -> None:
        """The revision that failed: rolled back, so its catalog is the one before it."""
        before = self._before
        self.windows.append(
            Window(
                revision,
                self._start,
                time.perf_counter(),
                before,
                before,
                frozenset(),
                {},
                error,
                statement,
            )
        )

    def stop(self) -> None:
        if self.sampler is not None:
            self.sampler.stop()


@dataclass(frozen=True)
class Hold:
    relation: str
    mode: str  # as PostgreSQL's documentation names it: ACCESS EXCLUSIVE, SHARE, ...
    held_ms: int | None  # None: held for less than one sampling interval (never sampled)

    @property
    def blocks_reads(self) -> bool:
        return self.mode == "ACCESS EXCLUSIVE"

    @property
    def blocks_writes(self) -> bool:
        return self.mode in {mode_name(m) for m in BLOCKS_ALL | BLOCKS_WRITES}


@dataclass(frozen=True)
class Rewrite:
    relation: str
    kind: str  # table or index
    size_bytes: int


@dataclass(frozen=True)
class PlainIndex:
    index: str
    table: str
    table_bytes: int


@dataclass(frozen=True)
class RowsWritten:
    """Rows a revision wrote in a table that existed before it: updated or deleted rows
    stay locked against other writers until the revision commits."""

    relation: str
    inserted: int
    changed: int  # updated or deleted


@dataclass(frozen=True)
class Findings:
    revision: str
    duration_ms: int
    locks: tuple[Hold, ...]
    rewrites: tuple[Rewrite, ...]
    plain_indexes: tuple[PlainIndex, ...]
    rows_written: tuple[RowsWritten, ...] = ()
    error: str | None = None
    statement: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("locks", "rewrites", "plain_indexes", "rows_written"):
            data[key] = list(data[key])
        return data

    def longest(self, modes: frozenset[str]) -> Hold | None:
        found = [h for h in self.locks if h.mode in {mode_name(m) for m in modes}]
        return max(found, key=lambda h: h.held_ms or 0, default=None)


def analyse(
    windows: list[Window],
    samples: list[tuple[int, float, int, str]],
    ignore: frozenset[str] = frozenset({"alembic_version"}),
) -> list[Findings]:
    """Findings per revision. Each sample belongs to the revision whose window (from its
    transaction's start to the next one's) it was taken in, and a run of consecutive
    samples of one lock on one relation within a window is that revision's hold: when
    consecutive revisions lock the same table, the hold is split at each revision's
    commit, never charged whole to the first. A lock the revision still held at its end
    lasted until its commit. Only relations that existed before the revision count:
    nobody else can be waiting for a table the revision created."""
    found = []
    for number, window in enumerate(windows):
        counted = _counted(window.before, ignore)
        later = windows[number + 1].start if number + 1 < len(windows) else float("inf")
        holds: dict[tuple[int, str], float | None] = {}
        for (relation, mode), first, last in _runs(
            [sample for sample in samples if window.start <= sample[1] < later]
        ):
            held_at_end = (relation, mode) in window.held_at_end
            end = max(last, window.end) if held_at_end else last
            holds[(relation, mode)] = max(holds.get((relation, mode)) or 0.0, end - first)
        for key in window.held_at_end:
            holds.setdefault(key, None)
        locks = tuple(
            sorted(
                (
                    Hold(window.before[relation].name, mode_name(mode), _ms(seconds))
                    for (relation, mode), seconds in holds.items()
                    if relation in counted
                ),
                key=lambda h: (-(h.held_ms or 0), h.relation, h.mode),
            )
        )
        found.append(
            Findings(
                window.revision,
                _ms(window.end - window.start) or 0,
                locks,
                _rewrites(window, ignore),
                _plain_indexes(window, holds),
                tuple(
                    RowsWritten(counted[oid].name, inserted, changed)
                    for oid, (inserted, changed) in sorted(window.rows.items())
                    if oid in counted
                ),
                window.error,
                window.statement,
            )
        )
    return found


def _counted(catalog: Catalog, ignore: frozenset[str]) -> dict[int, Relation]:
    """Tables (and materialized views) whose locks matter: an index's follow its table's,
    and the version table is the tool's own."""
    return {
        oid: relation
        for oid, relation in catalog.items()
        if relation.kind != "i" and relation.name not in ignore
    }


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds * 1000)


def _runs(
    samples: list[tuple[int, float, int, str]],
) -> list[tuple[tuple[int, str], float, float]]:
    """Consecutive ticks of one (relation, mode) as (key, first seen, last seen)."""
    by_key: dict[tuple[int, str], list[tuple[int, float]]] = {}
    for tick, moment, relation, mode in samples:
        by_key.setdefault((relation, mode), []).append((tick, moment))
    runs = []
    for key, seen in by_key.items():
        seen.sort()
        first, (last_tick, last) = seen[0][1], seen[0]
        for tick, moment in seen[1:]:
            if tick != last_tick + 1:
                runs.append((key, first, last))
                first = moment
            last_tick, last = tick, moment
        runs.append((key, first, last))
    return runs


def _rewrites(window: Window, ignore: frozenset[str]) -> tuple[Rewrite, ...]:
    if window.error:
        return ()
    found = []
    for oid, before in window.before.items():
        after = window.after.get(oid)
        if after is None or after.filenode == before.filenode or before.filenode == 0:
            continue
        parent = window.before.get(before.parent) if before.parent is not None else None
        if before.name in ignore or (parent is not None and parent.name in ignore):
            continue
        found.append(Rewrite(after.name, "index" if after.kind == "i" else "table", after.size))
    return tuple(sorted(found, key=lambda r: (r.kind != "table", -r.size_bytes, r.relation)))


def _plain_indexes(
    window: Window, holds: dict[tuple[int, str], float | None]
) -> tuple[PlainIndex, ...]:
    """New indexes on tables that held rows, built while the table was locked in SHARE."""
    found = []
    for oid, index in window.after.items():
        if index.kind != "i" or oid in window.before or index.parent is None:
            continue
        table = window.before.get(index.parent)
        if table is None or table.size == 0:
            continue
        if (index.parent, PLAIN_INDEX_BUILD) in holds:
            found.append(PlainIndex(index.name, table.name, table.size))
    return tuple(sorted(found, key=lambda p: p.index))
