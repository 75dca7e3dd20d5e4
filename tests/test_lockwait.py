"""Invisible to traffic (issue 19): a revision that meets a lock queues for one short
lock timeout at most, is rolled back, waits for the holders from the side and starts
again from its top; an autocommit block is never retried past; idle holders may be
terminated, never a running query nor a superuser's session."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import ScratchProject, cli_env, hold_table_lock, read_in_open_transaction, run_invoke
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from safe_migrations.core.config import Environment
from safe_migrations.core.errors import ConfigError
from safe_migrations.pipeline.status import read_current
from safe_migrations.pipeline.upgrade import MigrationAttempt, MigrationError, run_migrations

TWO_TABLES = (
    'op.create_table("log", sa.Column("id", sa.Integer, primary_key=True))\n'
    'op.create_table("t", sa.Column("id", sa.Integer, primary_key=True))'
)


def count(url: str, table: str) -> int:
    engine = create_engine(url, poolclass=NullPool)
    with engine.connect() as connection:
        found = connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
    engine.dispose()
    return int(found)


def test_a_retry_starts_the_revision_over_with_nothing_applied_twice(
    pg_url: str, make_env: Callable[..., Environment], scratch: ScratchProject
) -> None:
    first = scratch.add(TWO_TABLES)
    scratch.add(
        'op.execute("INSERT INTO log (id) VALUES (1)")\n'
        'op.add_column("t", sa.Column("n", sa.Integer))'
    )
    env = make_env(pg_url, migration={"lock_timeout": 0.2, "lock_budget": 30})
    run_migrations(env, scratch.project(), first)
    attempts: list[MigrationAttempt] = []
    hold_table_lock(pg_url, "t", 1.0)
    run_migrations(env, scratch.project(), "head", on_retry=attempts.append)
    assert attempts and attempts[0].relation == "t"
    assert count(pg_url, "log") == 1  # its INSERT was rolled back with the first attempt


def test_an_autocommit_block_revision_waits_past_its_autocommit_part_instead_of_retrying(
    pg_url: str, make_env: Callable[..., Environment], scratch: ScratchProject
) -> None:
    first = scratch.add(TWO_TABLES)
    second = scratch.add(
        "with op.get_context().autocommit_block():\n"
        '    op.create_index("ix_t_id", "t", ["id"], postgresql_concurrently=True)\n'
        'op.add_column("log", sa.Column("n", sa.Integer))'
    )
    env = make_env(pg_url, migration={"lock_timeout": 0.2, "lock_budget": 30})
    run_migrations(env, scratch.project(), first)
    attempts: list[MigrationAttempt] = []
    hold_table_lock(pg_url, "log", 1.5)  # the statement after the autocommit block waits
    applied = run_migrations(env, scratch.project(), "head", on_retry=attempts.append)
    assert attempts == []  # a retry would build the index again and fail
    assert [(a.revision, a.autocommit) for a in applied] == [(second, True)]
    engine = create_engine(pg_url, poolclass=NullPool)
    with engine.connect() as connection:
        assert "n" in {c["name"] for c in inspect(connection).get_columns("log")}
        lock_timeout = connection.execute(text("SHOW lock_timeout")).scalar()
    engine.dispose()
    assert lock_timeout == "0"  # a session of its own is untouched by ours


@pytest.fixture
def granted_role(role_url: str, pg_admin_url: str) -> str:
    """The migration role, with the grants that let it see and end other sessions."""
    role = make_url(role_url).username
    admin = create_engine(pg_admin_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"GRANT pg_signal_backend, pg_read_all_stats TO {role}"))
    admin.dispose()
    return role_url


@pytest.fixture
def app_role(granted_role: str, pg_admin_url: str) -> Iterator[str]:
    """An application's login role (not a superuser), on the same database."""
    name = f"app_{uuid.uuid4().hex[:8]}"
    admin = create_engine(pg_admin_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"CREATE ROLE {name} LOGIN PASSWORD 'app-secret'"))
    yield (
        make_url(granted_role)
        .set(username=name, password="app-secret")
        .render_as_string(hide_password=False)
    )
    with admin.connect() as connection:
        connection.execute(text(f"DROP OWNED BY {name}"))
        connection.execute(text(f"DROP ROLE IF EXISTS {name}"))
    admin.dispose()


