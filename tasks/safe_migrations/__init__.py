"""Safe Alembic migrations: health, confirm, lock, backup, upgrade, validate, report.

Installed as ``safe_migrations`` (distribution ``safe-alembic-migrations``) from
this folder, named as it is imported, under the source root ``tasks/`` (which has no
``__init__.py``: nothing named ``tasks`` is installed). Rooms: ``core``, ``engines``,
``stores``, ``project``, ``pipeline``, ``operations``, ``commands``. Nothing is
ever imported as ``tasks.*``: the repository's ``tasks.py``
loads ``safe_migrations.commands.ns``, the ``safe-migrations`` command runs the
same collection, so each module is imported once, under one name.
"""
