"""`invoke rehearse` (issue 18): the migration runs on a temporary copy, observed; the
environment's database is never changed, copies never outlive their run (nor does a
cleanup touch a live one), and production may require a recent passing rehearsal."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from helpers import (
    QUIET,
    ROOT,
    ScratchProject,
    cli_env,
    fresh_database,
    run_invoke,
    table_fingerprints,
)
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from safe_migrations.core.config import Environment, load_environment
from safe_migrations.core.errors import BlockedError, ConfigError
from safe_migrations.engines.scratch import CopyError
from safe_migrations.operations.rehearsal import RehearsalFailed, RehearsalRecord, rehearse
from safe_migrations.pipeline.context import Console
from safe_migrations.pipeline.migrate import migrate
from safe_migrations.pipeline.status import read_current
from safe_migrations.pipeline.upgrade import run_migrations

SCHEMA = json.loads(
    (ROOT / "tasks" / "safe_migrations" / "schemas" / "rehearsal-v1.schema.json").read_text()
)
ROWS = 300_000
BIG_TABLE = (
    'op.create_table("big", sa.Column("id", sa.Integer, primary_key=True), '
    'sa.Column("n", sa.Integer, nullable=False))\n'
    f'op.execute("INSERT INTO big (id, n) SELECT i, i % 1000 FROM generate_series(1, {ROWS}) i")'
)
VOLATILE_DEFAULT = (
    'op.add_column("big", sa.Column("r", sa.Float, server_default=sa.text("random()")))'
)
CONCURRENT_INDEX = (
    "with op.get_context().autocommit_block():\n"
    '    op.create_index("ix_big_n_concurrently", "big", ["n"], postgresql_concurrently=True)'
)
PLAIN_INDEX = 'op.create_index("ix_big_id_n", "big", ["id", "n"])'


def catalog(url: str) -> list[tuple[Any, ...]]:
    """Every table, column and index of the public schema, with each relation's file:
    a rewrite changes relfilenode even where the columns stay the same."""
    engine = create_engine(url, poolclass=NullPool)
    with engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT c.relname, c.relkind, c.relfilenode, a.attname, a.atttypid "
                "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 "
                "WHERE n.nspname = 'public' ORDER BY 1, 4"
            )
        ).all()
    engine.dispose()
    return [tuple(r) for r in rows]


def copies_on(admin_url: str, prefix: str = "rehearsal_") -> set[str]:
    engine = create_engine(admin_url, poolclass=NullPool)
    with engine.connect() as connection:
        names = connection.execute(
            text("SELECT datname FROM pg_database WHERE starts_with(datname, :p)"), {"p": prefix}
        ).scalars()
        found = set(names)
    engine.dispose()
    return found


@pytest.fixture(scope="module")
def big_database(pg_admin_url: str) -> Iterator[str]:
    """One database for the module, for 300,000 rows in ``big``; dropped after."""
    with fresh_database(pg_admin_url) as url:
        yield url


@pytest.fixture(scope="module")
def rehearsed(big_database: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One rehearsal of three revisions on the 300,000-row table, with the database's
    state before and after it."""
    from helpers import write_environment

    folder = tmp_path_factory.mktemp("rehearsed")
    scratch = ScratchProject(folder / "migrations")
    first = scratch.add(BIG_TABLE)
    scratch.add(VOLATILE_DEFAULT, message="add big.r with a volatile default")
    scratch.add(CONCURRENT_INDEX, message="index big.n concurrently")
    scratch.add(PLAIN_INDEX, message="index big (id, n) without concurrently")
    scratch.add('op.execute("UPDATE big SET n = n + 1 WHERE id <= 1000")', message="data")
    write_environment(folder / "environments", "staging", folder / "var")
    env = load_environment(
        "staging", environ={"DATABASE_URL": big_database}, directory=folder / "environments"
    )
    project = scratch.project()
    run_migrations(env, project, first)
    before = (catalog(big_database), table_fingerprints(big_database))
    record = rehearse(env, project=project, console=QUIET)
    after = (catalog(big_database), table_fingerprints(big_database))
    reports = sorted((folder / "var" / "reports" / "rehearsals").glob("*.json"))
    report = json.loads(reports[-1].read_text())
    return {
        "env": env,
        "record": record,
        "by_revision": {r["revision"]: r for r in report["revisions"]},
        "before": before,
        "after": after,
        "report": report,
        "markdown": reports[-1].with_suffix(".md").read_text(),
    }


