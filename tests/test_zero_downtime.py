"""Zero-downtime by construction on PostgreSQL (`migration.safe_operations: rewrite`):
each common Alembic operation, written plainly in a revision, runs in its non-blocking
form on a table of 1,000,000 rows; an observer on a second connection sees no lock that
blocks writes held for more than 0.5 s, and the schema equals the bare form's."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from helpers import ScratchProject, fresh_database
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.pool import NullPool

from safe_migrations.core.config import Environment
from safe_migrations.core.errors import RefusedError
from safe_migrations.pipeline.upgrade import MigrationError, run_migrations

ROWS = 1_000_000
WRITE_BLOCKING = ("ShareLock", "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock")
BASE = """
op.create_table(
    "t",
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("v", sa.Integer),
    sa.Column("ref", sa.Integer),
)
op.create_table("parent", sa.Column("id", sa.Integer, primary_key=True))
op.execute("INSERT INTO parent SELECT i FROM generate_series(0, 99) i")
op.execute(
    "INSERT INTO t SELECT i, i, i % 100 FROM generate_series(1, {rows}) i"
)
op.create_table("k", sa.Column("id", sa.Integer), sa.Column("v", sa.Integer))
op.execute("INSERT INTO k SELECT i, i FROM generate_series(1, {keyed}) i")
"""
OPERATIONS = {
    "create_index": 'op.create_index("ix_t_v", "t", ["v"])',
    "create_unique_index": 'op.create_index("ux_t_v", "t", ["v"], unique=True)',
    "create_foreign_key": 'op.create_foreign_key("fk_t_ref", "t", "parent", ["ref"], ["id"])',
    "create_check_constraint": 'op.create_check_constraint("ck_t_v", "t", "v > 0")',
    "alter_column_not_null": 'op.alter_column("t", "v", existing_type=sa.Integer, nullable=False)',
    "create_unique_constraint": 'op.create_unique_constraint("uq_t_v", "t", ["v"])',
    "create_primary_key": 'op.create_primary_key("pk_k", "k", ["id"])',
}
ON_TABLE = {"create_primary_key": "k"}  # the table each operation works on (else t)


def snapshot(url: str) -> dict[str, Any]:
    """What Alembic's compare looks at, per table: columns, nullability, indexes,
    constraints, with their names."""
    engine = create_engine(url, poolclass=NullPool)
    try:
        found = inspect(engine)
        shape: dict[str, Any] = {}
        for table in sorted(found.get_table_names()):
            if table == "alembic_version":
                continue
            shape[table] = {
                "columns": [
                    (c["name"], str(c["type"]), c["nullable"]) for c in found.get_columns(table)
                ],
                "pk": found.get_pk_constraint(table),
                "indexes": sorted(
                    (i["name"], tuple(i["column_names"]), bool(i["unique"]))
                    for i in found.get_indexes(table)
                ),
                "unique": sorted(
                    (u["name"], tuple(u["column_names"]))
                    for u in found.get_unique_constraints(table)
                ),
                "checks": sorted(
                    (c["name"], c["sqltext"]) for c in found.get_check_constraints(table)
                ),
                "fks": sorted(
                    (f["name"], tuple(f["constrained_columns"]), f["referred_table"])
                    for f in found.get_foreign_keys(table)
                ),
            }
        with engine.connect() as connection:
            shape["invalid_indexes"] = connection.execute(
                text("SELECT count(*) FROM pg_index WHERE NOT indisvalid")
            ).scalar()
            shape["unvalidated"] = connection.execute(
                text("SELECT count(*) FROM pg_constraint WHERE NOT convalidated")
            ).scalar()
        return shape
    finally:
        engine.dispose()


@contextmanager
def write_blocking_holds(url: str, table: str = "t") -> Iterator[list[float]]:
    """Samples pg_locks every 5 ms from a second connection; yields the list that gets,
    after the block, the length of each continuous hold of a write-blocking lock."""
    holds: list[float] = []
    stop = threading.Event()

    def sample() -> None:
        engine = create_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
        since: float | None = None
        with engine.connect() as connection:
            while not stop.is_set():
                held = connection.execute(
                    text(
                        "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                        "WHERE c.relname = :t AND l.granted AND l.mode = ANY(:modes)"
                    ),
                    {"t": table, "modes": list(WRITE_BLOCKING)},
                ).scalar()
                now = time.perf_counter()
                if held and since is None:
                    since = now
                elif not held and since is not None:
                    holds.append(now - since)
                    since = None
                time.sleep(0.005)
            if since is not None:
                holds.append(time.perf_counter() - since)
        engine.dispose()

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    time.sleep(0.2)
    try:
        yield holds
    finally:
        stop.set()
        sampler.join(10)


def project_with(scratch: ScratchProject, operation: str, rows: int = ROWS, keyed: int = 10) -> Any:
    scratch.add(BASE.format(rows=rows, keyed=keyed))
    scratch.add(operation)
    return scratch.project()


@pytest.fixture
def second_url(pg_admin_url: str) -> Iterator[str]:
    with fresh_database(pg_admin_url) as url:
        yield url


@pytest.mark.parametrize("name", sorted(OPERATIONS))
def test_each_operation_runs_without_a_write_blocking_hold_and_ends_as_the_bare_form(
    name: str,
    pg_url: str,
    second_url: str,
    make_env: Callable[..., Environment],
    scratch: ScratchProject,
    tmp_path: Path,
) -> None:
    table = ON_TABLE.get(name, "t")
    rows, keyed = (10, ROWS) if table == "k" else (ROWS, 10)
    project = project_with(scratch, OPERATIONS[name], rows=rows, keyed=keyed)
    # The bare form's schema, from the same revisions on a small table (rows do not
    # change the schema).
    small = project_with(ScratchProject(tmp_path / "bare"), OPERATIONS[name], rows=10)
    safe = make_env(pg_url, migration={"safe_operations": "rewrite", "lock_timeout": 0.2})
    bare = make_env(second_url, name="bare", migration={"safe_operations": "off"})
    run_migrations(safe, project, "r001")
    with write_blocking_holds(pg_url, table) as holds:
        applied = run_migrations(safe, project, "r002")
    assert applied[-1].rewritten, applied  # the report lists what was rewritten
    assert max(holds, default=0.0) < 0.5, holds
    run_migrations(bare, small, "r002")
    assert snapshot(pg_url) == snapshot(second_url)
    assert snapshot(pg_url)["invalid_indexes"] == 0 and snapshot(pg_url)["unvalidated"] == 0


def test_bare_alembic_holds_a_write_blocking_lock_for_the_whole_build(
    pg_url: str, make_env: Callable[..., Environment], scratch: ScratchProject
) -> None:
    """The observer can fail: the same index built as written holds SHARE for the build."""
    project = project_with(scratch, OPERATIONS["create_index"], rows=3_000_000)
    bare = make_env(pg_url, migration={"safe_operations": "off"})
    run_migrations(bare, project, "r001")
    with write_blocking_holds(pg_url) as holds:
        run_migrations(bare, project, "r002")
    assert max(holds, default=0.0) >= 0.5, holds


def test_a_concurrent_build_killed_midway_leaves_no_invalid_index_and_a_rerun_completes(
    pg_url: str, make_env: Callable[..., Environment], scratch: ScratchProject
) -> None:
    project = project_with(scratch, OPERATIONS["create_index"], rows=3_000_000)
    env = make_env(pg_url, migration={"safe_operations": "rewrite"})
    run_migrations(env, project, "r001")
    admin = create_engine(pg_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    killed: list[int] = []

    def kill_the_build() -> None:
        deadline = time.monotonic() + 30
        with admin.connect() as connection:
            while time.monotonic() < deadline and not killed:
                pid = connection.execute(
                    text(
                        "SELECT pid FROM pg_stat_activity WHERE query LIKE "
                        "'CREATE INDEX CONCURRENTLY%' AND state = 'active'"
                    )
                ).scalar()
                if pid is not None:
                    time.sleep(0.3)  # midway through the build
                    connection.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
                    killed.append(pid)
                time.sleep(0.02)

    killer = threading.Thread(target=kill_the_build)
    killer.start()
    with pytest.raises(MigrationError):
        run_migrations(env, project, "r002")
    killer.join()
    assert killed
    assert snapshot(pg_url)["invalid_indexes"] == 0
    run_migrations(env, project, "r002")
    with admin.connect() as connection:
        valid = connection.execute(
            text("SELECT indisvalid FROM pg_index WHERE indexrelid = 'ix_t_v'::regclass")
        ).scalar()
        version = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    admin.dispose()
    assert valid is True and version == "r002"


def test_a_volatile_default_on_a_table_with_rows_is_refused_before_any_statement(
    pg_url: str, make_env: Callable[..., Environment], scratch: ScratchProject
) -> None:
    scratch.add(BASE.format(rows=1000, keyed=10))
    scratch.add(OPERATIONS["create_index"])
    scratch.add(
        'op.add_column("t", sa.Column("token", sa.Text, '
        'server_default=sa.text("md5(random()::text)")))'
    )
    project = scratch.project()
    env = make_env(pg_url, migration={"safe_operations": "rewrite"})
    run_migrations(env, project, "r001")
    with pytest.raises(RefusedError) as refused:
        run_migrations(env, project, "r003")
    assert refused.value.exit_code == 2
    message = refused.value.message
    assert "revision r003" in message and "volatile default" in message
    assert "backfill" in message and "squawk: allow adding-field-with-default" in message
    shape = snapshot(pg_url)
    assert [i for i in shape["t"]["indexes"] if i[0] == "ix_t_v"] == []  # r002 did not run
    assert "token" not in [c[0] for c in shape["t"]["columns"]]


def test_the_allow_marker_takes_the_risk_knowingly(
    pg_url: str, make_env: Callable[..., Environment], scratch: ScratchProject
) -> None:
    scratch.add(BASE.format(rows=1000, keyed=10))
    scratch.add(
        "# squawk: allow adding-field-with-default -- a 1,000-row table\n"
        'op.add_column("t", sa.Column("token", sa.Text, '
        'server_default=sa.text("md5(random()::text)")))'
    )
    env = make_env(pg_url, migration={"safe_operations": "rewrite"})
    run_migrations(env, scratch.project(), "r002")
    assert "token" in [c[0] for c in snapshot(pg_url)["t"]["columns"]]


def test_check_mode_refuses_what_rewrite_would_change_and_off_runs_it_as_written(
    pg_url: str, make_env: Callable[..., Environment], scratch: ScratchProject
) -> None:
    project = project_with(scratch, OPERATIONS["create_index"], rows=1000)
    checked = make_env(pg_url, migration={"safe_operations": "check"})
    run_migrations(checked, project, "r001")
    with pytest.raises(RefusedError, match="would block the application.*op.create_index on t"):
        run_migrations(checked, project, "r002")
    plain = make_env(pg_url, name="plain", migration={"safe_operations": "off"})
    assert not run_migrations(plain, project, "r002")[-1].rewritten


def test_an_unknown_mode_is_one_sentence(make_env: Callable[..., Environment]) -> None:
    from safe_migrations.core.errors import ConfigError

    with pytest.raises(ConfigError, match="safe_operations' must be one of 'rewrite', 'check'"):
        make_env("sqlite:///x.db", migration={"safe_operations": "sometimes"})


def test_lint_and_dry_run_show_the_rewritten_form(
    pg_url: str, make_env: Callable[..., Environment], scratch: ScratchProject
) -> None:
    from safe_migrations.engines import engine_for
    from safe_migrations.pipeline.migrate import Console, RunOptions, migrate
    from safe_migrations.project.alembic_api import upgrade_path

    project = project_with(scratch, OPERATIONS["create_index"], rows=10)
    path = upgrade_path(project.scripts(), "r001", "r002")
    bare = make_env(pg_url, name="bare", migration={"safe_operations": "off"})
    safe = make_env(pg_url, migration={"safe_operations": "rewrite"})
    written = engine_for("postgresql").lint(bare, project, path, None)
    rewritten = engine_for("postgresql").lint(safe, project, path, None)
    assert "require-concurrent-index-creation" in {f.rule for f in written.findings}
    assert "require-concurrent-index-creation" not in {f.rule for f in rewritten.findings}
    assert "removed by safe_operations' rewrite" in (rewritten.note or "")
    assert "r002 require-concurrent-index-creation" in (rewritten.note or "")
    said: list[str] = []
    console = Console(say=said.append)
    run_migrations(safe, project, "r001")
    migrate(safe, RunOptions(yes=True, dry_run=True, backup=False), project, console)
    printed = "\n".join(said)
    assert "CREATE INDEX CONCURRENTLY ix_t_v ON t (v)" in printed


BACKFILL = """
from safe_migrations.ops import backfill

