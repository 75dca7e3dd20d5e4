"""The health step: can the migration start safely right now?

Each check is a function returning a StepResult. Blocking failures stop a run
(exit 3); low disk is a warning; a missing ``alembic_version`` means "first
migration", which is fine.
"""

from __future__ import annotations

import shutil
import threading
from typing import Any

from safe_migrations.core.config import Environment
from safe_migrations.core.database import connect, make_engine
from safe_migrations.core.errors import ConfigError, first_line
from safe_migrations.core.results import StepResult, timed
from safe_migrations.core.revisions import resolve_revision
from safe_migrations.project.alembic_api import Project, current_revision, heads

MB = 1024 * 1024
AUTHENTICATION_FAILED = {"28P01", "28000"}  # SQLSTATE: invalid password / authorization
MYSQL_ACCESS_DENIED = 1045
VERSION_SQL = {
    "sqlite": "SELECT sqlite_version()",
    "mysql": "SELECT VERSION()",
    "postgresql": "SHOW server_version",
}


def env_engine(env: Environment) -> str:
    """sqlite, mysql (MySQL or MariaDB) or postgresql."""
    return "sqlite" if env.is_sqlite else "mysql" if env.is_mysql else "postgresql"


def check_connection(env: Environment) -> StepResult:
    """Connect within ``database.connect_timeout``; a silent host fails at the deadline."""
    timeout = env.settings.database.connect_timeout
    outcome: dict[str, Any] = {}

    def attempt() -> None:
        from sqlalchemy import text

        engine = make_engine(env, role="health")
        try:
            with engine.connect() as connection:
                outcome["version"] = connection.execute(text(VERSION_SQL[env_engine(env)])).scalar()
        except Exception as exc:  # reported below, never swallowed
            outcome["error"] = exc
        finally:
            engine.dispose()

    with timed() as clock:
        worker = threading.Thread(target=attempt, daemon=True)
        worker.start()
        worker.join(timeout)
    if worker.is_alive():
        return StepResult(
            "connection",
            False,
            f"no answer from {env.masked_url} within {timeout:g}s "
            "(host unreachable or not a database server)",
            duration=clock.seconds,
            details={"timeout": timeout},
        )
    if "error" in outcome:
        return StepResult(
            "connection", False, connection_message(env, outcome["error"]), duration=clock.seconds
        )
    return StepResult(
        "connection",
        True,
        f"connected, server {outcome['version']}",
        duration=clock.seconds,
        details={"server_version": outcome["version"]},
    )


def connection_message(env: Environment, exc: BaseException) -> str:
    """One sentence for a failed connection; the wording only, never the exit code."""
    orig = getattr(exc, "orig", None)
    denied = env.is_mysql and getattr(orig, "args", (None,))[:1] == (MYSQL_ACCESS_DENIED,)
    if denied or getattr(orig, "pgcode", None) in AUTHENTICATION_FAILED:
        return f"password rejected for {env.masked_url}; check DB_USER and DB_PASSWORD"
    text = str(getattr(exc, "orig", None) or exc).strip()
    first = first_line(exc)
    if "refused" in text.lower():
        return f"connection refused by {env.masked_url} (is the server running on that port?)"
    if "timeout" in text.lower() or "timed out" in text.lower():
        return f"no answer from {env.masked_url} within the connect timeout"
    return f"cannot connect to {env.masked_url}: {first}"


def database_size(env: Environment, connection: Any) -> int:
    from safe_migrations.engines import engine_for

    return engine_for(env.dialect).database_size(env, connection)


def check_disk(env: Environment, db_size: int | None) -> StepResult:
    """Free space where backups go, against the configured minimum and the database size."""
    with timed() as clock:
        folder = env.backup_dir
        existing = folder
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        free = shutil.disk_usage(existing).free
        need = max(env.settings.health.min_free_disk_mb * MB, db_size or 0)
    ok = free >= need
    message = f"{free / MB:,.0f} MB free in {folder}, need {need / MB:,.0f} MB" + (
        "" if ok else " (a backup may not fit)"
    )
    return StepResult(
        "disk",
        ok,
        message,
        severity="warning",
        duration=clock.seconds,
        details={"free_bytes": free, "needed_bytes": need, "database_bytes": db_size},
    )