def test_a_volatile_default_is_a_rewrite_holding_access_exclusive_for_a_measured_time(
    rehearsed: dict[str, Any],
) -> None:
    found = rehearsed["by_revision"]["r002"]
    assert [(r["relation"], r["kind"]) for r in found["rewrites"] if r["kind"] == "table"] == [
        ("big", "table")
    ]
    assert found["rewrites"][0]["size_bytes"] > 10 * 2**20  # 300,000 rows with a new column
    exclusive = [h for h in found["locks"] if h["mode"] == "ACCESS EXCLUSIVE"]
    assert [h["relation"] for h in exclusive] == ["big"]
    assert exclusive[0]["held_ms"] is not None and exclusive[0]["held_ms"] >= 20  # sampled
    assert found["longest_exclusive_ms"] == exclusive[0]["held_ms"]
    assert found["status"] == "blocks"
    assert "rewrites big" in found["verdict"]
    assert "blocks reads and writes on big" in found["verdict"]


def test_create_index_concurrently_is_reported_without_access_exclusive_on_the_table(
    rehearsed: dict[str, Any],
) -> None:
    found = rehearsed["by_revision"]["r003"]
    modes = {(h["relation"], h["mode"]) for h in found["locks"]}
    assert ("big", "ACCESS EXCLUSIVE") not in modes
    assert ("big", "SHARE") not in modes
    assert ("big", "SHARE UPDATE EXCLUSIVE") in modes  # what CONCURRENTLY takes, sampled
    assert found["plain_indexes"] == [] and found["status"] == "safe"


def test_a_plain_create_index_is_reported_as_blocking_writes(rehearsed: dict[str, Any]) -> None:
    found = rehearsed["by_revision"]["r004"]
    assert ("big", "SHARE") in {(h["relation"], h["mode"]) for h in found["locks"]}
    assert [(p["index"], p["table"]) for p in found["plain_indexes"]] == [("ix_big_id_n", "big")]
    assert "blocks writes on big (SHARE)" in found["verdict"]
    assert "without CONCURRENTLY" in found["verdict"]
    assert found["status"] == "blocks"


def test_a_data_migration_names_the_rows_it_holds_locked_until_it_commits(
    rehearsed: dict[str, Any],
) -> None:
    found = rehearsed["by_revision"]["r005"]
    assert found["rows_written"] == [{"relation": "big", "inserted": 0, "changed": 1000}]
    assert "updates or deletes 1,000 rows of big in one transaction" in found["verdict"]
    assert found["status"] == "blocks"
    assert rehearsed["by_revision"]["r004"]["rows_written"] == []  # an index build writes none


def test_the_environments_database_is_unchanged_and_no_copy_remains(
    rehearsed: dict[str, Any], big_database: str, pg_admin_url: str
) -> None:
    assert rehearsed["after"] == rehearsed["before"]  # catalog (files too) and every row
    assert read_current(rehearsed["env"]) == "r001"
    assert rehearsed["record"].copy["dropped"] is True
    assert copies_on(pg_admin_url) == set()


def test_the_report_follows_its_schema_and_says_how_it_observed(
    rehearsed: dict[str, Any],
) -> None:
    report = rehearsed["report"]
    jsonschema.validate(report, SCHEMA)
    assert report["success"] and report["exit_code"] == 0
    assert (report["pre_revision"], report["target_revision"]) == ("r001", "r005")
    assert report["sample_interval_ms"] == 20 and report["samples"] > 0
    assert report["samples_per_second"] > 10
    assert "sampled every 20" in rehearsed["markdown"]
    assert "| `r002` |" in rehearsed["markdown"]
    audit = (Path(rehearsed["env"].report_dir) / "audit.jsonl").read_text().splitlines()
    assert json.loads(audit[-1])["operation"] == "rehearse"


