"""What each task does on one member of a fleet: the single-database operation itself,
called in the member's own process by fleet.run_fleet, returning what the summary shows.
"""

from __future__ import annotations

from typing import Any

from safe_migrations.core.config import Environment
from safe_migrations.operations.fleet import Work
from safe_migrations.pipeline.context import Console, RunOptions
from safe_migrations.pipeline.report import reported


def pipeline(options: RunOptions) -> Work:
    """migrate, downgrade or a dry run: the pipeline, exactly as for one database."""

    def work(env: Environment) -> dict[str, Any]:
        from safe_migrations.pipeline.migrate import migrate

        record = migrate(env, options, console=Console())
        step = record.steps[-1]["message"] if record.steps else ""
        return {"message": step}

    return work


def rollback(from_backup: bool) -> Work:
    def work(env: Environment) -> dict[str, Any]:
        from safe_migrations.operations.standalone import rollback as undo

        record = undo(env, from_backup, True, False, console=Console())
        return {"message": "rolled back" if record else "nothing to roll back"}

    return work


def backup() -> Work:
    def work(env: Environment) -> dict[str, Any]:
        from safe_migrations.operations.standalone import backup as take

        record = take(env, Console())
        taken = record.backup or {}
        return {"message": f"{taken.get('path')} ({taken.get('size', 0):,} bytes)"}

    return work


def status() -> Work:
    def work(env: Environment) -> dict[str, Any]:
        from safe_migrations.pipeline.status import get_status

        found = get_status(env)
        current = reported(found.current)
        return {
            "message": f"{len(found.pending)} pending",
            "pre_revision": current,
            "post_revision": current,
            "status": found.to_dict(),
        }

    return work


def health(revision: str) -> Work:
    def work(env: Environment) -> dict[str, Any]:
        from safe_migrations.core.errors import BlockedError
        from safe_migrations.pipeline.health import blocking, run_health
        from safe_migrations.project.alembic_api import project_for

        results = run_health(env, project_for(env), revision)
        failed = blocking(results)
        if failed:
            raise BlockedError("; ".join(f"{r.name}: {r.message}" for r in failed))
        return {"message": "all blocking checks passed", "checks": [r.to_dict() for r in results]}

    return work


def check(stairway: bool) -> Work:
    def work(env: Environment) -> dict[str, Any]:
        from safe_migrations.core.errors import ToolError
        from safe_migrations.operations.check import run_check
        from safe_migrations.project.alembic_api import project_for

        results = run_check(env, project_for(env), stairway)
        failed = [r for r in results if r.blocks]
        if failed:
            raise ToolError("; ".join(f"{r.name}: {r.message}" for r in failed))
        return {"message": "passed", "checks": [r.to_dict() for r in results]}

    return work
