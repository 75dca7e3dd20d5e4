"""Invoke entry point for this repository: `invoke --list` shows the tasks.

The tasks are the installed package ``safe_migrations``, whose source is the
``tasks/`` folder next to this file (pyproject.toml maps the name); this file only
hands its collection to Invoke, as any project's tasks.py can.
"""

from safe_migrations.commands import ns

__all__ = ["ns"]
