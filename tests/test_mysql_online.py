"""Online DDL on a real MariaDB (issue 27): with ``migration.online_ddl: enforce`` an
added column runs INSTANT, an index builds INPLACE with LOCK=NONE while a writer keeps
writing, and a change the server can only copy is refused before it runs."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from helpers import ScratchProject
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from safe_migrations.core.config import Environment
from safe_migrations.core.errors import RefusedError
from safe_migrations.pipeline.upgrade import MigrationError, run_migrations

ROWS = 300_000
TABLE = """op.create_table(
    "t",
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("v", sa.Integer),
    sa.Column("s", sa.String(40)),
)"""


def fill(url: str, rows: int = ROWS) -> None:
    engine = create_engine(url, poolclass=NullPool)
    with engine.begin() as connection:  # MariaDB's SEQUENCE engine: rows without a loop
        connection.execute(text(f"INSERT INTO t (v, s) SELECT seq, MD5(seq) FROM seq_1_to_{rows}"))
    engine.dispose()


def column_type(url: str, column: str) -> str:
    engine = create_engine(url, poolclass=NullPool)
    with engine.connect() as connection:
        found = connection.execute(
            text(
                "SELECT data_type FROM information_schema.columns "
                "WHERE table_schema = DATABASE() AND table_name = 't' AND column_name = :c"
            ),
            {"c": column},
        ).scalar()
    engine.dispose()
    return str(found)


DEADLOCKS: list[int] = []  # per writer: inserts InnoDB chose as a deadlock victim


@contextmanager
def writer(url: str) -> Iterator[list[float]]:
    """Another session inserting one row at a time; yields each insert's wait (s), the
    retry included when InnoDB picks it as a deadlock victim, as an application would."""
    from sqlalchemy.exc import OperationalError

    waits: list[float] = []
    stop = threading.Event()
    DEADLOCKS.append(0)

    def write() -> None:
        engine = create_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            while not stop.is_set():
                began = time.perf_counter()
                while True:
                    try:
                        connection.execute(text("INSERT INTO t (v, s) VALUES (-1, 'app')"))
                        break
                    except OperationalError as exc:
                        if exc.orig is None or exc.orig.args[0] != 1213:
                            raise
                        DEADLOCKS[-1] += 1
                waits.append(time.perf_counter() - began)
                time.sleep(0.005)
        engine.dispose()

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    time.sleep(0.1)
    try:
        yield waits
    finally:
        stop.set()
        thread.join(30)


def online(make_env: Callable[..., Environment], url: str, mode: str = "enforce") -> Environment:
    return make_env(url, migration={"online_ddl": mode, "lock_timeout": 1})


def test_a_column_runs_instant_and_an_index_builds_inplace_while_a_writer_keeps_writing(
    mysql_url: str, make_env: Callable[..., Environment], scratch: ScratchProject
) -> None:
    scratch.add(TABLE)
    scratch.add('op.add_column("t", sa.Column("note", sa.String(20)))')
    scratch.add('op.create_index("ix_t_s", "t", ["s"])')
    env = online(make_env, mysql_url)
    run_migrations(env, scratch.project(), "r001")
    fill(mysql_url)
    with writer(mysql_url) as waits:
        before = len(waits)
        applied = run_migrations(env, scratch.project(), "r003")
        during = len(waits) - before
    assert [a.revision for a in applied] == ["r002", "r003"]
    assert [r["parts"] for r in applied[0].rewritten] == [["ALGORITHM=INSTANT"]]
    assert [r["parts"] for r in applied[1].rewritten] == [["ALGORITHM=INPLACE, LOCK=NONE"]]
    assert during >= 10, during  # writes went on while the revisions ran
    assert max(waits) < 1.0, (len(waits), max(waits))
    print(f"index build: {len(waits)} writes, worst {max(waits):.3f} s")


def test_a_type_change_is_refused_before_it_runs_and_warn_runs_it_saying_so(
    mysql_url: str,
    make_env: Callable[..., Environment],
    scratch: ScratchProject,
    capsys: pytest.CaptureFixture[str],
) -> None:
    scratch.add(TABLE)
    change = 'op.alter_column("t", "v", type_=sa.BigInteger, existing_type=sa.Integer)'
    scratch.add(change)
    env = online(make_env, mysql_url)
    run_migrations(env, scratch.project(), "r001")
    fill(mysql_url, 1000)
    with pytest.raises(MigrationError) as refused:
        run_migrations(env, scratch.project(), "r002")
    message = str(refused.value)
    assert "cannot run online" in message and "ALGORITHM=COPY" in message
    assert "pt-online-schema-change" in message and "allow online-ddl" in message
    assert refused.value.exit_code == 1
    assert column_type(mysql_url, "v") == "int"  # nothing of it ran

    capsys.readouterr()
    applied = run_migrations(online(make_env, mysql_url, "warn"), scratch.project(), "r002")
    assert column_type(mysql_url, "v") == "bigint"
    assert "cannot run online" in capsys.readouterr().err
    assert applied[0].rewritten[0]["parts"][0].startswith("as written")


def test_the_allow_marker_runs_the_change_as_written(
    mysql_url: str, make_env: Callable[..., Environment], scratch: ScratchProject
) -> None:
    scratch.add(TABLE)
    scratch.add(
        "# squawk: allow online-ddl -- t is a small lookup table\n"
        'op.alter_column("t", "v", type_=sa.BigInteger, existing_type=sa.Integer)'
    )
    env = online(make_env, mysql_url)
    run_migrations(env, scratch.project(), "r001")  # t is there before the run
    applied = run_migrations(env, scratch.project(), "r002")
    assert column_type(mysql_url, "v") == "bigint"
    assert applied[-1].rewritten[0]["parts"] == ["as written (allowed in the revision)"]


def aggregates(url: str) -> tuple[int, int, int]:
    engine = create_engine(url, poolclass=NullPool)
    with engine.connect() as connection:
        found = connection.execute(
            text("SELECT COUNT(*), SUM(v), SUM(CRC32(s)) FROM t WHERE v >= 0")
        ).one()
    engine.dispose()
    return int(found[0]), int(found[1]), int(found[2])


def helpers_left(url: str) -> list[str]:
    engine = create_engine(url, poolclass=NullPool)
    with engine.connect() as connection:
        found = connection.execute(
            text(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = "
                "DATABASE() AND table_name LIKE '\\_sm\\_osc\\_%' UNION ALL "
                "SELECT trigger_name FROM information_schema.triggers WHERE trigger_schema = "
                "DATABASE() AND trigger_name LIKE 'pt\\_osc\\_%'"
            )
        ).scalars()
        names = [str(name) for name in found]
    engine.dispose()
    return names


PT_OSC = {"online_ddl": "enforce", "lock_timeout": 1, "online_tool": "pt-osc"}
TYPE_CHANGE = 'op.alter_column("t", "v", type_=sa.BigInteger, existing_type=sa.Integer)'


def test_a_type_change_runs_through_pt_osc_with_the_data_intact_and_writes_flowing(
    mysql_url: str,
    make_env: Callable[..., Environment],
    scratch: ScratchProject,
    tmp_path: Path,
) -> None:
    scratch.add(TABLE)
    scratch.add(TYPE_CHANGE)
    env = make_env(mysql_url, migration=PT_OSC)
    run_migrations(env, scratch.project(), "r001")
    fill(mysql_url, 100_000)
    before = aggregates(mysql_url)
    with writer(mysql_url) as waits:
        applied = run_migrations(env, scratch.project(), "r002")
    assert column_type(mysql_url, "v") == "bigint"
    assert aggregates(mysql_url) == before  # every row copied, none changed
    engine = create_engine(mysql_url, poolclass=NullPool)
    with engine.connect() as connection:
        written = connection.execute(text("SELECT COUNT(*) FROM t WHERE v = -1")).scalar()
    engine.dispose()
    assert written == len(waits) > 20  # each write made during the copy survived the swap
    assert max(waits) < 1.0, max(waits)
    print(f"pt-osc: {len(waits)} writes, worst {max(waits):.3f} s, {DEADLOCKS[-1]} retried")
    done = applied[0].rewritten[0]
    assert done["parts"][0].startswith("pt-online-schema-change") and "ran in" in done["outcome"]
    assert helpers_left(mysql_url) == []
    left = [p.name for p in (tmp_path / "var").rglob("*") if p.is_file()]
    assert not [name for name in left if name.endswith(".cnf")], left  # option file removed
    assert env.backup_dir.stat().st_mode & 0o777 == 0o700  # where it lived, made 0700


def test_a_pt_osc_run_killed_midway_leaves_nothing_after_the_next_run(
    mysql_url: str, scratch: ScratchProject, tmp_path: Path
) -> None:
    import os
    import signal
    import subprocess
    import sys

    from helpers import ROOT, cli_env, run_invoke

    scratch.add(TABLE)
    scratch.add(TYPE_CHANGE)
    env = cli_env(
        tmp_path,
        mysql_url,
        policy={"confirm": "never"},
        alembic={"script_location": str(scratch.folder)},
        migration=PT_OSC,
    )
    first = run_invoke("migrate", "--env", "staging", "--no-backup", "-r", "r001", env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    fill(mysql_url, 300_000)
    before = aggregates(mysql_url)
    runner = subprocess.Popen(
        [str(Path(sys.executable).parent / "invoke"), "migrate", "--env", "staging", "--no-backup"],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own group: the kill takes pt-osc with it
    )
    deadline = time.monotonic() + 60
    while not [n for n in helpers_left(mysql_url) if n.startswith("pt_osc")]:
        assert time.monotonic() < deadline and runner.poll() is None, "pt-osc never started"
        time.sleep(0.05)
    os.killpg(runner.pid, signal.SIGKILL)
    runner.wait(30)
    assert helpers_left(mysql_url)  # what the killed run left
    assert column_type(mysql_url, "v") == "int"

    again = run_invoke("migrate", "--env", "staging", "--no-backup", env=env, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "dropped what an interrupted pt-online-schema-change run left" in again.stderr
    assert helpers_left(mysql_url) == []
    assert column_type(mysql_url, "v") == "bigint" and aggregates(mysql_url) == before
    left = [p.name for p in (tmp_path / "var").rglob("*") if p.is_file()]
    assert not [name for name in left if name.endswith(".cnf")], left


def test_an_index_drop_runs_online_under_enforce(
    mysql_url: str, make_env: Callable[..., Environment], scratch: ScratchProject
) -> None:
    """`DROP INDEX ix ON t ALGORITHM=...` is a syntax error on MariaDB (1064, which
    nothing fell back from): the drop runs as the ALTER TABLE both servers read."""
    scratch.add(TABLE)
    scratch.add('op.create_index("ix_t_s", "t", ["s"])', 'op.drop_index("ix_t_s", table_name="t")')
    env = online(make_env, mysql_url)
    run_migrations(env, scratch.project(), "r002")
    fill(mysql_url, 1000)
    undone = run_migrations(env, scratch.project(), "r001", "downgrade")
    assert undone[0].rewritten[0]["operation"] == "DROP INDEX"
    assert undone[0].rewritten[0]["parts"] == ["ALGORITHM=INPLACE, LOCK=NONE"]
    engine = create_engine(mysql_url, poolclass=NullPool)
    with engine.connect() as connection:
        assert not connection.execute(text("SHOW INDEX FROM t WHERE Key_name = 'ix_t_s'")).all()
    engine.dispose()


def test_tables_the_run_creates_take_their_keys_and_type_changes_as_written(
    mysql_url: str, make_env: Callable[..., Environment], scratch: ScratchProject
) -> None:
    """On an empty database, a revision that creates a table and then adds a foreign key
    and changes a column type (both need COPY on MariaDB) is no longer stopped after its
    first statement committed: nobody else uses the table yet. A table that was there
    before the run is still refused."""
    scratch.add(TABLE)
    scratch.add(
        'op.create_table("child", sa.Column("id", sa.Integer, primary_key=True), '
        'sa.Column("t_id", sa.Integer), sa.Column("n", sa.Integer))\n'
        'op.create_foreign_key("fk_child_t", "child", "t", ["t_id"], ["id"])\n'
        'op.alter_column("child", "n", type_=sa.BigInteger, existing_type=sa.Integer)'
    )
    scratch.add('op.alter_column("t", "v", type_=sa.BigInteger, existing_type=sa.Integer)')
    env = online(make_env, mysql_url)
    applied = run_migrations(env, scratch.project(), "r002")
    assert [a.revision for a in applied] == ["r001", "r002"]
    parts = [r["parts"][0] for r in applied[1].rewritten]
    assert parts == ["as written (a table this run created)"] * 2, applied[1].rewritten
    with pytest.raises(MigrationError, match="cannot run online"):
        run_migrations(env, scratch.project(), "r003")  # t was there before this run
    assert column_type(mysql_url, "v") == "int"


def test_the_example_goes_up_down_to_base_and_up_under_enforce_with_small_tables_copied(
    mysql_url: str, make_env: Callable[..., Environment]
) -> None:
    """The example's downgrade re-adds a foreign key, which MariaDB can only copy: on a
    table under online_ddl_small_table_mb it runs as written, saying so, and the history
    goes down to base and up again (without the threshold, such a copy is refused: the
    type-change test above)."""
    from safe_migrations.project.alembic_api import DEFAULT_PROJECT

    small = make_env(
        mysql_url, migration={"online_ddl": "enforce", "online_ddl_small_table_mb": 16}
    )
    run_migrations(small, DEFAULT_PROJECT, "head")
    undone = run_migrations(small, DEFAULT_PROJECT, None, "downgrade")
    notes = [p for a in undone for r in a.rewritten for p in r["parts"]]
    assert any(p.startswith("as written (ALGORITHM=COPY on a") for p in notes), notes
    assert [a.revision for a in run_migrations(small, DEFAULT_PROJECT, "head")][-1] == "0007"


KILLED_WITH_OPTIONS = """
import os, sys
from pathlib import Path
from safe_migrations.core.leftovers import claimed
path = Path(sys.argv[1]) / ".pt-osc-1-1.cnf"
with claimed(path):
    path.write_text("[client]\\npassword=secret\\n")
    os._exit(9)  # killed while pt-osc ran
