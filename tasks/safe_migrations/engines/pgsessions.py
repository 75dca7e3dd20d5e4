"""What health sees on PostgreSQL: sessions that would block DDL, and those hidden
from this role (read from pg_locks and pg_stat_activity, never the query text)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from safe_migrations.core.results import StepResult, timed

if TYPE_CHECKING:
    from safe_migrations.core.config import Environment


# Built on pg_locks, which every role reads in full. pg_stat_activity shows another
# role's pid, user and application only (state, ages and backend type read NULL)
# unless the role has pg_read_all_stats; so a lock is found whoever holds it, and
# ages are used where they are visible. Query text is never read: it can carry secrets.
BLOCKERS_SQL = """
WITH here AS (SELECT oid FROM pg_database WHERE datname = current_database()),
held AS (
  SELECT l.pid,
         string_agg(DISTINCT l.mode || ' on ' || l.relation::regclass::text, ', ')
           FILTER (WHERE l.granted AND l.locktype = 'relation'
                   AND l.mode NOT IN ('AccessShareLock', 'RowShareLock', 'RowExclusiveLock'))
           AS strong_locks,
         bool_or(NOT l.granted) AS waiting,
         bool_or(l.locktype = 'relation') AS touches_tables
  FROM pg_locks l
  WHERE l.pid <> pg_backend_pid()
    AND (l.database = (SELECT oid FROM here) OR NOT l.granted)
  GROUP BY l.pid)
SELECT a.pid, a.usename, a.application_name, a.state, a.backend_type,
       a.state IS NULL AS hidden,
       EXTRACT(EPOCH FROM now() - a.xact_start) AS xact_age,
       h.strong_locks, coalesce(h.waiting, false) AS waiting,
       coalesce(h.touches_tables, false) AS touches_tables
FROM pg_stat_activity a LEFT JOIN held h ON h.pid = a.pid
WHERE a.datname = current_database()
  AND a.pid <> pg_backend_pid()
  AND a.usename IS NOT NULL  -- background workers (autovacuum) yield to DDL on their own
  AND coalesce(a.backend_type, 'client backend') = 'client backend'
  AND NOT (a.application_name LIKE 'alembic-invoke:%' AND a.usename = current_user)
ORDER BY a.xact_start NULLS LAST, a.pid
"""
SEES_ALL_SQL = (
    "SELECT rolsuper OR pg_has_role(current_user, 'pg_read_all_stats', 'USAGE') "
    "FROM pg_roles WHERE rolname = current_user"
)


def check_blocking_sessions(env: Environment, connection: Any) -> list[StepResult]:
    """Sessions holding locks stronger than row-level, waiting for locks, or keeping a
    transaction open too long; plus a warning when other roles' sessions are hidden."""
    from sqlalchemy import text

    age = env.settings.health.max_transaction_age
    with timed() as clock:
        rows = connection.execute(text(BLOCKERS_SQL)).mappings().all()
        sees_all = bool(connection.execute(text(SEES_ALL_SQL)).scalar())
    sessions = [
        {
            "pid": r["pid"],
            "user": r["usename"],
            "application": r["application_name"],
            "state": r["state"],
            "waiting_on_lock": bool(r["waiting"]),
            "transaction_age": None if r["xact_age"] is None else round(float(r["xact_age"]), 1),
            "strong_locks": r["strong_locks"],
            "details_hidden": bool(r["hidden"]),
        }
        for r in rows
    ]
    blockers = [
        s
        for s in sessions
        if s["strong_locks"]
        or s["waiting_on_lock"]
        or (s["transaction_age"] is not None and s["transaction_age"] > age)
    ]
    hidden = [r["pid"] for r in rows if r["hidden"] and r["touches_tables"]]
    results = [_blockers_result(blockers, clock.seconds)]
    if hidden and not sees_all:
        results.append(
            StepResult(
                "session_visibility",
                False,
                f"{len(hidden)} session(s) of other roles hold locks here (pids "
                f"{', '.join(map(str, hidden[:10]))}) but their state and transaction age are "
                "hidden from this role, so an old transaction among them cannot be seen; "
                "GRANT pg_read_all_stats (or pg_monitor) TO the migration role",
                severity="warning",
                details={"hidden_pids": hidden},
            )
        )
    return results


def _blockers_result(sessions: list[dict[str, Any]], seconds: float) -> StepResult:
    if not sessions:
        return StepResult(
            "blocking_sessions", True, "no session holds or waits for locks", duration=seconds
        )
    described = "; ".join(
        f"pid {s['pid']} ({s['user']}"
        + (f", {s['application']}" if s["application"] else "")
        + (f", {s['state']}" if s["state"] else ", state hidden")
        + (f", transaction {s['transaction_age']}s" if s["transaction_age"] is not None else "")
        + (f", holds {s['strong_locks']}" if s["strong_locks"] else "")
        + (", waiting on a lock" if s["waiting_on_lock"] else "")
        + ")"
        for s in sessions[:5]
    )
    return StepResult(
        "blocking_sessions",
        False,
        f"{len(sessions)} session(s) would block DDL: {described}",
        duration=seconds,
        details={"sessions": sessions},
    )
