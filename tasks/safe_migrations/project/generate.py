"""`invoke generate`: a new revision through Alembic's revision command."""

from __future__ import annotations

from safe_migrations.core.config import Environment
from safe_migrations.core.database import connect
from safe_migrations.project.alembic_api import DEFAULT_PROJECT, Project


def new_revision(
    message: str, autogenerate: bool, env: Environment | None, project: Project = DEFAULT_PROJECT
) -> str:
    """Write the revision file; with autogenerate, diff the models against ``env``'s database."""
    from alembic import command

    if not autogenerate or env is None:
        script = command.revision(project.config(), message=message)
    else:
        with connect(env, role="generate") as connection:
            script = command.revision(
                project.config(connection=connection), message=message, autogenerate=True
            )
    scripts = script if isinstance(script, list) else [script]
    return "\n".join(f"created {s.path}" for s in scripts if s is not None)
