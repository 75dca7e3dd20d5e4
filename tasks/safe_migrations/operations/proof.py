"""Proof of rehearsal: one row per rehearsal in a small table the tool owns, in the
environment's database (as ``alembic_version`` is Alembic's), so a fresh CI runner can
tell whether `migrate` may run where ``policy.require_rehearsal_hours`` is set.

On PostgreSQL the table is ``safe_migrations.rehearsals``, in a schema of its own that
autogenerate never compares; on SQLite it is ``safe_migrations_rehearsals``. A row
names the range (from, to) and a digest of the scripts that would run (env.py and each
revision file of the range), so editing a revision file invalidates its proof.

A proof is only as good as the table it sits in. Each row is signed (HMAC-SHA256 of
its fields) with the key in ``SAFE_MIGRATIONS_PROOF_KEY`` (a CI secret shared by the
rehearsing and the migrating job) or, without it, a private key file in the reports
folder (so a proof then counts on the machine that rehearsed): a row inserted by hand
does not count. The newest row by insertion decides, a row dated in the future is
refused, and on PostgreSQL a proof table (or schema) the migration role does not own
is refused, since whoever owns it could write a pass.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from safe_migrations.core.config import Environment
from safe_migrations.core.database import connect
from safe_migrations.core.errors import BlockedError, first_line
from safe_migrations.project.alembic_api import Project, Revision

SCHEMA = "safe_migrations"
TABLE = "rehearsals"
SQLITE_TABLE = "safe_migrations_rehearsals"
TOOL_TABLES = frozenset({SQLITE_TABLE, "safe_migrations_partial"})  # drift checks skip them
KEY_VARIABLE = "SAFE_MIGRATIONS_PROOF_KEY"
KEY_FILE = ".proof-key"
CLOCK_SKEW = timedelta(minutes=5)  # a proof dated later than this is refused


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


def _schema(env: Environment) -> str | None:
    """The engine's schema for the tool's own tables (None: beside the application's)."""
    from safe_migrations.engines import engine_for

    return engine_for(env.dialect).tool_schema


def where(env: Environment) -> str:
    return SQLITE_TABLE if _schema(env) is None else f"{SCHEMA}.{TABLE}"


def _table(env: Environment) -> Any:
    import sqlalchemy as sa

    metadata = sa.MetaData()
    return sa.Table(
        SQLITE_TABLE if _schema(env) is None else TABLE,
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("environment", sa.String(200), nullable=False),
        sa.Column("from_revision", sa.String(200), nullable=False),
        sa.Column("to_revision", sa.String(200), nullable=False),
        sa.Column("scripts_sha256", sa.String(64), nullable=False),
        sa.Column("passed", sa.Boolean, nullable=False),
        sa.Column("report", sa.String(500), nullable=False),
        sa.Column("signature", sa.String(64)),
        schema=None if _schema(env) is None else SCHEMA,
    )


def signing_key(env: Environment, create: bool = False) -> bytes | None:
    """SAFE_MIGRATIONS_PROOF_KEY, else the reports folder's private key file (made on
    the first rehearsal when ``create``); None when there is neither."""
    from safe_migrations.core.files import private_folder, write_atomic

    if os.environ.get(KEY_VARIABLE):
        return os.environ[KEY_VARIABLE].encode()
    path = env.report_dir / KEY_FILE
    if not path.exists() and create:
        private_folder(env.report_dir)
        write_atomic(path, secrets.token_hex(32))
    try:
        return path.read_text(encoding="utf-8").strip().encode() or None
    except OSError:
        return None


def _moment(value: datetime) -> datetime:
    """Whole seconds in UTC: what every engine's DateTime keeps (SQLite and MySQL keep
    no zone; they were written in UTC)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).replace(microsecond=0)


def signature(key: bytes, row: dict[str, Any]) -> str:
    fields = [
        row["environment"],
        row["from_revision"],
        row["to_revision"],
        row["scripts_sha256"],
        "passed" if row["passed"] else "failed",
        _moment(row["finished_at"]).isoformat(),
        row["report"],
    ]
    return hmac.new(key, "\0".join(fields).encode(), hashlib.sha256).hexdigest()


def _not_owned(connection: Any, env: Environment) -> str | None:
    """PostgreSQL: the sentence when the proof schema or table belongs to another role
    (an engine without a schema of the tool's own has no owner to check)."""
    if _schema(env) is None:
        return None
    row = connection.exec_driver_sql(
        "SELECT pg_get_userbyid(n.nspowner), pg_get_userbyid(c.relowner), current_user "
        "FROM pg_namespace n LEFT JOIN pg_class c ON c.relnamespace = n.oid "
        f"AND c.relname = '{TABLE}' WHERE n.nspname = '{SCHEMA}'"
    ).first()
    if row is None:
        return None
    schema_owner, table_owner, me = row
    other = next((o for o in (schema_owner, table_owner) if o is not None and o != me), None)
    if other is None:
        return None
    return (
        f"the proof table {SCHEMA}.{TABLE} (or its schema) belongs to role {other}, not to "
        f"the migration role {me}: whoever owns it could write a passing proof. Check who "
        f"made it, drop the schema {SCHEMA} (it holds only proofs), and rehearse again"
    )


def _add_signature_column(connection: Any, table: Any) -> None:
    """Tables made before proofs were signed get the column (their rows stay unsigned)."""
    import sqlalchemy as sa

    columns = {c["name"] for c in sa.inspect(connection).get_columns(table.name, table.schema)}
    if "signature" not in columns:
        name = f"{table.schema}.{table.name}" if table.schema else table.name
        connection.exec_driver_sql(f"ALTER TABLE {name} ADD COLUMN signature VARCHAR(64)")


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

    from safe_migrations.core.errors import ToolError

    table = _table(env)
    try:
        with connect(
            env, role="rehearse", lock_timeout=env.settings.migration.lock_timeout or None
        ) as connection:
            if _schema(env) is not None:
                connection.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
            refused = _not_owned(connection, env)
            if refused is not None:
                connection.rollback()
                return refused
            table.create(connection, checkfirst=True)
            _add_signature_column(connection, table)
            row = {
                "finished_at": _moment(now or datetime.now(UTC)),
                "environment": env.name,
                "from_revision": start,
                "to_revision": target,
                "scripts_sha256": digest,
                "passed": passed,
                "report": report,
            }
            key = signing_key(env, create=True)
            assert key is not None
            connection.execute(table.insert().values(**row, signature=signature(key, row)))
            connection.commit()
    except (DBAPIError, ToolError, OSError) as exc:
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
        inspector = sa.inspect(connection)
        if not inspector.has_table(table.name, schema=table.schema):
            return None
        refused = _not_owned(connection, env)
        if refused is not None:
            raise BlockedError(f"Refusing the rehearsal proof: {refused}.")
        columns = {c["name"] for c in inspector.get_columns(table.name, table.schema)}
        if "signature" not in columns:
            return None  # written before proofs were signed: none of them counts
        row = (
            connection.execute(
                sa.select(table)
                .where(
                    table.c.environment == env.name,
                    table.c.from_revision == start,
                    table.c.to_revision == target,
                    table.c.scripts_sha256 == digest,
                )
                .order_by(table.c.id.desc())  # insertion decides, never a date in a row
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
    key = signing_key(env)
    if key is None or not hmac.compare_digest(str(found["signature"] or ""), signature(key, found)):
        where_key = (
            f"{KEY_VARIABLE} differs from the rehearsal's"
            if os.environ.get(KEY_VARIABLE)
            else f"set {KEY_VARIABLE} (a secret shared by the rehearsing and the migrating "
            "job) so a proof travels between machines"
        )
        raise BlockedError(
            f"The last rehearsal of {start} -> {target} on record for {env.name} is not "
            f"signed with this machine's proof key (written by hand, on another machine, or "
            f"before proofs were signed): {where_key}, then {how}."
        )
    finished = _moment(found["finished_at"])
    age = (now or datetime.now(UTC)) - finished
    if age < -CLOCK_SKEW:
        raise BlockedError(
            f"The last rehearsal of {start} -> {target} on record for {env.name} is dated "
            f"{finished.isoformat()}, in the future: a clock that is wrong or a forged row; "
            f"{how}."
        )
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