@pytest.fixture
def small_env(
    pg_url: str, make_env: Callable[..., Environment], scratch: ScratchProject
) -> Callable[..., tuple[Environment, ScratchProject]]:
    def build(**sections: Any) -> tuple[Environment, ScratchProject]:
        first = scratch.add('op.create_table("t", sa.Column("id", sa.Integer, primary_key=True))')
        env = make_env(pg_url, **sections)
        run_migrations(env, scratch.project(), first)
        return env, scratch

    return build


def test_a_failing_revision_is_reported_failed_and_its_copy_dropped(
    small_env: Callable[..., tuple[Environment, ScratchProject]], pg_admin_url: str, pg_url: str
) -> None:
    env, scratch = small_env()
    scratch.add('op.add_column("t", sa.Column("n", sa.Integer))\nop.execute("SELECT 1/0")')
    scratch.add('op.add_column("t", sa.Column("m", sa.Integer))')
    before = catalog(pg_url)
    with pytest.raises(RehearsalFailed, match="r002 failed on the copy"):
        rehearse(env, project=scratch.project(), console=QUIET)
    report = json.loads(sorted((env.report_dir / "rehearsals").glob("*.json"))[-1].read_text())
    jsonschema.validate(report, SCHEMA)
    statuses = [(r["revision"], r["status"]) for r in report["revisions"]]
    assert statuses == [("r002", "failed"), ("r003", "not run")]
    assert "division by zero" in report["revisions"][0]["error"]
    assert "SELECT 1/0" in report["revisions"][0]["statement"]
    assert report["exit_code"] == 1 and report["copy"]["dropped"] is True
    assert copies_on(pg_admin_url) == set()
    assert catalog(pg_url) == before and read_current(env) == "r001"


def test_an_exclusive_hold_over_the_limit_fails_the_rehearsal(
    small_env: Callable[..., tuple[Environment, ScratchProject]], tmp_path: Path, pg_url: str
) -> None:
    env, scratch = small_env(policy={"max_exclusive_lock_ms": 40})
    scratch.add(
        'op.execute("INSERT INTO t SELECT generate_series(1, 200000)")\n'
        'op.add_column("t", sa.Column("r", sa.Float, server_default=sa.text("random()")))'
    )
    variables = cli_env(
        tmp_path,
        pg_url,
        policy={"max_exclusive_lock_ms": 40},
        alembic={"script_location": str(scratch.folder)},
    )
    result = run_invoke("rehearse", "--env", "staging", "--json", env=variables)
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    jsonschema.validate(report, SCHEMA)
    broken = report["revisions"][0]["limits_broken"]
    assert broken and "over policy.max_exclusive_lock_ms=40" in broken[0]
    assert "broke the environment's limits" in result.stderr
    password = make_url(pg_url).password
    if password:  # the tests' own cluster has one, with shell metacharacters
        files = [p.read_bytes() for p in (tmp_path / "var").rglob("*") if p.is_file()]
        assert files and all(password.encode() not in data for data in files)
        assert password not in result.stdout + result.stderr


def test_a_copy_on_the_rehearsal_server_from_the_latest_backup(
    small_env: Callable[..., tuple[Environment, ScratchProject]],
    pg_admin_url: str,
    pg_url: str,
) -> None:
    from safe_migrations.operations.standalone import backup

    env, scratch = small_env(rehearsal={"server": pg_admin_url, "prefix": "elsewhere_"})
    scratch.add('op.add_column("t", sa.Column("n", sa.Integer))')
    taken = backup(env, QUIET).backup
    assert taken is not None
    record = rehearse(env, from_backup="latest", project=scratch.project(), console=QUIET)
    assert record.success and record.backup and record.backup["path"] == taken["path"]
    assert record.copy and record.copy["name"].startswith("elsewhere_")
    assert make_url(pg_admin_url).database in record.copy["server"]
    assert copies_on(pg_admin_url, "elsewhere_") == set() and read_current(env) == "r001"


