"""The migrate pipeline on real databases: failures, locks, timeouts, dry runs, rollbacks."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from helpers import QUIET, ROOT, UNATTENDED, ScratchProject, cli_env, run_invoke, write_environment
from helpers import table_names as tables
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from safe_migrations.core.config import Environment
from safe_migrations.core.errors import (
    BlockedError,
    DriftError,
    LockHeldError,
    RefusedError,
    UsageError,
)
from safe_migrations.operations.standalone import rollback
from safe_migrations.pipeline.locking import migration_lock
from safe_migrations.pipeline.migrate import Console, RunOptions, migrate
from safe_migrations.pipeline.report import last_report
from safe_migrations.pipeline.status import read_current
from safe_migrations.pipeline.upgrade import MigrationError, run_migrations
from safe_migrations.project.alembic_api import DEFAULT_PROJECT


def test_failed_migration_leaves_last_good_revision(
    pg_url: str, scratch: ScratchProject, make_env: Callable[..., Environment]
) -> None:
    env = make_env(pg_url)
    scratch.add('op.create_table("a", sa.Column("id", sa.Integer, primary_key=True))')
    scratch.add('op.create_table("b", sa.Column("id", sa.Integer, primary_key=True))')
    broken = scratch.folder / "versions" / f"{scratch.add('pass')}.py"
    broken.write_text(
        broken.read_text().replace(
            "def upgrade():\n    pass",
            'def upgrade():\n    op.create_table("c", sa.Column("id", sa.Integer))\n'
            '    raise RuntimeError("halfway")',
        )
    )
    with pytest.raises(MigrationError) as failure:
        migrate(env, UNATTENDED, scratch.project(), QUIET)
    assert failure.value.exit_code == 1
    assert "r003" in failure.value.message and "halfway" in failure.value.message
    assert read_current(env) == "r002"
    assert tables(env.url) == {"alembic_version", "a", "b"}
    report = last_report(env)[1]
    assert report["success"] is False and report["failed_revision"] == "r003"
    assert report["post_revision"] == "r002"
    assert [a["revision"] for a in report["applied"]] == ["r001", "r002"]
    failed_step = report["steps"][-1]
    assert failed_step["name"] == "upgrade" and not failed_step["ok"]
    assert failed_step["duration"] > 0  # timed inside its block, not read as 0
    broken.write_text(broken.read_text().replace('    raise RuntimeError("halfway")\n', ""))
    record = migrate(env, UNATTENDED, scratch.project(), QUIET)
    assert record.success and read_current(env) == "r003"
    assert "c" in tables(env.url)


def test_two_migrate_processes_apply_the_revisions_once(pg_url: str, tmp_path: Path) -> None:
    write_environment(
        tmp_path / "environments", "staging", tmp_path / "var", migration={"lock_wait": 30}
    )
    env = {"MIGRATE_ENVIRONMENTS_DIR": str(tmp_path / "environments"), "DATABASE_URL": pg_url}
    invoke = str(Path(sys.executable).parent / "invoke")
    processes = [
        subprocess.Popen(
            [invoke, "migrate", "--env", "staging", "--yes"],
            cwd=ROOT,
            env=os.environ | env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outcomes = [(p.wait(timeout=120), p.stdout.read(), p.stderr.read()) for p in processes]
    assert [code for code, _, _ in outcomes] == [0, 0], outcomes
    reports = [
        json.loads(p.read_text()) for p in (tmp_path / "var" / "reports").glob("staging-*.json")
    ]
    applied = sorted(len(r["applied"]) for r in reports)
    assert applied == [0, 7]
    engine = create_engine(pg_url, poolclass=NullPool)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1
    engine.dispose()


def test_held_lock_exits_4_naming_the_holder(
    pg_url: str, tmp_path: Path, make_env: Callable[..., Environment]
) -> None:
    env = make_env(pg_url)
    write_environment(
        tmp_path / "cli-envs", "staging", tmp_path / "var", migration={"lock_wait": 1}
    )
    cli = {"MIGRATE_ENVIRONMENTS_DIR": str(tmp_path / "cli-envs"), "DATABASE_URL": pg_url}
    with migration_lock(env):
        result = run_invoke("migrate", "--env", "staging", "--yes", env=cli)
    assert result.returncode == 4, result.stderr
    assert f"pid {os.getpid()}" in result.stderr
    assert f"host {socket.gethostname()}" in result.stderr and "since" in result.stderr


def test_sqlite_lock_file_blocks_a_second_run(
    sqlite_url: str, make_env: Callable[..., Environment]
) -> None:
    env = make_env(sqlite_url, migration={"lock_wait": 0.3})
    with migration_lock(env), pytest.raises(LockHeldError, match="lock file") as held:
        migrate(env, UNATTENDED, DEFAULT_PROJECT, QUIET)
    assert held.value.exit_code == 4


def hold_table_lock(url: str, table: str, seconds: float | None) -> threading.Event:
    """Another session takes ACCESS EXCLUSIVE on ``table``; commits after ``seconds``."""
    taken, release = threading.Event(), threading.Event()

    def blocker() -> None:
        engine = create_engine(url, poolclass=NullPool)
        with engine.connect() as connection:
            connection.execute(text(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"))
            taken.set()
            release.wait(seconds)
            connection.commit()
        engine.dispose()

    threading.Thread(target=blocker, daemon=True).start()
    assert taken.wait(10)
    return release


def test_lock_budget_stops_the_run_at_the_last_good_revision_naming_the_holder(
    pg_url: str, make_env: Callable[..., Environment]
) -> None:
    env = make_env(pg_url, migration={"lock_timeout": 0.2, "lock_budget": 1.5})
    run_migrations(env, DEFAULT_PROJECT, "0003")
    release = hold_table_lock(env.url, "users", 60)
    try:
        with pytest.raises(MigrationError) as failure:
            migrate(env, RunOptions(yes=True, skip_health_checks=True), DEFAULT_PROJECT, QUIET)
    finally:
        release.set()
    assert failure.value.exit_code == 1
    message = failure.value.message
    assert "AccessExclusiveLock on users within migration.lock_budget=1.5s" in message
    assert "lock_timeout=0.2s" in message and "Held by: pid " in message
    assert read_current(env) == "0003"
    report = last_report(env)[1]
    assert {r["revision"] for r in report["retries"]} == {"0004"}
    waits = report["retries"]
    assert waits[0]["relation"] == "users" and waits[0]["mode"] == "AccessExclusiveLock"
    assert "AccessExclusiveLock" in waits[0]["holders"][0]["modes"]
    assert report["post_revision"] == "0003"


def test_lock_wait_retries_once_the_holder_lets_go(
    pg_url: str, make_env: Callable[..., Environment]
) -> None:
    env = make_env(pg_url, migration={"lock_timeout": 0.2, "lock_budget": 30})
    run_migrations(env, DEFAULT_PROJECT, "0003")
    hold_table_lock(env.url, "users", 1.5)
    record = migrate(env, RunOptions(yes=True, skip_health_checks=True), DEFAULT_PROJECT, QUIET)
    assert record.success and read_current(env) == "0007"
    assert record.retries and record.retries[0]["revision"] == "0004"
    assert record.retries[0]["relation"] == "users" and record.retries[0]["waited"] > 0.5
    assert next(a for a in record.applied if a["revision"] == "0004")["retries"] >= 1


def test_dry_run_prints_sql_and_changes_nothing(
    pg_url: str, make_env: Callable[..., Environment]
) -> None:
    env = make_env(pg_url)
    run_migrations(env, DEFAULT_PROJECT, "0005")
    before = tables(env.url)
    printed: list[str] = []
    record = migrate(
        env,
        RunOptions(dry_run=True),
        DEFAULT_PROJECT,
        Console(say=printed.append, ask=lambda _p: "no"),
    )
    output = "\n".join(printed)
    assert "RENAME total_cents TO amount_cents" in output and "CREATE TABLE products" in output
    assert "CREATE TABLE users" not in output
    assert read_current(env) == "0005" and tables(env.url) == before
    assert record.dry_run


def test_dry_run_names_revisions_that_read_rows(
    sqlite_url: str, scratch: ScratchProject, make_env: Callable[..., Environment]
) -> None:
    env = make_env(sqlite_url)
    scratch.add('op.create_table("a", sa.Column("id", sa.Integer, primary_key=True))')
    reader = scratch.add(
        'row = op.get_bind().execute(sa.text("SELECT 1")).fetchone()\n'
        'op.execute("SELECT %d" % row[0])'
    )
    scratch.add('op.create_table("b", sa.Column("id", sa.Integer, primary_key=True))')
    printed: list[str] = []
    record = migrate(
        env,
        RunOptions(dry_run=True),
        scratch.project(),
        Console(say=printed.append, ask=lambda _p: "no"),
    )
    output = "\n".join(printed)
    assert "CREATE TABLE a" in output and "CREATE TABLE b" in output
    assert f"-- revision {reader}" in output and "cannot be rendered offline" in output
    assert list(record.steps[-1]["details"]["unrendered"]) == [reader]


def test_schema_drift_fails_validation_naming_the_table(
    pg_url: str, scratch: ScratchProject, make_env: Callable[..., Environment]
) -> None:
    env = make_env(pg_url)
    scratch.add('op.create_table("a", sa.Column("id", sa.Integer, primary_key=True))')
    models = sa.MetaData()
    sa.Table(
        "a", models, sa.Column("id", sa.Integer, primary_key=True), sa.Column("extra", sa.Integer)
    )
    with pytest.raises(DriftError, match=r"add_column a\.extra") as failure:
        migrate(env, UNATTENDED, scratch.project(models), QUIET)
    # Every revision applied: drift alone is its own exit code, never a failed migration
    # (the workflow's automatic rollback does not fire for it), and this run made it.
    assert failure.value.exit_code == 5
    assert "The schema is at the target; the models differ" in failure.value.message
    assert "introduced by this run: add_column a.extra" in failure.value.message


def test_no_backup_is_refused_where_a_backup_is_required(
    sqlite_url: str, make_env: Callable[..., Environment]
) -> None:
    env = make_env(sqlite_url, backup={"required": True})
    with pytest.raises(UsageError, match="requires a backup") as refused:
        migrate(env, RunOptions(yes=True, backup=False), DEFAULT_PROJECT, QUIET)
    assert refused.value.exit_code == 2


def test_required_backup_is_taken_before_migrating(
    sqlite_url: str, make_env: Callable[..., Environment]
) -> None:
    env = make_env(sqlite_url, backup={"required": True})
    run_migrations(env, DEFAULT_PROJECT, "0002")
    record = migrate(env, UNATTENDED, DEFAULT_PROJECT, QUIET)
    assert record.backup and record.backup["revision"] == "0002"
    assert [s["name"] for s in record.steps][:3] == ["health", "backup", "upgrade"]


def test_production_wants_its_name_typed(
    sqlite_url: str, make_env: Callable[..., Environment]
) -> None:
    env = make_env(sqlite_url, name="production", policy={"confirm": "typed"})
    answers = Console(say=lambda _t: None, ask=lambda _p: "yes")
    with pytest.raises(BlockedError, match="did not match 'production'") as refused:
        migrate(env, RunOptions(interactive=True), DEFAULT_PROJECT, answers)
    assert refused.value.exit_code == 3
    assert read_current(env) is None
    typed = Console(say=lambda _t: None, ask=lambda _p: "production")
    assert migrate(env, RunOptions(interactive=True), DEFAULT_PROJECT, typed).success


def test_blocking_health_check_exits_3(pg_url: str, make_env: Callable[..., Environment]) -> None:
    env = make_env(pg_url)
    run_migrations(env, DEFAULT_PROJECT, "0003")
    release = hold_table_lock(env.url, "users", 30)
    try:
        with pytest.raises(BlockedError, match="blocking_sessions") as blocked:
            migrate(env, UNATTENDED, DEFAULT_PROJECT, QUIET)
    finally:
        release.set()
    assert blocked.value.exit_code == 3 and read_current(env) == "0003"


def test_rollback_downgrades_to_the_newest_runs_pre_revision(
    pg_url: str, make_env: Callable[..., Environment]
) -> None:
    env = make_env(pg_url, policy={"auto_rollback": True})
    run_migrations(env, DEFAULT_PROJECT, "0003")
    migrate(env, UNATTENDED, DEFAULT_PROJECT, QUIET)
    assert read_current(env) == "0007"
    record = rollback(env, from_backup=False, yes=True, interactive=False, console=QUIET)
    assert record is not None and record.operation == "rollback"
    assert read_current(env) == "0003" and "products" not in tables(env.url)


def test_downgrade_goes_to_an_explicit_revision(
    pg_url: str, make_env: Callable[..., Environment]
) -> None:
    env = make_env(pg_url)
    run_migrations(env, DEFAULT_PROJECT, "head")
    down = RunOptions(yes=True, revision="0001", direction="downgrade")
    record = migrate(env, down, DEFAULT_PROJECT, QUIET)
    assert read_current(env) == "0001" and record.pre_revision == "0007"
    assert tables(env.url) == {"alembic_version", "users"}


def test_downgrade_refuses_a_target_above_the_current_revision(
    pg_url: str, make_env: Callable[..., Environment]
) -> None:
    env = make_env(pg_url)
    run_migrations(env, DEFAULT_PROJECT, "0001")
    up = RunOptions(yes=True, revision="0005", direction="downgrade")
    with pytest.raises(RefusedError, match="downgrade goes down only") as refused:
        migrate(env, up, DEFAULT_PROJECT, QUIET)
    assert refused.value.exit_code == 2 and read_current(env) == "0001"


def test_rollback_restores_the_last_runs_backup(
    pg_url: str, make_env: Callable[..., Environment]
) -> None:
    env = make_env(pg_url, policy={"auto_rollback": True})
    run_migrations(env, DEFAULT_PROJECT, "0002")
    migrate(env, RunOptions(yes=True, backup=True), DEFAULT_PROJECT, QUIET)
    record = rollback(env, from_backup=True, yes=True, interactive=False, console=QUIET)
    assert record.restored_from and read_current(env) == "0002"
    assert tables(env.url) == {"alembic_version", "users", "orders"}


def test_automatic_rollback_is_refused_where_policy_forbids(
    sqlite_url: str, make_env: Callable[..., Environment]
) -> None:
    env = make_env(sqlite_url, name="production", policy={"auto_rollback": False})
    migrate(env, UNATTENDED, DEFAULT_PROJECT, QUIET)
    with pytest.raises(RefusedError, match="Automatic rollback is off for production"):
        rollback(env, from_backup=False, yes=True, interactive=False, console=QUIET)
    assert read_current(env) == "0007"


def test_concurrent_index_build_runs_while_the_migration_lock_is_held(
    pg_url: str, scratch: ScratchProject, make_env: Callable[..., Environment]
) -> None:
    """CREATE INDEX CONCURRENTLY (outside any transaction) must not wait on the lock."""
    env = make_env(pg_url)
    scratch.add(
        """
        op.create_table(
            "a", sa.Column("id", sa.Integer, primary_key=True), sa.Column("n", sa.Integer)
        )
        """
    )
    scratch.add(
        """
        with op.get_context().autocommit_block():
            op.execute("CREATE INDEX CONCURRENTLY ix_a_n ON a (n)")
        op.execute(
            "CREATE TABLE lock_seen AS SELECT count(*) AS held FROM pg_locks l "
            "JOIN pg_stat_activity s ON s.pid = l.pid WHERE l.locktype = 'advisory' "
            "AND l.granted AND s.application_name LIKE 'alembic-invoke:lock:%'"
        )
        """
    )
    record = migrate(env, UNATTENDED, scratch.project(), QUIET)
    assert [a["revision"] for a in record.applied] == ["r001", "r002"]
    engine = create_engine(env.url, poolclass=NullPool)
    with engine.connect() as connection:
        held = connection.execute(text("SELECT held FROM lock_seen")).scalar()
        valid = connection.execute(
            text("SELECT indisvalid FROM pg_index WHERE indexrelid = 'ix_a_n'::regclass")
        ).scalar()
    engine.dispose()
    assert held == 1 and valid is True


def test_no_backup_is_refused_with_exit_2_where_the_environment_requires_one(
    sqlite_url: str, tmp_path: Path
) -> None:
    env = cli_env(tmp_path, sqlite_url, backup={"required": True})
    refused = run_invoke("migrate", "--env", "staging", "--yes", "--no-backup", env=env)
    assert refused.returncode == 2 and "requires a backup" in refused.stderr
    assert not Path(sqlite_url.removeprefix("sqlite:///")).exists()


def test_contradicting_backup_flags_exit_2(sqlite_url: str, tmp_path: Path) -> None:
    env = cli_env(tmp_path, sqlite_url)
    both = run_invoke("migrate", "--env", "staging", "--backup", "--no-backup", env=env)
    assert both.returncode == 2 and "contradict" in both.stderr


def test_upgrade_is_migrate_and_a_second_run_has_nothing_to_do(
    sqlite_url: str, tmp_path: Path
) -> None:
    env = cli_env(tmp_path, sqlite_url)
    done = run_invoke("upgrade", "--env", "staging", "--yes", env=env)
    assert done.returncode == 0, done.stderr
    again = run_invoke("migrate", "--env", "staging", "--yes", env=env)
    assert again.returncode == 0 and "nothing to do, already at 0007" in again.stdout


SLEEP = 'op.execute("SELECT pg_sleep(60)")'
SLEEPING = text("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep%'")


def start_sleeping_migration(
    pg_url: str, tmp_path: Path, scratch: ScratchProject
) -> tuple[subprocess.Popen[str], dict[str, str], Path]:
    """`invoke migrate` in its own process, returned once its second revision sleeps in SQL.

    Returns the process, the CLI environment and the sleeping revision's file.
    """
    scratch.add('op.create_table("a", sa.Column("id", sa.Integer, primary_key=True))')
    slow = scratch.add(f'op.create_table("b", sa.Column("id", sa.Integer))\n{SLEEP}')
    write_environment(
        tmp_path / "environments",
        "staging",
        tmp_path / "var",
        alembic={"script_location": str(scratch.folder)},
    )
    env = {"MIGRATE_ENVIRONMENTS_DIR": str(tmp_path / "environments"), "DATABASE_URL": pg_url}
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "invoke"), "migrate", "--env", "staging", "--yes"],
        cwd=ROOT,
        env=os.environ | env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    engine = create_engine(pg_url, poolclass=NullPool)
    for _ in range(300):
        with engine.connect() as connection:
            if connection.execute(SLEEPING).scalar():
                break
        time.sleep(0.1)
    engine.dispose()
    return process, env, scratch.folder / "versions" / f"{slow}.py"


def current_version(pg_url: str) -> str | None:
    engine = create_engine(pg_url, poolclass=NullPool)
    with engine.connect() as connection:
        version = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    engine.dispose()
    return version


def test_sigterm_mid_revision_rolls_back_and_still_reports(
    pg_url: str, tmp_path: Path, scratch: ScratchProject
) -> None:
    process, _, _ = start_sleeping_migration(pg_url, tmp_path, scratch)
    process.terminate()
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 3 and "interrupted" in stderr
    assert current_version(pg_url) == "r001"
    assert "b" not in tables(pg_url)
    report = json.loads(next((tmp_path / "var" / "reports").glob("staging-*.json")).read_text())
    assert report["success"] is False and report["post_revision"] == "r001"
    assert "interrupted (SIGTERM)" in report["error"]


def test_sigkilled_runner_releases_the_lock_and_the_next_run_completes(
    pg_url: str, tmp_path: Path, scratch: ScratchProject
) -> None:
    process, env, slow = start_sleeping_migration(pg_url, tmp_path, scratch)
    process.kill()
    process.communicate()
    engine = create_engine(pg_url, poolclass=NullPool)
    advisory = text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
    for _ in range(100):  # the server notices the dead client within about a second
        with engine.connect() as connection:
            if (
                not connection.execute(advisory).scalar()
                and not connection.execute(SLEEPING).scalar()
            ):
                break
        time.sleep(0.1)
    with engine.connect() as connection:
        assert connection.execute(advisory).scalar() == 0
    engine.dispose()
    assert current_version(pg_url) == "r001"
    slow.write_text(slow.read_text().replace(SLEEP, "pass"))
    again = run_invoke("migrate", "--env", "staging", "--yes", env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "1 revision(s) applied" in again.stdout


def test_interactive_run_is_asked_whether_to_continue_past_a_failed_check(
    pg_url: str, make_env: Callable[..., Environment]
) -> None:
    env = make_env(pg_url, health={"max_transaction_age": 0.2}, policy={"confirm": "never"})
    engine = create_engine(env.url, poolclass=NullPool)
    asked: list[str] = []
    with engine.connect() as idle:
        idle.execute(text("SELECT 1"))  # an old open transaction: a blocking health check
        time.sleep(0.4)
        refuse = Console(say=lambda _t: None, ask=lambda p: asked.append(p) or "n")
        with pytest.raises(BlockedError):
            migrate(env, RunOptions(interactive=True), DEFAULT_PROJECT, refuse)
        accept = Console(say=lambda _t: None, ask=lambda p: asked.append(p) or "y")
        record = migrate(env, RunOptions(interactive=True), DEFAULT_PROJECT, accept)
        idle.rollback()
    engine.dispose()
    assert record.success and read_current(env) == "0007"
    assert len(asked) == 2 and all("Continue anyway?" in p for p in asked)


def test_one_transaction_for_all_revisions_rolls_back_the_whole_run(
    pg_url: str, scratch: ScratchProject, make_env: Callable[..., Environment]
) -> None:
    env = make_env(pg_url, migration={"transaction_per_migration": False})
    scratch.add('op.create_table("a", sa.Column("id", sa.Integer, primary_key=True))')
    scratch.add('raise RuntimeError("second fails")')
    with pytest.raises(MigrationError, match="r002"):
        migrate(env, UNATTENDED, scratch.project(), QUIET)
    assert read_current(env) is None and tables(env.url) == set()
    report = last_report(env)[1]
    assert report["applied"] == [] and report["post_revision"] == "base"


def test_a_bare_assert_in_a_revision_names_the_file_and_line(
    sqlite_url: str, scratch: ScratchProject, make_env: Callable[..., Environment]
) -> None:
    """Was "AssertionError: AssertionError.": now the revision file, its line and code."""
    env = make_env(sqlite_url)
    scratch.add(
        'op.create_table("a", sa.Column("id", sa.Integer, primary_key=True))\nassert 1 == 2'
    )
    with pytest.raises(MigrationError) as failure:
        run_migrations(env, scratch.project(), "head")
    message = failure.value.message
    assert "AssertionError: AssertionError" not in message
    assert "back: AssertionError at " in message and "r001.py, line 13: assert 1 == 2" in message
