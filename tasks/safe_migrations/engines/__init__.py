"""The engines: one implementation per database, chosen once from the URL's dialect.

As Alembic's ``alembic/ddl/`` registers one impl per dialect, each engine module
(``postgresql``, ``mysql``, ``sqlite``) holds what differs for its database behind the
interface in ``base.py``; the steps ask it and never branch on the dialect. The
registry (``registry.py``) maps a dialect to ``module:Class`` and imports the module on
first use (fsspec's shape), so no engine is imported before it is needed and every
engine may use the layers below it (``database.py`` connects through the engine it is
handed). An unknown dialect is refused in one sentence.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from safe_migrations.engines.registry import load, register, supported, unregister

if TYPE_CHECKING:
    from safe_migrations.engines.base import Engine

__all__ = ["engine_for", "register", "supported", "unregister"]


def engine_for(dialect: str) -> Engine:
    """The engine serving ``dialect`` (a URL's backend name); ConfigError when none does."""
    return cast("Engine", load(dialect))
