"""Which engine serves which dialect: ``module:Class`` names imported on first use.

Below everything: it imports no engine and no layer of the package (config asks it
which dialects are served, so it must not import what imports config).
"""

from __future__ import annotations

import importlib
from typing import Any

from safe_migrations.core.errors import ConfigError

_REGISTRY: dict[str, Any] = {
    "postgresql": "safe_migrations.engines.postgresql:PostgreSQL",
    "sqlite": "safe_migrations.engines.sqlite:SQLite",
    "mysql": "safe_migrations.engines.mysql:MySQL",
    "mariadb": "safe_migrations.engines.mysql:MySQL",
}
_LOADED: dict[str, Any] = {}


def register(dialect: str, engine: Any) -> None:
    """Serve ``dialect`` with ``engine`` (an Engine class, or ``module:Class``)."""
    _REGISTRY[dialect] = engine
    _LOADED.pop(dialect, None)


def unregister(dialect: str) -> None:
    _REGISTRY.pop(dialect, None)
    _LOADED.pop(dialect, None)


def supported() -> list[str]:
    return list(_REGISTRY)


def supported_sentence() -> str:
    """'postgresql, sqlite, mysql and mariadb': the dialects an engine serves."""
    names = supported()
    return ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0]


def load(dialect: str) -> Any:
    """The engine instance serving ``dialect``; ConfigError when none does."""
    if dialect not in _LOADED:
        spec = _REGISTRY.get(dialect)
        if spec is None:
            raise ConfigError(
                f"No engine serves the database dialect {dialect!r}; "
                f"{supported_sentence()} are supported."
            )
        if isinstance(spec, str):
            module, _, name = spec.partition(":")
            spec = getattr(importlib.import_module(module), name)
        _LOADED[dialect] = spec()
    return _LOADED[dialect]