def test_a_lock_limit_below_two_sampling_intervals_is_refused_when_loaded(
    pg_url: str, make_env: Callable[..., Environment]
) -> None:
    with pytest.raises(ConfigError, match="below 40 ms"):
        make_env(pg_url, policy={"max_exclusive_lock_ms": 39})


def _copy_appears(admin_url: str, seen: set[str], timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fresh = copies_on(admin_url) - seen
        if fresh:
            return fresh.pop()
        time.sleep(0.1)
    raise AssertionError("no copy appeared")


def _slow_rehearsal(tmp_path: Path, url: str, scratch: ScratchProject) -> subprocess.Popen[str]:
    """`invoke rehearse` through the CLI, on a revision that sleeps for a minute."""
    import os
    import shutil
    import sys

    variables = cli_env(tmp_path, url, alembic={"script_location": str(scratch.folder)})
    invoke = shutil.which("invoke", path=str(Path(sys.executable).parent)) or "invoke"
    return subprocess.Popen(
        [invoke, "rehearse", "--env", "staging"],
        cwd=ROOT,
        env={**os.environ, **variables},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_sigterm_drops_the_copy_and_leaves_the_database_alone(
    small_env: Callable[..., tuple[Environment, ScratchProject]],
    tmp_path: Path,
    pg_url: str,
    pg_admin_url: str,
) -> None:
    env, scratch = small_env()
    scratch.add('op.add_column("t", sa.Column("n", sa.Integer))\nop.execute("SELECT pg_sleep(60)")')
    before = catalog(pg_url)
    process = _slow_rehearsal(tmp_path, pg_url, scratch)
    _copy_appears(pg_admin_url, set())
    time.sleep(1.5)  # into the sleeping revision
    process.send_signal(signal.SIGTERM)
    _out, err = process.communicate(timeout=30)
    assert process.returncode == 3, err
    assert "interrupted" in err and "Traceback" not in err
    assert copies_on(pg_admin_url) == set()
    assert catalog(pg_url) == before and read_current(env) == "r001"


def test_a_live_rehearsals_copy_survives_another_cleanup_and_a_killed_ones_does_not(
    small_env: Callable[..., tuple[Environment, ScratchProject]],
    tmp_path: Path,
    pg_url: str,
    pg_admin_url: str,
    make_env: Callable[..., Environment],
) -> None:
    env, scratch = small_env()
    admin = create_engine(pg_admin_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:  # the prefix, but not a copy's name: never dropped
        connection.execute(text('CREATE DATABASE "rehearsal_keep_me"'))
    try:
        slow = ScratchProject(tmp_path / "slow")
        slow.add('op.create_table("t", sa.Column("id", sa.Integer, primary_key=True))')
        slow.add('op.execute("SELECT pg_sleep(60)")')
        process = _slow_rehearsal(tmp_path / "a", pg_url, slow)
        live = _copy_appears(pg_admin_url, {"rehearsal_keep_me"})
        scratch.add('op.add_column("t", sa.Column("n", sa.Integer))')
        record: RehearsalRecord = rehearse(env, project=scratch.project(), console=QUIET)
        assert record.success and live in copies_on(pg_admin_url)  # untouched while alive
        process.kill()  # SIGKILL: no cleanup of its own
        process.communicate(timeout=30)
        time.sleep(0.5)  # the server notices the closed connection and frees its lock
        assert live in copies_on(pg_admin_url)
        again = rehearse(env, project=scratch.project(), console=QUIET)
        assert again.success
        assert copies_on(pg_admin_url) == {"rehearsal_keep_me"}
    finally:
        with admin.connect() as connection:
            connection.execute(text('DROP DATABASE IF EXISTS "rehearsal_keep_me" WITH (FORCE)'))
        admin.dispose()


def test_policy_requires_a_fresh_rehearsal_of_the_same_range_and_scripts(
    small_env: Callable[..., tuple[Environment, ScratchProject]],
) -> None:
    from helpers import UNATTENDED

    env, scratch = small_env(policy={"require_rehearsal_hours": 1, "confirm": "never"})
    second = scratch.add('op.add_column("t", sa.Column("n", sa.Integer))')
    project = scratch.project()
    with pytest.raises(BlockedError, match="No rehearsal of r001 -> r002") as refused:
        migrate(env, UNATTENDED, project, QUIET)
    assert refused.value.exit_code == 3 and "invoke rehearse --env staging" in str(refused.value)
    rehearse(env, project=project, console=QUIET)
    path = scratch.folder / "versions" / f"{second}.py"
    path.write_text(path.read_text() + "\n# edited after the rehearsal\n")
    with pytest.raises(BlockedError, match="with these revision scripts"):
        migrate(env, UNATTENDED, project, QUIET)
    assert read_current(env) == "r001"
    rehearse(env, project=project, console=QUIET)
    record = migrate(env, UNATTENDED, project, QUIET)
    assert record.success and read_current(env) == "r002"
    assert any(s["name"] == "rehearsal" and s["ok"] for s in record.steps)


def test_an_old_or_failed_rehearsal_is_no_proof(
    small_env: Callable[..., tuple[Environment, ScratchProject]],
) -> None:
    from datetime import UTC, datetime, timedelta

    from safe_migrations.operations.proof import record_proof, require_rehearsal, scripts_digest
    from safe_migrations.pipeline.upgrade import plan

    env, scratch = small_env(policy={"require_rehearsal_hours": 2})
    scratch.add('op.add_column("t", sa.Column("n", sa.Integer))')
    project = scratch.project()
    path = plan(project, "r001", "r002", "upgrade")
    digest = scripts_digest(project, path)
    old = datetime.now(UTC) - timedelta(hours=3)
    assert record_proof(env, "r001", "r002", digest, True, "old.json", now=old) is None
    with pytest.raises(BlockedError, match="3.0 h old, older than 2 h"):
        require_rehearsal(env, project, "r001", "r002", path)
    assert record_proof(env, "r001", "r002", digest, False, "failed.json") is None
    with pytest.raises(BlockedError, match="failed"):
        require_rehearsal(env, project, "r001", "r002", path)


def test_sqlite_rehearsal_times_each_revision_on_a_copy_of_the_file(
    sqlite_url: str, make_env: Callable[..., Environment], scratch: ScratchProject
) -> None:
    from safe_migrations.core.database import sqlite_path
    from safe_migrations.engines.sqlitecopies import copies_folder

    first = scratch.add('op.create_table("t", sa.Column("id", sa.Integer, primary_key=True))')
    scratch.add('op.add_column("t", sa.Column("n", sa.Integer))')
    env = make_env(sqlite_url)
    run_migrations(env, scratch.project(), first)
    database = Path(sqlite_path(env.url) or "")
    before = database.read_bytes()
    record = rehearse(env, project=scratch.project(), console=QUIET)
    assert record.success and [r["revision"] for r in record.revisions] == ["r002"]
    assert record.revisions[0]["duration_ms"] >= 0 and record.revisions[0]["locks"] == []
    assert "PostgreSQL-only" in (record.lock_details or "")
    assert record.revisions[0]["status"] == "timed" and "timed only" in record.verdict
    assert read_current(env) == "r001"
    assert not list(copies_folder().glob(f"{record.copy['name']}*"))
    proof_row = database.read_bytes() != before  # the proof row, and nothing else
    assert proof_row
    engine = create_engine(env.url, poolclass=NullPool)
    with engine.connect() as connection:
        tables = set(
            connection.execute(text("SELECT name FROM sqlite_master WHERE type='table'")).scalars()
        )
    engine.dispose()
    assert tables == {"alembic_version", "t", "safe_migrations_rehearsals"}


def test_a_role_without_createdb_is_told_before_any_backup_and_a_proof_it_cannot_write_warns(
    role_url: str, pg_admin_url: str, make_env: Callable[..., Environment], scratch: ScratchProject
) -> None:
    first = scratch.add('op.create_table("t", sa.Column("id", sa.Integer, primary_key=True))')
    scratch.add('op.add_column("t", sa.Column("n", sa.Integer))')
    env = make_env(role_url)
    run_migrations(env, scratch.project(), first)
    with pytest.raises(CopyError, match="may not create databases; give it CREATEDB"):
        rehearse(env, project=scratch.project(), console=QUIET)
    assert not list(env.backup_dir.glob("*.dump"))  # told before any backup
    warnings: list[str] = []
    elsewhere = make_env(role_url, rehearsal={"server": pg_admin_url})
    console = Console(say=lambda _t: None, ask=lambda _p: "no", warn=warnings.append)
    record = rehearse(elsewhere, project=scratch.project(), console=console)
    assert record.success and record.copy and record.copy["dropped"] is True
    assert record.proof and "could not be written to safe_migrations.rehearsals" in record.proof
    assert "CREATE SCHEMA safe_migrations AUTHORIZATION" in warnings[0]
    assert read_current(env) == "r001"


def test_a_lock_held_through_a_slow_commit_belongs_to_its_own_revision(
    small_env: Callable[..., tuple[Environment, ScratchProject]], tmp_path: Path
) -> None:
    """A deferred trigger makes r003's commit take 0.4 s after its body (instant) ran:
    its ACCESS EXCLUSIVE is seen only while it commits, and is still r003's, not r004's."""
    env, scratch = small_env()
    scratch.add(
        'op.execute("CREATE TABLE slow_commit (id int)")\n'
        'op.execute("CREATE FUNCTION nap() RETURNS trigger LANGUAGE plpgsql AS '
        '$$ BEGIN PERFORM pg_sleep(0.4); RETURN NULL; END $$")\n'
        'op.execute("CREATE CONSTRAINT TRIGGER nap AFTER INSERT ON slow_commit '
        'DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION nap()")'
    )
    run_migrations(env, scratch.project(), "r002")
    scratch.add(
        'op.add_column("t", sa.Column("n", sa.Integer))\n'
        'op.execute("INSERT INTO slow_commit VALUES (1)")'
    )
    scratch.add('op.create_table("other", sa.Column("id", sa.Integer, primary_key=True))')
    record = rehearse(env, project=scratch.project(), console=QUIET)
    locks = {
        r["revision"]: {(h["relation"], h["mode"]): h["held_ms"] for h in r["locks"]}
        for r in record.revisions
    }
    assert (locks["r003"][("t", "ACCESS EXCLUSIVE")] or 0) >= 300
    assert ("t", "ACCESS EXCLUSIVE") not in locks["r004"]


def test_a_forged_proof_does_not_count(
    small_env: Callable[..., tuple[Environment, ScratchProject]],
    role_url: str,
    pg_admin_url: str,
    pg_url: str,
) -> None:
    """A row dated in the future, a row inserted by hand, and a proof table made first by
    a role with only CREATE on the database: none lets `migrate` through."""
    from datetime import UTC, datetime, timedelta

    from sqlalchemy.engine import make_url

    from safe_migrations.operations.proof import (
        _table,
        record_proof,
        require_rehearsal,
        scripts_digest,
    )
    from safe_migrations.pipeline.upgrade import plan

    env, scratch = small_env(policy={"require_rehearsal_hours": 2})
    scratch.add('op.add_column("t", sa.Column("n", sa.Integer))')
    project = scratch.project()
    path = plan(project, "r001", "r002", "upgrade")
    digest = scripts_digest(project, path)

    tomorrow = datetime.now(UTC) + timedelta(days=1)
    assert record_proof(env, "r001", "r002", digest, True, "future.json", now=tomorrow) is None
    with pytest.raises(BlockedError, match="in the future"):
        require_rehearsal(env, project, "r001", "r002", path)
    assert record_proof(env, "r001", "r002", digest, False, "failed.json") is None
    with pytest.raises(BlockedError, match="failed"):  # the newest written, not the latest date
        require_rehearsal(env, project, "r001", "r002", path)

    table = _table(env)

    def a_pass(report: str, **signed: str) -> Any:  # a row as someone writes it by hand
        return table.insert().values(
            finished_at=datetime.now(UTC),
            environment=env.name,
            from_revision="r001",
            to_revision="r002",
            scripts_sha256=digest,
            passed=True,
            report=report,
            **signed,
        )

    engine = create_engine(pg_url, poolclass=NullPool)
    with engine.begin() as connection:
        connection.execute(a_pass("by-hand.json", signature="0" * 64))
    with pytest.raises(BlockedError, match="not signed with this machine's proof key"):
        require_rehearsal(env, project, "r001", "r002", path)

    with engine.begin() as connection:
        connection.execute(text("DROP SCHEMA safe_migrations CASCADE"))
    engine.dispose()
    intruder = make_url(role_url).username
    admin = create_engine(pg_admin_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        database = make_url(pg_url).database
        connection.execute(text(f'GRANT CREATE ON DATABASE "{database}" TO {intruder}'))
    admin.dispose()
    forger = create_engine(role_url, poolclass=NullPool)
    with forger.begin() as connection:  # only CREATE on the database: makes the table first
        connection.execute(text("CREATE SCHEMA safe_migrations"))
        table.create(connection)
        connection.execute(a_pass("forged.json"))
    forger.dispose()
    with pytest.raises(BlockedError, match=f"belongs to role {intruder}"):
        require_rehearsal(env, project, "r001", "r002", path)
    why = record_proof(env, "r001", "r002", digest, True, "real.json")
    assert why is not None and f"belongs to role {intruder}" in why


def test_consecutive_revisions_locking_the_same_table_each_get_their_own_hold(
    small_env: Callable[..., tuple[Environment, ScratchProject]],
) -> None:
    """r002 and r003 each hold ACCESS EXCLUSIVE on t for about 0.5 s, back to back: the
    sampler sees one unbroken run, which is split at r002's commit."""
    env, scratch = small_env()
    for column in ("a", "b"):
        scratch.add(
            f'op.add_column("t", sa.Column("{column}", sa.Integer))\n'
            'op.execute("SELECT pg_sleep(0.5)")'
        )
    record = rehearse(env, project=scratch.project(), console=QUIET)
    held = {
        r["revision"]: next(
            h["held_ms"]
            for h in r["locks"]
            if (h["relation"], h["mode"]) == ("t", "ACCESS EXCLUSIVE")
        )
        for r in record.revisions
    }
    assert 400 <= (held["r002"] or 0) < 800, held
    assert 400 <= (held["r003"] or 0) < 800, held


def test_a_server_lost_mid_rehearsal_names_the_copy_left_and_the_next_rehearsal_drops_it(
    small_env: Callable[..., tuple[Environment, ScratchProject]],
    pg_admin_url: str,
    pg_url: str,
) -> None:
    """As a restart would: every session ends while the copy's revision sleeps, and the
    server takes no connection until it is back."""
    import threading
    import time

    from sqlalchemy.engine import make_url

    from safe_migrations.core.errors import ToolError

    env, scratch = small_env()
    sleeping = scratch.add('op.execute("SELECT pg_sleep(30)")')
    database = make_url(pg_url).database
    admin = create_engine(pg_admin_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")

    def restart() -> None:
        with admin.connect() as connection:
            for _ in range(300):
                copy = connection.execute(
                    text(
                        "SELECT datname FROM pg_stat_activity WHERE datname LIKE 'rehearsal_%' "
                        "AND query LIKE '%pg_sleep(30)%' AND state = 'active'"
                    )
                ).scalar()
                if copy:
                    break
                time.sleep(0.1)
            for name in (database, copy):
                connection.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
            connection.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname IN (:a, :b) AND pid <> pg_backend_pid()"
                ),
                {"a": database, "b": copy},
            )

    killer = threading.Thread(target=restart, daemon=True)
    killer.start()
    with pytest.raises(ToolError) as lost:
        rehearse(env, project=scratch.project(), console=QUIET)
    killer.join(10)
    left = copies_on(pg_admin_url)
    assert len(left) == 1
    (name,) = left
    assert (
        f"The copy {name}" in lost.value.message and "next rehearsal drops it" in lost.value.message
    )

    with admin.connect() as connection:  # the server is back
        for each in (database, name):
            connection.execute(text(f'ALTER DATABASE "{each}" ALLOW_CONNECTIONS true'))
    admin.dispose()
    path = scratch.folder / "versions" / f"{sleeping}.py"
    path.write_text(path.read_text().replace("pg_sleep(30)", "pg_sleep(0)"))
    again = rehearse(env, project=scratch.project(), console=QUIET)
    assert again.success and copies_on(pg_admin_url) == set()


def test_a_rehearsal_that_fails_while_migrate_waits_for_the_lock_stops_it(
    small_env: Callable[..., tuple[Environment, ScratchProject]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The proof is read again under the migration lock: a failed rehearsal recorded
    between the first check and the lock is the newest, and it refuses."""
    from helpers import UNATTENDED

    from safe_migrations.operations.proof import record_proof, scripts_digest
    from safe_migrations.pipeline import migrate as pipeline
    from safe_migrations.pipeline.upgrade import plan

    env, scratch = small_env(policy={"require_rehearsal_hours": 1, "confirm": "never"})
    scratch.add('op.add_column("t", sa.Column("n", sa.Integer))')
    project = scratch.project()
    rehearse(env, project=project, console=QUIET)
    digest = scripts_digest(project, plan(project, "r001", "r002", "upgrade"))
    checked = pipeline.rehearsed_step

    def then_a_failed_rehearsal(run: Any) -> None:
        checked(run)
        assert record_proof(env, "r001", "r002", digest, False, "failed.json") is None

    monkeypatch.setattr(pipeline, "rehearsed_step", then_a_failed_rehearsal)
    with pytest.raises(BlockedError, match="failed"):
        migrate(env, UNATTENDED, project, QUIET)
    assert read_current(env) == "r001"


def test_each_revision_counts_only_its_own_row_writes(
    pg_url: str, scratch: ScratchProject, make_env: Callable[..., Environment]
) -> None:
    """PostgreSQL 15 keeps a backend's unflushed counts in pg_stat_xact_user_tables across
    its transactions: a revision that only adds a column was reported as writing rows."""
    from safe_migrations.engines.pgobserver import RevisionObserver
    from safe_migrations.pipeline.upgrade import run_migrations

    scratch.add(
        'op.create_table("w", sa.Column("id", sa.Integer, primary_key=True))\n'
        'op.execute("INSERT INTO w SELECT generate_series(1, 1000)")'
    )
    scratch.add('op.add_column("w", sa.Column("note", sa.Text))')
    scratch.add("op.execute(\"UPDATE w SET note = 'x' WHERE id <= 10\")")
    env = make_env(pg_url)
    observer = RevisionObserver(env)
    try:
        run_migrations(env, scratch.project(), "head", observer=observer)
    finally:
        observer.stop()
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    engine = create_engine(pg_url, poolclass=NullPool)
    with engine.connect() as connection:
        table = int(connection.execute(text("SELECT 'w'::regclass::oid")).scalar())
    engine.dispose()
    rows = {w.revision: w.rows.get(table) for w in observer.windows}
    assert rows == {"r001": (1000, 0), "r002": None, "r003": (0, 10)}
