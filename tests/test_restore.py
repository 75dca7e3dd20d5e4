"""Restore runs only the environment's own backups, runs nothing an archive carries,
and leaves exactly the backup behind (issue 11, items 3 and 4)."""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from helpers import QUIET, ScratchProject, read_in_open_transaction, seed, table_fingerprints
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from safe_migrations.core.config import Environment
from safe_migrations.core.errors import BackupError, BlockedError, ConfigError
from safe_migrations.engines.sqlscript import ScriptError, split_script
from safe_migrations.operations.restore import find_backup
from safe_migrations.operations.standalone import restore
from safe_migrations.pipeline.backup import take_backup
from safe_migrations.pipeline.migrate import Console, RunOptions, migrate
from safe_migrations.pipeline.status import read_current

FILLER = "A" * 240


def execute(url: str, *statements: str) -> None:
    engine = create_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        for statement in statements:
            connection.execute(text(statement))
    engine.dispose()


def patch_archive(path: Path, payload: bytes) -> None:
    """Swap the users table's comment for ``payload`` at the same length, as an attacker
    with write access to the backup folder would, and forge the manifest to match."""
    data = path.read_bytes()
    original = f"'{FILLER}'".encode()
    assert data.count(original) == 1
    replacement = payload.ljust(len(original) - 1, b"-") + b"'"
    assert len(replacement) == len(original)
    path.write_bytes(data.replace(original, replacement))
    manifest = Path(str(path) + ".manifest.json")
    forged = json.loads(manifest.read_text())
    forged["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest.write_text(json.dumps(forged))


def test_patched_archive_with_a_forged_manifest_runs_nothing(
    pg_url: str, tmp_path: Path, make_env: Callable[..., Environment]
) -> None:
    env = make_env(pg_url)
    seed(env, rows=5)
    execute(env.url, f"COMMENT ON TABLE users IS '{FILLER}'")
    info = take_backup(env, "0007")
    marker = tmp_path / "pwned"
    patch_archive(
        Path(info.path),
        b"'';\nGRANT ALL ON public.users TO PUBLIC;\n\\! touch " + str(marker).encode() + b"\n--",
    )
    execute(env.url, "DELETE FROM orders")
    before = table_fingerprints(env.url)
    with pytest.raises(BackupError, match="Refusing to restore .* psql meta-command"):
        restore(env, info.path, yes=True, interactive=False, console=QUIET)
    assert not marker.exists()
    assert table_fingerprints(env.url) == before
    engine = create_engine(env.url, poolclass=NullPool)
    with engine.connect() as connection:
        granted = connection.execute(
            text(
                "SELECT count(*) FROM information_schema.role_table_grants "
                "WHERE grantee = 'PUBLIC' AND table_name = 'users'"
            )
        ).scalar()
    engine.dispose()
    assert granted == 0


def test_meta_commands_are_refused_by_our_guard_without_psqls_restrict(
    pg_url: str, tmp_path: Path, make_env: Callable[..., Environment]
) -> None:
    """An older pg_restore writes no \\restrict line; the guard must not depend on it."""
    import subprocess

    env = make_env(pg_url)
    seed(env, rows=2)
    execute(env.url, f"COMMENT ON TABLE users IS '{FILLER}'")
    info = take_backup(env, "0007")
    patch_archive(Path(info.path), b"'';\n\\! touch /tmp/never\n--")
    script = subprocess.run(
        ["pg_restore", "--file=-", info.path], capture_output=True, check=True
    ).stdout
    older = b"".join(
        line for line in script.splitlines(keepends=True) if not line.startswith(b"\\restrict")
    )
    assert b"\\restrict" not in older.split(b"\\! touch")[0]
    with pytest.raises(ScriptError, match="meta-command"):
        for _item in split_script(older.splitlines(keepends=True)):
            pass


def test_backup_outside_the_folder_needs_foreign_and_the_typed_name(
    pg_url: str, tmp_path: Path, make_env: Callable[..., Environment]
) -> None:
    env = make_env(pg_url)
    seed(env, rows=5)
    info = take_backup(env, "0007")
    elsewhere = tmp_path / "downloads"
    elsewhere.mkdir()
    copy = elsewhere / Path(info.path).name
    shutil.copy(info.path, copy)
    shutil.copy(info.manifest, str(copy) + ".manifest.json")
    execute(env.url, "DELETE FROM orders")
    with pytest.raises(ConfigError, match="not one of staging's own backups .*--foreign"):
        restore(env, str(copy), yes=True, interactive=False, console=QUIET)
    shown: list[str] = []
    wrong = Console(say=shown.append, ask=lambda _prompt: "production", warn=lambda _t: None)
    with pytest.raises(BlockedError, match="typed name did not match"):
        restore(env, str(copy), yes=False, interactive=True, console=wrong, foreign=True)
    assert any("holds:" in line and "table data" in line for line in shown)
    assert table_fingerprints(env.url)["orders"][0] == 0
    right = Console(say=lambda _t: None, ask=lambda _prompt: "staging", warn=lambda _t: None)
    restore(env, str(copy), yes=False, interactive=True, console=right, foreign=True)
    assert table_fingerprints(env.url)["orders"][0] == 5


@pytest.fixture
def second_database(pg_admin_url: str) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    execute(pg_admin_url, f'CREATE DATABASE "{name}"')
    yield make_url(pg_admin_url).set(database=name).render_as_string(hide_password=False)
    execute(pg_admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_backup_of_another_database_in_the_folder_is_refused(
    pg_url: str, second_database: str, make_env: Callable[..., Environment]
) -> None:
    other = make_env(second_database)  # same name and folders, another database
    seed(other, rows=3)
    take_backup(other, "0007")
    env = make_env(pg_url)
    with pytest.raises(ConfigError, match="taken of another database"):
        restore(env, "latest", yes=True, interactive=False, console=QUIET)
    assert read_current(env) is None


def test_forged_manifest_cannot_make_pruning_delete_elsewhere(
    sqlite_url: str, tmp_path: Path, make_env: Callable[..., Environment]
) -> None:
    env = make_env(sqlite_url, backup={"keep": 1})
    migrate(env, RunOptions(yes=True), None, QUIET)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    env.backup_dir.mkdir(parents=True, exist_ok=True)
    old = {"environment": "staging", "created_at": datetime(2000, 1, 1, tzinfo=UTC).isoformat()}
    (env.backup_dir / "staging-20000101T000000000Z-0001.dump.manifest.json").write_text(
        json.dumps(old | {"path": str(victim)})
    )
    (env.backup_dir / "staging-20000102T000000000Z-0001.dir").symlink_to(victim)
    (env.backup_dir / "staging-20000102T000000000Z-0001.dir.manifest.json").write_text(
        json.dumps(old | {"path": str(victim)})
    )
    take_backup(env, "0007")
    take_backup(env, "0007")
    assert (victim / "precious.txt").read_text() == "keep me"


def test_restore_leaves_no_object_made_after_the_backup(
    pg_url: str, scratch: ScratchProject, make_env: Callable[..., Environment]
) -> None:
    env = make_env(pg_url)
    scratch.add('op.create_table("a", sa.Column("id", sa.Integer, primary_key=True))')
    migrate(env, RunOptions(yes=True), scratch.project(), QUIET)
    info = take_backup(env, "r001")
    scratch.add(
        """
        mood = sa.Enum("calm", "busy", name="mood")
        op.create_table("b", sa.Column("id", sa.Integer, primary_key=True),
                        sa.Column("m", mood))
        op.execute("CREATE SEQUENCE tickets")
        op.execute("CREATE DOMAIN positive AS integer CHECK (VALUE > 0)")
        op.execute("CREATE FUNCTION twice(x positive) RETURNS int LANGUAGE sql AS 'SELECT 2 * x'")
        op.execute("CREATE VIEW b_view AS SELECT id FROM b")
        op.execute("CREATE VIEW a_view AS SELECT id FROM a")
        """
    )
    migrate(env, RunOptions(yes=True), scratch.project(), QUIET)
    restore(env, info.path, yes=True, interactive=False, console=QUIET)
    assert read_current(env) == "r001"
    engine = create_engine(env.url, poolclass=NullPool)
    with engine.connect() as connection:
        left = (
            connection.execute(
                text(
                    "SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE nspname = 'public' AND relkind IN ('r','v','S') "
                    "UNION ALL SELECT typname FROM pg_type t JOIN pg_namespace n "
                    "ON n.oid = t.typnamespace WHERE nspname = 'public' AND typtype IN ('e','d') "
                    "UNION ALL SELECT proname FROM pg_proc p JOIN pg_namespace n "
                    "ON n.oid = p.pronamespace WHERE nspname = 'public'"
                )
            )
            .scalars()
            .all()
        )
    engine.dispose()
    assert sorted(left) == ["a", "a_id_seq", "alembic_version"]  # what the backup held
    record = migrate(env, RunOptions(yes=True), scratch.project(), QUIET)  # no "already exists"
    assert record.success and read_current(env) == "r002"


def test_object_the_role_may_not_drop_stops_the_restore_before_any_change(
    pg_url: str, role_url: str, make_env: Callable[..., Environment]
) -> None:
    env = make_env(role_url)
    seed(env, rows=4)
    info = take_backup(env, "0007")
    execute(env.url, "DELETE FROM orders")
    execute(pg_url, "CREATE TABLE public.audit_trail (id int)")  # owned by the superuser
    before = table_fingerprints(pg_url)
    with pytest.raises(BackupError, match=r"may not drop: table public\.audit_trail"):
        restore(env, info.path, yes=True, interactive=False, console=QUIET)
    assert table_fingerprints(pg_url) == before


def test_restore_waits_no_longer_than_the_lock_timeout_and_shows_the_error(
    pg_url: str, make_env: Callable[..., Environment]
) -> None:
    env = make_env(pg_url, migration={"lock_timeout": 0.5})
    seed(env, rows=3)
    info = take_backup(env, "0007")
    release, _outcome = read_in_open_transaction(pg_url, "orders")  # an application reads
    try:
        with pytest.raises(BackupError, match="ERROR: canceling statement due to lock timeout"):
            restore(env, info.path, yes=True, interactive=False, console=QUIET)
    finally:
        release.set()


def test_latest_is_the_newest_of_this_databases_own_backups(
    pg_url: str, second_database: str, make_env: Callable[..., Environment]
) -> None:
    """Was: the newest file in the folder, another database's, refused with --foreign
    suggested. Now: the newest backup of this database, though another's is newer."""
    env = make_env(pg_url)
    seed(env, rows=4)
    own = take_backup(env, "0007")
    other = make_env(second_database)  # same name and folders, another database
    seed(other, rows=3)
    take_backup(other, "0007")
    assert find_backup(env, "latest")["path"] == own.path


def test_copy_data_in_blocks_restores_every_row_of_tables_larger_and_smaller_than_a_block(
    pg_url: str, make_env: Callable[..., Environment]
) -> None:
    """COPY data reaches the server a block of whole lines at a time: a table of many
    blocks, an empty one and values whose text starts like the end-of-data line come
    back row for row."""
    from safe_migrations.engines.sqlscript import COPY_BLOCK

    env = make_env(pg_url)
    seed(env, rows=5)
    execute(
        env.url,
        "CREATE TABLE big AS SELECT i, md5(i::text) || repeat('x', 40) AS v "
        "FROM generate_series(1, 30000) i",
        "CREATE TABLE empty_one (i int)",
        "CREATE TABLE tricky (v text)",
        "INSERT INTO tricky VALUES (E'\\\\.'), (E'\\\\.\\n\\\\.'), ('.'), (E'a\\tb\\r\\nc')",
    )
    before = table_fingerprints(env.url)
    assert before["big"][0] * 70 > 10 * COPY_BLOCK and before["empty_one"][0] == 0
    info = take_backup(env, "0007")
    execute(env.url, "DELETE FROM big WHERE i % 7 = 0", "INSERT INTO empty_one VALUES (1)")
    execute(env.url, "UPDATE tricky SET v = 'changed'")
    restore(env, info.path, yes=True, interactive=False, console=QUIET)
    assert table_fingerprints(env.url) == before


def test_the_script_splitter_ends_copy_data_only_at_its_own_line_in_blocks() -> None:
    from safe_migrations.engines.sqlscript import COPY_BLOCK, Copy

    rows = [f"{i}\tvalue {i}\n".encode() for i in range(20000)]
    script = (
        [b"SET x = 1;\n", b"COPY public.a (i, v) FROM stdin;\n", *rows, b"\\.\n"]
        + [b"COPY public.b (i) FROM stdin;\n", b"\\.\r\n"]
        + [b"COPY public.c (v) FROM stdin;\n", b"\\\\.\n", b"\\.\n", b"SELECT 1;\n"]
    )
    items = list(split_script(script))
    kinds = [type(item).__name__ for item in items]
    assert kinds == ["bytes", "Copy", "Copy", "Copy", "bytes"]
    # data read while iterating (as the restore does) would be gone: read again, in order
    parts = []
    for item in split_script(script):
        parts.append(b"".join(item.lines) if isinstance(item, Copy) else item)
    assert parts[1] == b"".join(rows) and parts[2] == b"" and parts[3] == b"\\\\.\n"
    assert parts[4] == b"SELECT 1;"
    # the data goes to the server in blocks of whole lines, not a call per row
    first = next(item for item in split_script(script) if isinstance(item, Copy))
    blocks = list(first.lines)
    assert 1 < len(blocks) < len(rows) // 100
    assert all(len(b) >= COPY_BLOCK and b.endswith(b"\n") for b in blocks[:-1])


def test_the_script_splitter_gives_the_same_items_however_the_script_arrives() -> None:
    """A stream is read in chunks that cut lines, the end-of-data line and CRLF anywhere;
    the statements and COPY data that come out are the same as from whole lines, and a
    script cut off inside COPY data is refused."""
    import io

    from safe_migrations.engines.sqlscript import Copy

    rows = [f"{i}\tvalue {i}\\.\n".encode() for i in range(3000)]
    lines = (
        [b"SET x = 1;\n", b"COPY public.a (i, v) FROM stdin;\n", b"\\.x\n", *rows, b"\\.\n"]
        + [b"COPY public.b (i) FROM stdin;\n", b"\\.\r\n", b"SELECT 'a\n", b"b';\n"]
        + [b"COPY public.c (v) FROM stdin;\n", b"1\n", b"\\."]
    )
    script = b"".join(lines)

    def items(source: object) -> list[bytes]:
        return [
            i.sql + b" <- " + b"".join(i.lines) if isinstance(i, Copy) else i
            for i in split_script(source)
        ]

    expected = items(lines)
    assert expected == [
        b"SET x = 1;",
        b"COPY public.a (i, v) FROM stdin; <- \\.x\n" + b"".join(rows),
        b"COPY public.b (i) FROM stdin; <- ",
        b"SELECT 'a\nb';",
        b"COPY public.c (v) FROM stdin; <- 1\n",
    ]
    for size in (1, 2, 3, 7, 100, 4096):
        pieces = [script[i : i + size] for i in range(0, len(script), size)]
        assert items(pieces) == expected, size
    assert items(io.BufferedReader(io.BytesIO(script), buffer_size=13)) == expected
    cut = script[: script.index(b"value 2999")]
    with pytest.raises(ScriptError, match="ends inside COPY data"):
        items([cut])
