"""Proof of rehearsal: one row per rehearsal in a small table the tool owns, in the
environment's database (as ``alembic_version`` is Alembic's), so a fresh CI runner can
tell whether `migrate` may run where ``policy.require_rehearsal_hours`` is set.

On PostgreSQL the table is ``safe_migrations.rehearsals``, in a schema of its own that
autogenerate never compares; on SQLite it is ``safe_migrations_rehearsals``. A row
names the range (from, to) and a digest of the scripts that would run (env.py and each
revision file of the range), so editing a revision file invalidates its proof.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from safe_migrations.alembic_api import Project, Revision
from safe_migrations.config import Environment
from safe_migrations.database import connect
from safe_migrations.errors import BlockedError, first_line

SCHEMA = "safe_migrations"
TABLE = "rehearsals"
SQLITE_TABLE = "safe_migrations_rehearsals"
TOOL_TABLES = frozenset({SQLITE_TABLE, "safe_migrations_partial"})  # drift checks skip them


def scripts_digest(project: Project, path: list[Revision]) -> str:
    """sha256 of env.py and the files of the revisions in ``path``, in order."""
    scripts = project.scripts()
    digest = hashlib.sha256()
    digest.update(Path(scripts.dir, "env.py").read_bytes())
    for revision in path:
        script = scripts.get_revision(revision.revision)
        assert script is not None and script.path is not None
        digest.update(revision.revision.encode() + b"\0" + Path(script.path).read_bytes())
    return digest.hexdigest()


def where(env: Environment) -> str:
    return SQLITE_TABLE if (env.is_sqlite or env.is_mysql) else f"{SCHEMA}.{TABLE}"


def _table(env: Environment) -> Any:
    import sqlalchemy as sa

    metadata = sa.MetaData()
    return sa.Table(
        SQLITE_TABLE if (env.is_sqlite or env.is_mysql) else TABLE,
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("environment", sa.String(200), nullable=False),
        sa.Column("from_revision", sa.String(200), nullable=False),
        sa.Column("to_revision", sa.String(200), nullable=False),
        sa.Column("scripts_sha256", sa.String(64), nullable=False),
        sa.Column("passed", sa.Boolean, nullable=False),
        sa.Column("report", sa.String(500), nullable=False),
        schema=None if (env.is_sqlite or env.is_mysql) else SCHEMA,
    )


def record_proof(
    env: Environment,
    start: str,
    target: str,
    digest: str,
    passed: bool,
    report: str,
    now: datetime | None = None,
) -> str | None:
    """Write the row; returns None, or the sentence saying why it could not be written."""
    from sqlalchemy.exc import DBAPIError

    from safe_migrations.errors import ToolError

    table = _table(env)
    try:
        with connect(
            env, role="rehearse", lock_timeout=env.settings.migration.lock_timeout or None
        ) as connection:
            if not (env.is_sqlite or env.is_mysql):
                connection.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
            table.create(connection, checkfirst=True)
            connection.execute(
                table.insert().values(
                    finished_at=now or datetime.now(UTC),
                    environment=env.name,
                    from_revision=start,
                    to_revision=target,
                    scripts_sha256=digest,
                    passed=passed,
                    report=report,
                )
            )
            connection.commit()
    except (DBAPIError, ToolError) as exc:
        return (
            f"the proof of this rehearsal could not be written to {where(env)} "
            f"({first_line(exc)}); "
            f"`migrate` where policy.require_rehearsal_hours is set will not see it (on "
            f"PostgreSQL: CREATE SCHEMA {SCHEMA} AUTHORIZATION <the migration role>)"
        )
    return None


def latest_proof(env: Environment, start: str, target: str, digest: str) -> dict[str, Any] | None:
    """The newest rehearsal of this range with these scripts, or None (no table: none)."""
    import sqlalchemy as sa

    table = _table(env)
    with connect(env, role="status") as connection:
        if not sa.inspect(connection).has_table(table.name, schema=table.schema):
            return None
        row = (
            connection.execute(
                sa.select(table)
                .where(
                    table.c.environment == env.name,
                    table.c.from_revision == start,
                    table.c.to_revision == target,
                    table.c.scripts_sha256 == digest,
                )
                .order_by(table.c.finished_at.desc(), table.c.id.desc())
                .limit(1)
            )
            .mappings()
            .first()
        )
        connection.rollback()
    return dict(row) if row is not None else None


def require_rehearsal(
    env: Environment,
    project: Project,
    start: str,
    target: str,
    path: list[Revision],
    now: datetime | None = None,
) -> dict[str, Any] | None:
    """The proof that a rehearsal of this range and scripts passed recently (None when the
    policy is off); BlockedError (exit 3) when there is none."""
    hours = env.settings.policy.require_rehearsal_hours
    if hours is None or not path:
        return None
    found = latest_proof(env, start, target, scripts_digest(project, path))
    how = (
        f"run `invoke rehearse --env {env.name} --revision {target}` first "
        f"(policy.require_rehearsal_hours is {hours:g} in {env.path.name})"
    )
    if found is None:
        raise BlockedError(
            f"No rehearsal of {start} -> {target} with these revision scripts is on record "
            f"for {env.name}; {how}."
        )
    finished = found["finished_at"]
    if finished.tzinfo is None:  # SQLite keeps no zone: written in UTC
        finished = finished.replace(tzinfo=UTC)
    age = (now or datetime.now(UTC)) - finished
    if not found["passed"]:
        raise BlockedError(
            f"The last rehearsal of {start} -> {target} on {env.name} failed "
            f"(report {found['report']}); fix the revisions, then {how}."
        )
    if age > timedelta(hours=hours):
        raise BlockedError(
            f"The last passing rehearsal of {start} -> {target} on {env.name} is "
            f"{age.total_seconds() / 3600:.1f} h old, older than {hours:g} h; {how}."
        )
    return found
