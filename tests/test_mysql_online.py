"""Online DDL on a real MariaDB (issue 27): with ``migration.online_ddl: enforce`` an
added column runs INSTANT, an index builds INPLACE with LOCK=NONE while a writer keeps
writing, and a change the server can only copy is refused before it runs."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from helpers import ScratchProject
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from safe_migrations.core.config import Environment
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


@contextmanager
def writer(url: str) -> Iterator[list[float]]:
    """Another session inserting one row at a time; yields each insert's wait (s)."""
    waits: list[float] = []
    stop = threading.Event()

    def write() -> None:
        engine = create_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            while not stop.is_set():
                began = time.perf_counter()
                connection.execute(text("INSERT INTO t (v, s) VALUES (-1, 'app')"))
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
        applied = run_migrations(env, scratch.project(), "r003")
    assert [a.revision for a in applied] == ["r002", "r003"]
    assert [r["parts"] for r in applied[0].rewritten] == [["ALGORITHM=INSTANT"]]
    assert [r["parts"] for r in applied[1].rewritten] == [["ALGORITHM=INPLACE, LOCK=NONE"]]
    assert applied[1].duration > 0.3, applied  # a real build, long enough to write through
    assert len(waits) > 20 and max(waits) < 1.0, (len(waits), max(waits))


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
    applied = run_migrations(env, scratch.project(), "r002")
    assert column_type(mysql_url, "v") == "bigint"
    assert applied[-1].rewritten[0]["parts"] == ["as written (allowed in the revision)"]
