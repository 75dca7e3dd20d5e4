"""Safe Alembic migrations: health, confirm, lock, backup, upgrade, validate, report.

Installed as ``safe_migrations`` (distribution ``safe-alembic-migrations``); its
source is this repository's ``tasks/`` folder, which pyproject.toml maps to that
name. Nothing is ever imported as ``tasks.*``: the repository's ``tasks.py``
loads ``safe_migrations.commands.ns``, the ``safe-migrations`` command runs the
same collection, so each module is imported once, under one name.
"""
