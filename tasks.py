"""Invoke entry point: `invoke --list` shows the tasks.

Invoke loads this file as the module ``tasks``; the step modules live in the
``tasks/`` package. Pointing ``__path__`` at that folder makes this module act
as that package, so `invoke` and `import tasks.health` (tests) reach the same code.
"""

from pathlib import Path

__path__ = [str(Path(__file__).resolve().parent / "tasks")]

from tasks.commands import ns  # noqa: E402

__all__ = ["ns"]
