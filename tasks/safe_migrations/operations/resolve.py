"""`invoke resolve`: the user's word that a partly applied revision is whole again.

MySQL left part of a revision applied (partial.py); the user has finished it by hand
(``--applied``: the version table moves to where the revision would have left it)
or undone it (``--reverted``: the version table stays). Either way the record is
closed, the audit log says who closed it and how, and health lets runs go on.
"""

from __future__ import annotations

from datetime import UTC, datetime

from safe_migrations.core.config import Environment
from safe_migrations.core.database import connect
from safe_migrations.core.errors import BlockedError, ConfigError
from safe_migrations.engines import engine_for
from safe_migrations.pipeline.partial import close, find_open
from safe_migrations.pipeline.report import append_audit, current_user, reported
from safe_migrations.project.alembic_api import Project, current_revision


def resolve(env: Environment, project: Project, revision: str, applied: bool) -> str:
    """Close the revision's record; with ``applied``, stamp the version table past it.
    Returns the sentence to print."""

    if not engine_for(env.dialect).ddl_commits:
        raise ConfigError(
            f"{env.name} is not a MySQL or MariaDB database; only those leave a revision partly "
            "applied (PostgreSQL and SQLite roll a failed revision back whole)."
        )
    from alembic.util import CommandError

    try:
        script = project.scripts().get_revision(revision) if revision else None
    except CommandError:  # unknown, or an ambiguous prefix
        script = None
    if script is None:
        raise ConfigError(f"Revision {revision!r} is not in the scripts; pass the revision id.")
    user = current_user()
    with connect(env, role="resolve") as connection:
        row = find_open(connection, revision, env.name)
        current = current_revision(connection)
        if current != row["version_at"]:
            raise BlockedError(
                f"The version table is at {reported(current)}, not at "
                f"{reported(row['version_at'])} where the failed run left it: something moved "
                "it since, so nothing was changed. Check `invoke status`."
            )
        moved_to = current
        if applied:
            down = script.down_revision
            moved_to = (
                revision if row["kind"] == "upgrade" else (down if isinstance(down, str) else None)
            )
            _stamp(connection, current, moved_to)
        close(connection, row["id"], "applied" if applied else "reverted", user)
        connection.commit()
    how = "applied" if applied else "reverted"
    append_audit(
        env.report_dir,
        {
            "time": datetime.now(UTC).isoformat(),
            "environment": env.name,
            "operation": "resolve",
            "revision": revision,
            "resolution": how,
            "pre_revision": reported(current),
            "post_revision": reported(moved_to),
            "statements": row["statements"],
            "user": user,
            "success": True,
            "exit_code": 0,
        },
    )
    return (
        f"revision {revision} resolved as {how} by {user}; the version table is at "
        f"{reported(moved_to)}. Runs may go on."
    )


def _stamp(connection: object, old: str | None, new: str | None) -> None:
    """Move alembic_version from ``old`` to ``new`` (either may be base)."""
    from sqlalchemy import text

    run = connection.execute  # type: ignore[attr-defined]
    if old is not None and new is not None:
        run(
            text("UPDATE alembic_version SET version_num = :new WHERE version_num = :old"),
            {"new": new, "old": old},
        )
    elif old is None and new is not None:
        run(text("INSERT INTO alembic_version (version_num) VALUES (:new)"), {"new": new})
    elif old is not None:
        run(text("DELETE FROM alembic_version WHERE version_num = :old"), {"old": old})
