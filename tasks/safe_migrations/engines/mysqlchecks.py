"""What health sees on MySQL and MariaDB: an earlier run still executing, a revision
left half done, and the sessions (long transactions, metadata-lock holders) that would
make DDL wait."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from safe_migrations.core.results import StepResult, timed

if TYPE_CHECKING:
    from safe_migrations.core.config import Environment


def check_mysql_sessions(env: Environment, connection: Any) -> list[StepResult]:
    """Long transactions (InnoDB) and, where performance_schema records them, metadata-lock
    holders: either makes DDL wait, and traffic queue behind that DDL.

    Kept long: one result per visibility case (transactions and metadata locks, each
    seen or hidden), worded together so the cases read as one table."""
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
    from safe_migrations.engines.mysqljournal import in_progress
    from safe_migrations.pipeline.partial import describe, unresolved

    with timed() as clock:
        found = [row for row in unresolved(connection) if not in_progress(connection, row)]
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