"""


def test_a_killed_runs_option_file_is_swept_at_the_start_of_the_next_run(
    mysql_url: str, make_env: Callable[..., Environment], scratch: ScratchProject
) -> None:
    """Whatever the next run does (here a plain revision, no pt-osc at all), the password
    file a killed pt-osc run left goes first."""
    import subprocess
    import sys

    scratch.add(TABLE)
    env = online(make_env, mysql_url)
    env.backup_dir.mkdir(parents=True)
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_WITH_OPTIONS, str(env.backup_dir)], check=False
    )
    assert killed.returncode == 9
    assert [p.name for p in env.backup_dir.glob("*.cnf")] == [".pt-osc-1-1.cnf"]
    run_migrations(env, scratch.project(), "r001")
    assert list(env.backup_dir.glob("*.cnf")) == []


def test_breaking_changes_are_refused_before_any_statement_as_on_postgresql(
    mysql_url: str, make_env: Callable[..., Environment], scratch: ScratchProject
) -> None:
    """A dropped or renamed column or table of a table that was there before the run is
    refused (exit 2) with every one named; the allow marker takes it knowingly, and a
    table the pending revisions create is never refused."""
    scratch.add(TABLE)
    scratch.add(
        'op.add_column("t", sa.Column("note", sa.String(20)))\n'
        'op.drop_column("t", "s")\n'
        'op.alter_column("t", "v", new_column_name="w", existing_type=sa.Integer)'
    )
    scratch.add('op.rename_table("t", "t2")')
    env = online(make_env, mysql_url)
    run_migrations(env, scratch.project(), "r001")
    with pytest.raises(RefusedError) as refused:
        run_migrations(env, scratch.project(), "head")
    message = refused.value.message
    for said in ("revision r002", "drop_column drops t.s", "renames t.v to w", "revision r003"):
        assert said in message, said
    engine = create_engine(mysql_url, poolclass=NullPool)
    with engine.connect() as connection:
        assert "note" not in [r[0] for r in connection.execute(text("SHOW COLUMNS FROM t"))]
        connection.execute(text("DROP TABLE alembic_version"))  # a second history, from base
    engine.dispose()
    fresh = ScratchProject(scratch.folder.parent / "fresh")
    fresh.add(
        'op.create_table("u", sa.Column("id", sa.Integer, primary_key=True), '
        'sa.Column("x", sa.Integer))\nop.drop_column("u", "x")\nop.rename_table("u", "u2")'
    )
    applied = run_migrations(online(make_env, mysql_url), fresh.project(), "head")
    assert [a.revision for a in applied] == ["r001"]  # its own table: not refused