def check_store(env: Environment) -> StepResult:
    """With backups in S3: credentials present, the bucket reachable and writable (a small
    probe object, written and removed) before the backup step relies on it."""
    from botocore.exceptions import BotoCoreError, ClientError

    from safe_migrations.core.errors import ToolError
    from safe_migrations.stores.s3 import store_for

    storage = env.settings.backup.storage
    where = f"s3://{storage.bucket}/{storage.prefix}"
    with timed() as clock:
        try:
            store_for(env).probe()
            ok, message = True, f"{where} takes writes"
        except ToolError as exc:
            ok, message = False, exc.message
        except (BotoCoreError, ClientError) as exc:
            ok, message = False, f"cannot write to {where}: {first_line(exc)}"
    return StepResult("backup_store", ok, message, duration=clock.seconds)


def check_report_folder(env: Environment) -> StepResult:
    """The report must be writable before anything changes: a run must be able to say
    what it did."""
    from safe_migrations.core.files import probe_writable

    with timed() as clock:
        problem = probe_writable(env.report_dir)
    return StepResult(
        "reports",
        problem is None,
        f"{env.report_dir} is writable"
        if problem is None
        else f"cannot write reports to {env.report_dir} ({problem}); free space there or "
        "choose a writable reports.folder",
        duration=clock.seconds,
    )


def check_version_table(connection: Any, project: Project) -> StepResult:
    """Absent is a first migration; a revision the scripts do not know blocks the run."""
    from sqlalchemy import inspect

    with timed() as clock:
        present = inspect(connection).has_table("alembic_version")
        current = current_revision(connection) if present else None
        known = {s.revision for s in project.scripts().walk_revisions()}
        unknown = [r for r in (current or "").split(",") if r and r not in known]
    details = {"present": present, "current": current}
    if unknown:
        return StepResult(
            "alembic_version",
            False,
            f"the database is at {', '.join(unknown)}, which these scripts do not contain "
            "(deployed from newer code?); deploy the code that has it",
            duration=clock.seconds,
            details=details,
        )
    message = (
        f"alembic_version present, at {current or 'base'}"
        if present
        else "no alembic_version: first migration"
    )
    return StepResult(
        "alembic_version", True, message, severity="info", duration=clock.seconds, details=details
    )


def check_single_head(project: Project) -> StepResult:
    with timed() as clock:
        found = heads(project.scripts())
    ok = len(found) == 1
    message = (
        f"one head: {found[0]}"
        if ok
        else f"{len(found)} heads ({', '.join(found) or 'none'}); merge them with "
        "`alembic merge heads`"
        if found
        else "no revisions yet"
    )
    return StepResult("single_head", ok, message, duration=clock.seconds, details={"heads": found})


def check_target(project: Project, target: str, current: str | None = None) -> StepResult:
    with timed() as clock:
        try:
            resolved = resolve_revision(project.scripts(), target, current)
            ok, message = True, f"target {target} is {resolved or 'base'}"
        except ConfigError as exc:
            resolved, ok, message = None, False, exc.message
    return StepResult(
        "target",
        ok,
        message,
        duration=clock.seconds,
        details={"target": target, "resolved": resolved},
    )


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


