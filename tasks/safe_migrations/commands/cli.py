"""The `safe-migrations` command: the task collection as a program of its own, so a
project needs no tasks.py (`safe-migrations migrate --env staging`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from invoke import Collection, Exit, Program, task

from safe_migrations.commands import exits_with_documented_codes, ns
from safe_migrations.pipeline.report import TOOL_VERSION


@task(
    help={
        "root": "the Alembic project's root (default: the current folder)",
        "force": "replace files that exist (env.py is always adapted, shown as a diff)",
    }
)
@exits_with_documented_codes
def init(c: Any, root: str = "", force: bool = False) -> None:
    """Adopt safe-migrations here: tasks.py, environments/, the workflow, env.py adapted."""
    from safe_migrations.project.adopt import init as adopt

    code = adopt(Path(root or ".").resolve(), force)
    if code:
        raise Exit(code=code)


commands = Collection()
for name, each in ns.tasks.items():
    commands.add_task(each, name=name)
commands.add_task(init)

program = Program(
    namespace=commands, name="safe-migrations", binary="safe-migrations", version=TOOL_VERSION
)


def main() -> None:
    """Run the program with the project's root first on ``sys.path``, as `invoke` puts the
    folder of tasks.py there: an env.py that imports the application works from both."""
    import sys

    from safe_migrations.core.config import PROJECT_ROOT

    if str(PROJECT_ROOT) not in sys.path:
        sys.path.insert(0, str(PROJECT_ROOT))
    program.run()
