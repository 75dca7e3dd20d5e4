"""Rollback acts only on the newest run, only from where that run left the database,
and reports stay true when the server goes away mid-run (issue 11, items 1, 2, 5, 6)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import QUIET, ROOT, UNATTENDED, ScratchProject, hold_table_lock, write_environment
from helpers import table_names as tables
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from safe_migrations.core.config import Environment
from safe_migrations.core.errors import BlockedError, ConfigError, LockHeldError, RefusedError
from safe_migrations.operations.rollback import plan_rollback
from safe_migrations.operations.standalone import backup, rollback
from safe_migrations.pipeline.locking import migration_lock
from safe_migrations.pipeline.migrate import Console, RunOptions, migrate
from safe_migrations.pipeline.report import last_report
from safe_migrations.pipeline.status import read_current
from safe_migrations.pipeline.upgrade import MigrationError, run_migrations
from safe_migrations.project.alembic_api import DEFAULT_PROJECT

EXAMPLE_TABLES = {"alembic_version", "users", "orders", "products", "order_items"}


def undo(env: Environment, restore: bool = False) -> object:
    return rollback(env, from_backup=restore, yes=True, interactive=False, console=QUIET)


def test_rollback_after_a_run_that_never_read_the_revision_drops_nothing(
    pg_url: str, make_env: Callable[..., Environment]
) -> None:
    env = make_env(pg_url, policy={"auto_rollback": True})
    run_migrations(env, DEFAULT_PROJECT, "head")
    with pytest.raises(ConfigError):  # exit 2 before the revision was read
        migrate(env, RunOptions(yes=True, revision="nosuch"), DEFAULT_PROJECT, QUIET)
    assert last_report(env)[1]["pre_revision"] is None
    with pytest.raises(RefusedError, match="exited 2"):
        undo(env)
    release = hold_table_lock(env.url, "users", 30)  # exit 3: blocked by health
    try:
        with pytest.raises(BlockedError):
            migrate(env, UNATTENDED, DEFAULT_PROJECT, QUIET)
    finally:
        release.set()
    with pytest.raises(RefusedError, match="exited 3"):
        undo(env)
    assert read_current(env) == "0007" and tables(env.url) == EXAMPLE_TABLES


def test_rollback_never_uses_a_report_that_does_not_know_its_start(tmp_path: Path) -> None:
    old = {"schema_version": 1, "operation": "upgrade", "exit_code": 1}
    newest = (tmp_path / "staging-upgrade.json", old | {"pre_revision": None, "applied": []})
    with pytest.raises(RefusedError, match="does not know the revision it started from"):
        plan_rollback("staging", (newest[0], newest[1] | {"post_revision": "0003"}))


def test_rollback_from_a_run_that_lost_the_lock_leaves_the_other_runs_work(
    pg_url: str, make_env: Callable[..., Environment]
) -> None:
    env = make_env(pg_url, policy={"auto_rollback": True}, migration={"lock_wait": 0.5})
    run_migrations(env, DEFAULT_PROJECT, "0003")
    migrate(env, UNATTENDED, DEFAULT_PROJECT, QUIET)  # runner A: 0003 -> 0007
    with migration_lock(env, wait=1), pytest.raises(LockHeldError):
        migrate(env, UNATTENDED, DEFAULT_PROJECT, QUIET)  # runner B exits 4
    assert last_report(env)[1]["exit_code"] == 4
    with pytest.raises(RefusedError, match="exited 4"):
        undo(env)
    assert read_current(env) == "0007" and "products" in tables(env.url)


def test_rollback_refuses_a_database_moved_since_its_run(
    pg_url: str, make_env: Callable[..., Environment]
) -> None:
    env = make_env(pg_url, policy={"auto_rollback": True})
    run_migrations(env, DEFAULT_PROJECT, "0003")
    migrate(env, UNATTENDED, DEFAULT_PROJECT, QUIET)
    run_migrations(env, DEFAULT_PROJECT, "0005", "downgrade")  # someone moved it by hand
    with pytest.raises(BlockedError, match="at 0005, not at 0007"):
        undo(env)
    assert read_current(env) == "0005"


def test_rollback_of_a_run_that_changed_nothing_exits_0_and_reaches_no_further(
    pg_url: str, make_env: Callable[..., Environment]
) -> None:
    env = make_env(pg_url, policy={"auto_rollback": True})
    run_migrations(env, DEFAULT_PROJECT, "0003")
    migrate(env, UNATTENDED, DEFAULT_PROJECT, QUIET)  # 0003 -> 0007
    migrate(env, UNATTENDED, DEFAULT_PROJECT, QUIET)  # nothing to do
    said: list[str] = []
    assert rollback(env, False, True, False, console=Console(say=said.append)) is None
    assert "changed nothing" in said[-1]
    assert read_current(env) == "0007"


def test_rollback_never_goes_down_to_base(
    pg_url: str, make_env: Callable[..., Environment]
) -> None:
    env = make_env(pg_url, policy={"auto_rollback": True})
    record = migrate(env, UNATTENDED, DEFAULT_PROJECT, QUIET)
    assert record.pre_revision == "base"
    with pytest.raises(RefusedError, match="invoke downgrade --env staging --revision base"):
        undo(env)
    assert tables(env.url) == EXAMPLE_TABLES


def test_rollback_undoes_the_newest_run_only(
    pg_url: str, make_env: Callable[..., Environment]
) -> None:
    env = make_env(pg_url, policy={"auto_rollback": True})
    run_migrations(env, DEFAULT_PROJECT, "0002")
    migrate(env, RunOptions(yes=True, revision="0004"), DEFAULT_PROJECT, QUIET)
    migrate(env, UNATTENDED, DEFAULT_PROJECT, QUIET)
    undo(env)
    assert read_current(env) == "0004"
    with pytest.raises(RefusedError, match="was a rollback"):
        undo(env)
    assert read_current(env) == "0004"


def test_rollback_restore_keeps_its_backup_through_later_backups(
    pg_url: str, make_env: Callable[..., Environment]
) -> None:
    env = make_env(pg_url, policy={"auto_rollback": True}, backup={"keep": 1})
    run_migrations(env, DEFAULT_PROJECT, "0002")
    taken = migrate(env, RunOptions(yes=True, backup=True), DEFAULT_PROJECT, QUIET).backup
    backup(env, QUIET)  # keep: 1 would prune the migration's backup
    assert Path(taken["path"]).exists()
    record = undo(env, restore=True)
    assert record.restored_from == taken["path"] and read_current(env) == "0002"


def test_ten_runners_at_once_keep_every_reported_backup(pg_url: str, tmp_path: Path) -> None:
    write_environment(
        tmp_path / "environments",
        "staging",
        tmp_path / "var",
        migration={"lock_wait": 120},
        backup={"keep": 3},
    )
    env = {"MIGRATE_ENVIRONMENTS_DIR": str(tmp_path / "environments"), "DATABASE_URL": pg_url}
    invoke = str(Path(sys.executable).parent / "invoke")
    processes = [
        subprocess.Popen(
            [invoke, "migrate", "--env", "staging", "--yes", "--backup"],
            cwd=ROOT,
            env=os.environ | env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(10)
    ]
    assert [p.wait(timeout=300) for p in processes] == [0] * 10
    reports = [json.loads(p.read_text()) for p in (tmp_path / "var" / "reports").glob("*.json")]
    assert len(reports) == 10
    assert sorted(len(r["applied"]) for r in reports) == [0] * 9 + [7]
    backups = [r["backup"]["path"] for r in reports if r["backup"]]
    assert len(backups) == 1 and all(Path(p).exists() for p in backups)
    order = [s["name"] for r in reports if r["applied"] for s in r["steps"]]
    assert order.index("health") < order.index("backup") < order.index("upgrade")


def _kill_during_sleep(admin_url: str, database: str, close_database: bool) -> threading.Thread:
    """When the migration sleeps, end every session on ``database``, as a restart would."""

    def killer() -> None:
        engine = create_engine(admin_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            for _ in range(300):
                sleeping = connection.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = :d "
                        "AND query LIKE '%pg_sleep(30)%' AND state = 'active'"
                    ),
                    {"d": database},
                ).scalar()
                if sleeping:
                    break
                time.sleep(0.1)
            if close_database:
                connection.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false'))
            connection.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :d AND pid <> pg_backend_pid()"
                ),
                {"d": database},
            )
        engine.dispose()

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    return thread


def _three_revisions(scratch: ScratchProject) -> None:
    scratch.add('op.create_table("a", sa.Column("id", sa.Integer, primary_key=True))')
    scratch.add('op.create_table("b", sa.Column("id", sa.Integer, primary_key=True))')
    scratch.add('op.execute("SELECT pg_sleep(30)")')


@pytest.mark.parametrize("reachable_after", [True, False])
def test_server_lost_mid_revision_reports_the_truth(
    pg_url: str,
    pg_admin_url: str,
    scratch: ScratchProject,
    make_env: Callable[..., Environment],
    reachable_after: bool,
) -> None:
    env = make_env(pg_url)
    _three_revisions(scratch)
    database = make_url(pg_url).database
    killer = _kill_during_sleep(pg_admin_url, database, close_database=not reachable_after)
    try:
        with pytest.raises(MigrationError) as failure:
            migrate(env, UNATTENDED, scratch.project(), QUIET)
    finally:
        killer.join(30)
        admin = create_engine(pg_admin_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true'))
        admin.dispose()
    assert "r003" in failure.value.message and "terminat" in failure.value.message
    report = last_report(env)[1]
    assert report["failed_revision"] == "r003" and report["pre_revision"] == "base"
    assert "r003" in report["error"] and "unlock" not in report["error"]
    if reachable_after:
        assert report["post_revision"] == "r002"
    else:
        assert report["post_revision"] is None  # unknown, never copied from the pre-revision
        assert "could not be re-read" in report["error"]
    assert read_current(env) == "r002"
    assert {"a", "b"} <= tables(env.url)


def test_an_environment_never_reads_the_reports_of_one_whose_name_extends_it(
    tmp_path: Path, make_env: Callable[..., Environment]
) -> None:
    """``prod`` and ``prod-eu`` share a report folder: prod-eu's run is not prod's."""
    europe = make_env(f"sqlite:///{tmp_path / 'eu.db'}", name="prod-eu")
    home = make_env(f"sqlite:///{tmp_path / 'home.db'}", name="prod")
    assert europe.report_dir == home.report_dir
    migrate(europe, UNATTENDED, console=QUIET)
    assert last_report(europe) is not None
    assert last_report(home) is None
    with pytest.raises(RefusedError):
        rollback(home, False, True, False, console=QUIET)
    assert read_current(europe) is not None