def check_mysql_sessions(env: Environment, connection: Any) -> list[StepResult]:
    """Long transactions (InnoDB) and, where performance_schema records them, metadata-lock
    holders: either makes DDL wait, and traffic queue behind that DDL."""
    from safe_migrations.engines.mysqlserver import PROCESS_GRANT, blocking_sessions

    age = env.settings.health.max_transaction_age
    with timed() as clock:
        found = blocking_sessions(connection, age)
    old, locks = found["transactions"], found["metadata_locks"]
    results = []
    if old or locks:
        described = "; ".join(
            f"connection {t['pid']} ({t['user'] or '?'} from {t['host'] or '?'}, "
            f"{(t['command'] or 'hidden').lower()}, transaction {t['transaction_age']:g}s, "
            f"{t['rows_locked']} row(s) locked)"
            for t in old[:5]
        )
        held = "; ".join(
            f"connection {m['pid']} holds {m['lock']} on {m['table']}" for m in locks[:5]
        )
        results.append(
            StepResult(
                "blocking_sessions",
                False,
                f"{len(old) + len(locks)} session(s) would block DDL: "
                + "; ".join(part for part in (described, held) if part),
                duration=clock.seconds,
                details=found,
            )
        )
    else:
        results.append(
            StepResult(
                "blocking_sessions",
                True,
                f"no transaction open longer than {age:g}s"
                + (", no metadata lock held" if found["metadata_locks_visible"] else ""),
                duration=clock.seconds,
                details=found,
            )
        )
    if not found["transactions_visible"]:
        results[0] = StepResult(
            "blocking_sessions",
            True,
            "open transactions cannot be seen: the role lacks the PROCESS privilege, so a "
            "long transaction that would make DDL wait goes unnoticed here; the migration's "
            f"lock_wait_timeout still bounds the wait ({PROCESS_GRANT})",
            duration=clock.seconds,
            severity="warning",
        )
    if not found["metadata_locks_visible"]:
        results.append(
            StepResult(
                "metadata_locks",
                False,
                "metadata-lock holders cannot be seen: performance_schema is off (MariaDB's "
                "default) or not readable, so a session holding a table open without a "
                "transaction goes unnoticed here; the migration's lock_wait_timeout still "
                "bounds the wait (performance_schema=ON with the mdl instrument shows them)",
                severity="warning",
            )
        )
    return results


def check_earlier_run(connection: Any) -> StepResult:
    """MySQL goes on executing a killed runner's statement; nothing may start beside it."""
    from safe_migrations.engines.mysqlserver import earlier_run

    with timed() as clock:
        found = earlier_run(connection)
    if found is None:
        return StepResult(
            "earlier_run", True, "no earlier migration still executing", duration=clock.seconds
        )
    return StepResult("earlier_run", False, found, duration=clock.seconds)


def check_partly_applied(env: Environment, connection: Any) -> StepResult:
    """A revision (or restore) that MySQL left half done blocks until the user resolves it."""
    from safe_migrations.pipeline.partial import describe, unresolved

    with timed() as clock:
        found = unresolved(connection)
    if not found:
        return StepResult(
            "partly_applied", True, "no partly applied revision on record", duration=clock.seconds
        )
    return StepResult(
        "partly_applied",
        False,
        describe(found[0], env.name),
        duration=clock.seconds,
        details={"records": found},
    )


def run_health(
    env: Environment, project: Project, target: str = "head", backing_up: bool = True
) -> list[StepResult]:
    """All checks in order; a failed connection skips those that need the database.
    ``backing_up`` false (a run that takes no backup) skips the backup store's probe."""
    results = [check_connection(env)]
    db_size: int | None = None
    current: str | None = None
    if results[0].ok:
        with connect(env, role="health") as connection:
            if env.is_mysql:  # first: the catalog queries below would queue behind it
                results.append(check_earlier_run(connection))
                if not results[-1].ok:
                    return results
            db_size = database_size(env, connection)
            results.append(check_version_table(connection, project))
            current = results[-1].details["current"]
            if env.is_mysql:
                results.append(check_partly_applied(env, connection))
                if env.settings.health.check_blocking_sessions:
                    results += check_mysql_sessions(env, connection)
            elif not env.is_sqlite and env.settings.health.check_blocking_sessions:
                results += check_blocking_sessions(env, connection)
    if env.settings.backup.storage.type == "s3":
        if backing_up:
            results.append(check_store(env))
    else:
        results.append(check_disk(env, db_size))
    results.append(check_report_folder(env))
    results.append(check_single_head(project))
    results.append(check_target(project, target, current))
    if env.settings.health.lint and results[0].ok and results[-1].ok:
        from safe_migrations.project.lint import lint_pending

        results.append(lint_pending(project, current, results[-1].details["resolved"], env.dialect))
    return results


def blocking(results: list[StepResult]) -> list[StepResult]:
    return [r for r in results if r.blocks]
