"""The refusals step: what the engine cannot run without blocking the application
(PostgreSQL's ``safe_operations``: a rewriting type change, a dropped table, a large
UPDATE...), refused for every pending revision at once before the prompt and the backup,
so a refused run asks nothing and takes no backup. The upgrade asks again only if
another run moved the database meanwhile.
"""

from __future__ import annotations

from safe_migrations.core.database import connect
from safe_migrations.core.results import StepResult, timed
from safe_migrations.engines import engine_for
from safe_migrations.pipeline.context import Run


def refusals_step(run: Run) -> None:
    """Raise RefusedError (exit 2) naming every refused operation; else record the step."""
    impl = engine_for(run.env.dialect)
    if run.options.direction != "upgrade" or not run.pending or not impl.refuses(run.env):
        return
    with timed() as clock, connect(run.env, role="migrate") as connection:
        impl.preflight(run.env, run.project, run.pending, connection)
    run.refusals_checked = tuple(r.revision for r in run.pending)
    run.step(
        StepResult(
            "refusals",
            True,
            f"none of {len(run.pending)} pending revision(s) refused",
            duration=clock.seconds,
        )
    )
