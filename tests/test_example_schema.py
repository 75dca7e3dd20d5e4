"""The shipped example schema upgrades and downgrades cleanly on both databases."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.pool import NullPool

from safe_migrations.core.config import Environment
from safe_migrations.pipeline.status import get_status
from safe_migrations.pipeline.upgrade import run_migrations
from safe_migrations.project.alembic_api import (
    DEFAULT_PROJECT,
    heads,
    history,
    render_sql,
    upgrade_path,
)
from safe_migrations.project.drift import differences


def test_single_head_revision() -> None:
    assert len(heads(DEFAULT_PROJECT.scripts())) == 1
    assert len(history(DEFAULT_PROJECT.scripts())) >= 6


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_up_down_up_consistency(
    backend: str, request: pytest.FixtureRequest, make_env: Callable[..., Environment]
) -> None:
    url = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "pg_url")
    env = make_env(url)
    applied = run_migrations(env, DEFAULT_PROJECT, "0007")
    assert [a.revision for a in applied] == ["0001", "0002", "0003", "0004", "0005", "0006", "0007"]
    engine = create_engine(env.url, poolclass=NullPool)
    with engine.connect() as connection:
        assert differences(connection, *DEFAULT_PROJECT.comparison(connection)) == []
    undone = run_migrations(env, DEFAULT_PROJECT, None, "downgrade")
    assert [a.revision for a in undone][0] == "0007" and len(undone) == 7
    with engine.connect() as connection:
        assert set(inspect(connection).get_table_names()) == {"alembic_version"}
    run_migrations(env, DEFAULT_PROJECT, "0007")
    assert get_status(env).current == "0007"
    engine.dispose()


def test_data_migration_lowercases_emails_and_rename_keeps_rows(
    pg_url: str, make_env: Callable[..., Environment]
) -> None:
    env = make_env(pg_url)
    run_migrations(env, DEFAULT_PROJECT, "0004")
    engine = create_engine(env.url, poolclass=NullPool)
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO users (id, email, name) VALUES (1, 'A@X.ORG', 'a')"))
        connection.execute(text("INSERT INTO orders (user_id, total_cents) VALUES (1, 250)"))
    run_migrations(env, DEFAULT_PROJECT, "head")
    with engine.connect() as connection:
        assert connection.execute(text("SELECT email, status FROM users")).one() == (
            "a@x.org",
            "active",
        )
        assert connection.execute(text("SELECT amount_cents FROM orders")).scalar() == 250
    engine.dispose()


def test_offline_sql_renders_every_revision_for_postgresql() -> None:
    scripts = DEFAULT_PROJECT.scripts()
    path = upgrade_path(scripts, None, "0007")
    rendered = render_sql(DEFAULT_PROJECT.config(), scripts, path, "postgresql")
    assert [r.error for r in rendered] == [None] * 7
    by_revision = {r.revision: r.sql for r in rendered}
    assert "CREATE INDEX CONCURRENTLY" in by_revision["0003"]
    assert "RENAME total_cents TO amount_cents" in by_revision["0006"]
