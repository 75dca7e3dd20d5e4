"""`invoke generate`: a new revision through Alembic's revision command."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

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
        with connect(env, role="generate") as connection, without_tool_tables():
            script = command.revision(
                project.config(connection=connection), message=message, autogenerate=True
            )
    scripts = script if isinstance(script, list) else [script]
    return "\n".join(f"created {s.path}" for s in scripts if s is not None)


@contextmanager
def without_tool_tables() -> Iterator[None]:
    """While autogenerate runs: whatever ``include_object`` env.py configures, the tool's
    own tables are left out, as drift leaves them out (else the revision drops them)."""
    from alembic.runtime.environment import EnvironmentContext

    from safe_migrations.operations.proof import TOOL_TABLES

    original = EnvironmentContext.configure

    def configure(self: Any, *args: Any, **options: Any) -> Any:
        theirs = options.get("include_object")

        def include_object(obj: Any, name: Any, kind: str, reflected: bool, other: Any) -> bool:
            if kind == "table" and name in TOOL_TABLES:
                return False
            return theirs is None or bool(theirs(obj, name, kind, reflected, other))

        options["include_object"] = include_object
        return original(self, *args, **options)

    EnvironmentContext.configure = configure  # type: ignore[method-assign]
    try:
        yield
    finally:
        EnvironmentContext.configure = original  # type: ignore[method-assign]