done = backfill("t", {{"note": "'v' || v"}}, batch_size=1000)
assert done.rows {expected}, done
"""
STOP_AT_15000 = """
CREATE FUNCTION stop_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN IF NEW.id = 15000 THEN RAISE EXCEPTION 'interrupted at 15000'; END IF; RETURN NEW; END $$;
CREATE TRIGGER stop_at BEFORE UPDATE ON t FOR EACH ROW EXECUTE FUNCTION stop_at();
"""


def test_backfill_updates_in_batches_resumes_from_the_data_and_is_reported(
    pg_url: str, make_env: Callable[..., Environment], scratch: ScratchProject
) -> None:
    """A third of the rows done before; a batch fails midway (a trigger stops at one row):
    the batches before it stay committed, and the rerun does exactly the rest."""
    scratch.add(
        BASE.format(rows=30_000, keyed=10) + '\nop.add_column("t", sa.Column("note", sa.Text))'
    )
    env = make_env(pg_url, migration={"safe_operations": "rewrite"})
    run_migrations(env, scratch.project(), "r001")
    engine = create_engine(pg_url, poolclass=NullPool)
    with engine.begin() as connection:
        connection.execute(text("UPDATE t SET note = 'v' || v WHERE id <= 10000"))
        connection.exec_driver_sql(STOP_AT_15000)
    revision = scratch.add(BACKFILL.format(expected="> 0"))
    with pytest.raises(MigrationError, match="interrupted at 15000"):
        run_migrations(env, scratch.project(), revision)

    def left() -> int:
        with engine.connect() as connection:
            return int(
                connection.execute(text("SELECT count(*) FROM t WHERE note IS NULL")).scalar()
            )

    with engine.connect() as connection:
        first_left = connection.execute(text("SELECT min(id) FROM t WHERE note IS NULL")).scalar()
    # The batches before the failing one stay committed (none holds more than 1000 rows);
    # the failing batch, with 15000 in it, is rolled back whole.
    assert 14_000 < first_left <= 15_000
    remaining = left()
    assert remaining == 30_000 - first_left + 1
    with engine.begin() as connection:
        connection.execute(text("DROP TRIGGER stop_at ON t"))
    applied = run_migrations(env, scratch.project(), revision)
    assert left() == 0
    engine.dispose()
    backfilled = [r for r in applied[-1].rewritten if r["operation"] == "backfill"]
    assert backfilled and backfilled[0]["parts"][0].startswith(f"{remaining} rows in ")
    batches = int(backfilled[0]["parts"][0].split(" in ")[1].split()[0])
    assert batches >= 16  # batch_size=1000 is the most a batch takes


def test_the_example_history_migrates_with_rewrite_as_it_does_bare(
    pg_url: str, second_url: str, make_env: Callable[..., Environment]
) -> None:
    """Up, down to base and up again with rewrite; the schema is the bare run's."""
    from safe_migrations.project.alembic_api import DEFAULT_PROJECT

    safe = make_env(pg_url, migration={"safe_operations": "rewrite"})
    bare = make_env(second_url, name="bare", migration={"safe_operations": "off"})
    assert run_migrations(safe, DEFAULT_PROJECT, "head")
    run_migrations(safe, DEFAULT_PROJECT, None, "downgrade")
    applied = run_migrations(safe, DEFAULT_PROJECT, "head")
    run_migrations(bare, DEFAULT_PROJECT, "head")
    assert [a.revision for a in applied][-1] == "0007"
    assert snapshot(pg_url) == snapshot(second_url)