def blocked_column(scratch: ScratchProject) -> str:
    """Tables t and log, readable by everyone, then a revision adding a column to t."""
    first = scratch.add(TWO_TABLES + '\nop.execute("GRANT SELECT ON t TO PUBLIC")')
    scratch.add('op.add_column("t", sa.Column("n", sa.Integer))')
    return first


def test_cancel_blockers_after_terminates_a_holder_idle_in_its_transaction(
    granted_role: str, app_role: str, make_env: Callable[..., Environment], scratch: ScratchProject
) -> None:
    first = blocked_column(scratch)
    env = make_env(
        granted_role,
        migration={"lock_timeout": 0.2, "lock_budget": 20, "cancel_blockers_after": 1},
    )
    run_migrations(env, scratch.project(), first)
    release, outcome = read_in_open_transaction(app_role, "t", 15)
    attempts: list[MigrationAttempt] = []
    run_migrations(env, scratch.project(), "head", on_retry=attempts.append)
    release.set()
    for _ in range(100):
        if outcome:
            break
        threading.Event().wait(0.05)
    assert outcome and outcome[0] != "alive"  # its session was ended
    terminated = [c for a in attempts for c in a.cancelled if c["done"]]
    assert len(terminated) == 1 and terminated[0]["idle_for"] > 1
    assert attempts[0].holders[0]["state"] == "idle in transaction"
    assert read_current(env) != first


def test_cancel_blockers_never_ends_a_running_query_nor_a_superusers_session(
    granted_role: str,
    app_role: str,
    pg_url: str,
    make_env: Callable[..., Environment],
    scratch: ScratchProject,
) -> None:
    first = blocked_column(scratch)
    env = make_env(
        granted_role,
        migration={"lock_timeout": 0.2, "lock_budget": 2.5, "cancel_blockers_after": 0.1},
    )
    run_migrations(env, scratch.project(), first)
    _release, superuser = read_in_open_transaction(pg_url, "t", 4)  # the cluster's superuser
    running: list[object] = []

    def long_query() -> None:  # an application's query, running the whole time
        engine = create_engine(app_role, poolclass=NullPool)
        with engine.connect() as connection:
            running.append(connection.execute(text("SELECT count(*), pg_sleep(4) FROM t")).scalar())
        engine.dispose()

    query = threading.Thread(target=long_query, daemon=True)
    query.start()
    with pytest.raises(MigrationError, match="lock_budget=2.5s"):
        run_migrations(env, scratch.project(), "head")
    query.join(10)
    assert running == [0]  # it finished its query
    threading.Event().wait(2)
    assert superuser == ["alive"]
    assert read_current(env) == first


def test_old_retry_keys_load_with_a_warning_that_says_what_they_now_mean(
    tmp_path: Path, sqlite_url: str
) -> None:
    env = cli_env(tmp_path, sqlite_url, migration={"retries": 5, "retry_backoff": 2})
    result = run_invoke("status", "--env", "staging", env=env)
    assert result.returncode == 0, result.stderr
    assert "migration.retries and migration.retry_backoff are no longer used" in result.stderr
    assert "lock_budget" in result.stderr


def test_cancel_blockers_is_refused_in_production_unless_its_policy_allows_it(
    make_env: Callable[..., Environment], sqlite_url: str
) -> None:
    with pytest.raises(ConfigError, match="policy.allow_cancel_blockers"):
        make_env(sqlite_url, name="production", migration={"cancel_blockers_after": 30})
    allowed = make_env(
        sqlite_url,
        name="production",
        migration={"cancel_blockers_after": 30},
        policy={"allow_cancel_blockers": True},
    )
    assert allowed.settings.migration.cancel_blockers_after == 30
