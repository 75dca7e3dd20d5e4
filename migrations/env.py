"""Alembic environment: plain `alembic` commands and the Invoke tasks both run through here.

The tasks hand in a connection through ``config.attributes["connection"]`` so they
control connections, timeouts and transactions; plain Alembic gets its URL from
``DATABASE_URL``, else from ``alembic.ini``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from logging.config import fileConfig
from pathlib import Path

from alembic import context
from sqlalchemy import create_engine, pool
from sqlalchemy.engine import Engine

ROOT = Path(__file__).resolve().parent.parent
config = context.config
attributes = config.attributes

if config.config_file_name is not None and attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def load_metadata():
    """The models to compare against: handed in by the caller, else models.py beside this file."""
    if attributes.get("target_metadata") is not None:
        return attributes["target_metadata"]
    path = Path(__file__).resolve().with_name("models.py")
    if not path.exists():
        return None
    name = f"_migration_models_{abs(hash(str(path)))}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name].metadata


target_metadata = load_metadata()


def database_url() -> str:
    url = attributes.get("url") or os.environ.get("DATABASE_URL")
    url = url or config.get_main_option("sqlalchemy.url") or ""
    # psycopg2 is the driver this project installs; SQLAlchemy 2.1 would pick psycopg 3.
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            url = "postgresql+psycopg2://" + url[len(plain) :]
    for dialect in ("mysql", "mariadb"):  # PyMySQL, not the C mysqlclient SQLAlchemy would pick
        if url.startswith(f"{dialect}://"):
            url = f"{dialect}+pymysql://" + url[len(dialect) + 3 :]
    return url


def configure_options(dialect_name: str) -> dict:
    """Options shared by online and offline runs; the tasks may add or override some."""
    options = {
        "target_metadata": target_metadata,
        "render_as_batch": dialect_name == "sqlite",
        "compare_type": True,
        "transaction_per_migration": True,
    }
    options.update(attributes.get("configure_kwargs", {}))
    return options


def run_migrations_offline() -> None:
    """Render SQL instead of running it (``--sql``, dry-run, lint)."""
    dialect_name = attributes.get("dialect_name")
    if dialect_name:
        context.configure(
            dialect_name=dialect_name, literal_binds=True, **configure_options(dialect_name)
        )
    else:
        url = database_url()
        context.configure(
            url=url, literal_binds=True, **configure_options(url.split(":", 1)[0].split("+", 1)[0])
        )
    with context.begin_transaction():
        context.run_migrations()


def run_with(connection) -> None:
    context.configure(connection=connection, **configure_options(connection.dialect.name))
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    handed = attributes.get("connection")  # the tasks hand a Connection, pytest-alembic an Engine
    if isinstance(handed, Engine):
        with handed.connect() as connection:
            run_with(connection)
            if hasattr(connection, "commit"):  # SQLAlchemy 2.x, or 1.4 with future=True
                connection.commit()
        return
    if handed is not None:
        run_with(handed)
        return
    url = database_url()
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        (ROOT / url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{ROOT / url[len('sqlite:///') :]}"
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            run_with(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
