"""The `safe-migrations` command: the task collection as a program of its own, so a
project needs no tasks.py (`safe-migrations migrate --env staging`)."""

from __future__ import annotations

from invoke import Program

from safe_migrations.commands import ns
from safe_migrations.report import TOOL_VERSION

program = Program(
    namespace=ns, name="safe-migrations", binary="safe-migrations", version=TOOL_VERSION
)


def main() -> None:
    program.run()
