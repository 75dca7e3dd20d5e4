"""Invoke entry point for this repository: `invoke --list` shows the tasks.

The tasks are the installed package ``safe_migrations``, whose source is
``tasks/safe_migrations/`` (``tasks/`` is the source root); this file only hands its
collection to Invoke, as any project's tasks.py can.
"""

from safe_migrations.commands import ns

__all__ = ["ns"]