def test_a_failure_after_a_rewritten_part_names_what_stays_and_a_rerun_completes(
    pg_url: str, make_env: Callable[..., Environment], scratch: ScratchProject
) -> None:
    from safe_migrations.project.alembic_api import Project

    scratch.add(BASE.format(rows=1000, keyed=10))
    revision = scratch.add(OPERATIONS["create_index"] + '\nop.execute("SELECT 1/0")')
    env = make_env(pg_url, migration={"safe_operations": "rewrite"})
    run_migrations(env, scratch.project(), "r001")
    with pytest.raises(MigrationError) as failed:
        run_migrations(env, scratch.project(), revision)
    assert "create_index ix_t_v" in failed.value.message
    assert "running the revision again completes it" in failed.value.message
    path = scratch.folder / "versions" / f"{revision}.py"
    path.write_text(path.read_text().replace('op.execute("SELECT 1/0")', "pass"))
    assert run_migrations(env, Project(script_location=scratch.folder), revision)
    assert [i for i in snapshot(pg_url)["t"]["indexes"] if i[0] == "ix_t_v"]


def test_tables_the_pending_revisions_make_are_never_refused(
    pg_url: str, make_env: Callable[..., Environment], scratch: ScratchProject
) -> None:
    """Found on CKAN's 110 revisions: a table made by SQL in a pending revision, then a
    column dropped and renamed there, and an index dropped without its table's name."""
    scratch.add('op.execute("CREATE TABLE legacy (id int PRIMARY KEY, a int, b int)")')
    scratch.add('op.create_index("ix_legacy_a", "legacy", ["a"])')
    scratch.add(
        'op.drop_index("ix_legacy_a")\nop.drop_column("legacy", "a")\n'
        'op.alter_column("legacy", "b", new_column_name="c")'
    )
    env = make_env(pg_url, migration={"safe_operations": "rewrite"})
    assert [a.revision for a in run_migrations(env, scratch.project(), "head")][-1] == "r003"
    assert [c[0] for c in snapshot(pg_url)["legacy"]["columns"]] == ["id", "c"]
