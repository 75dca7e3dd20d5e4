"""Health checks against real databases and real sockets."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import ScratchProject, run_invoke, write_environment
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from safe_migrations.core.config import Environment
from safe_migrations.pipeline.health import (
    blocking,
    check_single_head,
    connect_checked,
    run_health,
)
from safe_migrations.pipeline.upgrade import run_migrations
from safe_migrations.project.alembic_api import DEFAULT_PROJECT


def by_name(results: list) -> dict:
    return {r.name: r for r in results}


def test_healthy_postgres_passes_every_check(
    pg_url: str, make_env: Callable[..., Environment]
) -> None:
    env = make_env(pg_url)
    results = by_name(run_health(env, DEFAULT_PROJECT))
    assert all(r.ok for r in results.values()), results
    assert results["alembic_version"].message == "no alembic_version: first migration"
    assert set(results) == {
        "connection",
        "alembic_version",
        "blocking_sessions",
        "disk",
        "reports",
        "single_head",
        "target",
    }


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A socket on 127.0.0.1 that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except TimeoutError:
                continue

    worker = threading.Thread(target=accept, daemon=True)
    worker.start()
    yield server.getsockname()[1]
    stop.set()
    worker.join()
    for conn in accepted:
        conn.close()
    server.close()


def test_silent_host_fails_connection_within_timeout(
    silent_server: int, make_env: Callable[..., Environment]
) -> None:
    env = make_env(
        f"postgresql://u:pw@127.0.0.1:{silent_server}/db", database={"connect_timeout": 1}
    )
    started = time.monotonic()
    result, opened = connect_checked(env)
    elapsed = time.monotonic() - started
    assert opened is None
    assert not result.ok and "no answer" in result.message and "within 1s" in result.message
    assert 0.9 <= elapsed < 1.6


def test_refused_port_fails_at_once_with_its_own_message(
    make_env: Callable[..., Environment],
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = make_env(f"postgresql://u:pw@127.0.0.1:{port}/db", database={"connect_timeout": 5})
    started = time.monotonic()
    result, opened = connect_checked(env)
    assert time.monotonic() - started < 1 and opened is None
    assert not result.ok and "connection refused" in result.message
    assert "pw" not in result.message


def test_session_holding_a_table_lock_blocks(
    pg_url: str, make_env: Callable[..., Environment]
) -> None:
    env = make_env(pg_url)
    run_migrations(env, DEFAULT_PROJECT, "0002")
    engine = create_engine(env.url, poolclass=NullPool)
    with engine.connect() as blocker:
        blocker.execute(text("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE"))
        results = by_name(run_health(env, DEFAULT_PROJECT))
        blocker.rollback()
    engine.dispose()
    sessions = results["blocking_sessions"]
    assert not sessions.ok and sessions.blocks
    assert "AccessExclusiveLock" in sessions.message
    assert results["alembic_version"].message == "alembic_version present, at 0002"


def test_old_open_transaction_blocks(pg_url: str, make_env: Callable[..., Environment]) -> None:
    env = make_env(pg_url, health={"max_transaction_age": 0.2})
    engine = create_engine(env.url, poolclass=NullPool)
    with engine.connect() as idle:
        idle.execute(text("SELECT 1"))  # opens a transaction and leaves it idle
        time.sleep(0.4)
        results = by_name(run_health(env, DEFAULT_PROJECT))
        idle.rollback()
    engine.dispose()
    assert not results["blocking_sessions"].ok
    assert "idle in transaction" in results["blocking_sessions"].message


def test_two_heads_fail_the_single_head_check(scratch: ScratchProject) -> None:
    first = scratch.add("pass")
    scratch.add("pass")
    scratch.last = first
    scratch.add("pass")
    result = check_single_head(scratch.project())
    assert not result.ok and "2 heads" in result.message


def test_low_disk_is_a_warning_not_a_stop(
    sqlite_url: str, make_env: Callable[..., Environment]
) -> None:
    env = make_env(sqlite_url, health={"min_free_disk_mb": 10**9})
    results = run_health(env, DEFAULT_PROJECT)
    disk = by_name(results)["disk"]
    assert not disk.ok and disk.severity == "warning"
    assert blocking(results) == []


def test_unknown_target_is_blocking(sqlite_url: str, make_env: Callable[..., Environment]) -> None:
    env = make_env(sqlite_url)
    target = by_name(run_health(env, DEFAULT_PROJECT, "nope"))["target"]
    assert target.blocks and "Unknown revision 'nope'" in target.message


def test_health_json_exit_codes(tmp_path: Path, pg_url: str) -> None:
    write_environment(tmp_path / "environments", "staging", tmp_path / "var")
    env = {"MIGRATE_ENVIRONMENTS_DIR": str(tmp_path / "environments"), "DATABASE_URL": pg_url}
    healthy = run_invoke("health", "--env", "staging", "--json", env=env)
    assert healthy.returncode == 0, healthy.stderr
    data = json.loads(healthy.stdout)
    assert data["ok"] and {c["name"] for c in data["checks"]} >= {"connection", "disk"}
    refused = run_invoke(
        "health",
        "--env",
        "staging",
        "--json",
        env=env | {"DATABASE_URL": "postgresql://u:pw@127.0.0.1:1/db"},
    )
    assert refused.returncode == 3
    assert json.loads(refused.stdout)["ok"] is False


def test_revision_unknown_to_the_scripts_blocks(
    sqlite_url: str, make_env: Callable[..., Environment]
) -> None:
    env = make_env(sqlite_url)
    run_migrations(env, DEFAULT_PROJECT, "head")
    engine = create_engine(env.url, poolclass=NullPool)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = 'f00dcafe'"))
    engine.dispose()
    version = by_name(run_health(env, DEFAULT_PROJECT))["alembic_version"]
    assert version.blocks and "at f00dcafe, which these scripts do not contain" in version.message


def test_silent_host_fails_any_connection_at_the_connect_timeout(
    silent_server: int, make_env: Callable[..., Environment]
) -> None:
    from safe_migrations.core.errors import UnreachableError
    from safe_migrations.pipeline.status import read_current

    env = make_env(
        f"postgresql://u:pw@127.0.0.1:{silent_server}/db", database={"connect_timeout": 2}
    )
    started = time.monotonic()
    with pytest.raises(UnreachableError, match="Cannot reach the staging database") as failed:
        read_current(env)
    assert failed.value.exit_code == 3
    assert 1.9 <= time.monotonic() - started < 4


def test_lock_held_by_another_role_blocks_a_role_without_stats_grants(
    pg_url: str, role_url: str, make_env: Callable[..., Environment]
) -> None:
    env = make_env(role_url)
    run_migrations(env, DEFAULT_PROJECT, "0002")
    engine = create_engine(pg_url, poolclass=NullPool)  # the superuser, as a DBA would
    with engine.connect() as blocker:
        blocker.execute(text("SELECT 'api_key=sk_live_do_not_copy'"))
        blocker.execute(text("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE"))
        results = by_name(run_health(env, DEFAULT_PROJECT))
        blocker.rollback()
    engine.dispose()
    sessions = results["blocking_sessions"]
    assert not sessions.ok and sessions.blocks
    assert "AccessExclusiveLock on orders" in sessions.message
    assert "state hidden" in sessions.message
    visibility = results["session_visibility"]
    assert not visibility.ok and not visibility.blocks
    assert "pg_read_all_stats" in visibility.message


def test_no_query_text_of_another_session_is_copied_out(
    pg_url: str, make_env: Callable[..., Environment]
) -> None:
    env = make_env(pg_url, health={"max_transaction_age": 0.1})
    engine = create_engine(env.url, poolclass=NullPool)
    with engine.connect() as idle:
        idle.execute(text("SELECT 'api_key=sk_live_do_not_copy'"))
        time.sleep(0.3)
        results = run_health(env, DEFAULT_PROJECT)
        idle.rollback()
    engine.dispose()
    assert not by_name(results)["blocking_sessions"].ok
    dumped = json.dumps([r.to_dict() for r in results])
    assert "api_key" not in dumped and "sk_live" not in dumped
