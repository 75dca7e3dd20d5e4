"""`invoke status`: where the database is, what has run, what is pending."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from safe_migrations.core.config import Environment
from safe_migrations.core.database import connect
from safe_migrations.core.errors import UnreachableError
from safe_migrations.project.alembic_api import (
    Project,
    Revision,
    current_revision,
    heads,
    history,
    project_for,
    upgrade_path,
)


@dataclass(frozen=True)
class Status:
    environment: str
    url: str
    current: str | None
    heads: list[str]
    applied: list[Revision]
    pending: list[Revision]

    def to_dict(self) -> dict[str, Any]:
        return {
            "environment": self.environment,
            "url": self.url,
            "current": self.current,
            "head": self.heads[0] if len(self.heads) == 1 else None,
            "heads": self.heads,
            "applied": [r.to_dict() for r in self.applied],
            "pending": [r.to_dict() for r in self.pending],
        }

    def render(self) -> str:
        lines = [
            f"environment: {self.environment}",
            f"database:    {self.url}",
            f"current:     {self.current or '(none: no migration applied yet)'}",
            f"head:        {', '.join(self.heads) or '(no revisions)'}",
            f"applied ({len(self.applied)}):",
        ]
        lines += [f"  {r.revision}  {r.message}" for r in self.applied]
        lines.append(f"pending ({len(self.pending)}):")
        lines += [f"  {r.revision}  {r.message}" for r in self.pending] or ["  (up to date)"]
        return "\n".join(lines)


def read_current(env: Environment) -> str | None:
    """The database's current revision (None: base); UnreachableError when it cannot be reached."""
    with connect(env, role="status") as connection:
        return current_revision(connection)


def reread_current(env: Environment, attempts: int = 4, pause: float = 1.0) -> str | None:
    """``read_current`` on a fresh connection each try: a server that just restarted
    refuses connections for a moment. Raises the last UnreachableError when all tries fail.
    """
    import time

    for attempt in range(attempts):
        try:
            return read_current(env)
        except UnreachableError:
            if attempt == attempts - 1:
                raise
            time.sleep(pause)
    raise AssertionError("unreachable")


def get_status(env: Environment, project: Project | None = None) -> Status:
    scripts = (project or project_for(env)).scripts()
    current = read_current(env)
    all_revisions = history(scripts)
    head_ids = heads(scripts)
    pending: list[Revision] = []
    if len(head_ids) == 1:
        pending = upgrade_path(scripts, current, head_ids[0])
    applied = [] if current is None else _applied(scripts, current)
    return Status(
        env.name,
        env.masked_url,
        current,
        head_ids,
        [r for r in all_revisions if r.revision in applied],
        pending,
    )


def _applied(scripts: Any, current: str) -> set[str]:
    revisions: set[str] = set()
    for head in current.split(","):
        revisions |= {s.revision for s in scripts.iterate_revisions(head, "base")}
    return revisions
