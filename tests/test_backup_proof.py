"""A backup proven by restoring it (issue 28, ``backup.prove: restore``) on a real
PostgreSQL: restored into a scratch database and compared table by table with the
source at the dump's snapshot; the recovery time in the report; a dump that lost a
table's rows stops the run before any migration statement (exit 3); a backup rewritten
after it was made (with a matching checksum) fails ``invoke backups --prove``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from helpers import QUIET, cli_env, run_invoke, seed
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool
from test_rehearsal import copies_on

from safe_migrations.core.config import Environment
from safe_migrations.core.errors import ConfigError
from safe_migrations.engines.libpq import pg_environment
from safe_migrations.operations.standalone import backup
from safe_migrations.pipeline.backup import take_backup
from safe_migrations.stores.backupfiles import sha256_of

SCHEMA = json.loads(
    (
        Path(__file__).parent.parent / "tasks/safe_migrations/schemas/report-v2.schema.json"
    ).read_text()
)


def test_a_proven_backup_records_its_recovery_time_and_leaves_no_scratch_database(
    pg_url: str, pg_admin_url: str, make_env: Callable[..., Environment]
) -> None:
    env = make_env(pg_url, backup={"prove": "restore"})
    seed(env, rows=300)
    record = backup(env, QUIET)
    proof = record.backup["proof"]
    assert proof["compared"] is True and proof["recovery_seconds"] > 0
    assert proof["fingerprints"]["public.users"][0] == 300
    assert proof["rows"] == sum(rows for rows, _ in proof["fingerprints"].values())
    manifest = json.loads(Path(record.backup["manifest"]).read_text())
    assert manifest["proof"] == proof
    report = json.loads(next(env.report_dir.glob("staging-backup-*.json")).read_text())
    jsonschema.validate(report, SCHEMA)
    assert report["backup"]["proof"]["recovery_seconds"] == proof["recovery_seconds"]
    markdown = next(env.report_dir.glob("staging-backup-*.md")).read_text()
    assert "proven: restored into a scratch database in" in markdown
    assert copies_on(pg_admin_url, env.settings.check.scratch_prefix) == set()


def fake_pg_dump(folder: Path) -> Path:
    """A pg_dump that leaves out the rows of public.orders: a real dump, incomplete."""
    folder.mkdir()
    real = shutil.which("pg_dump")
    script = folder / "pg_dump"
    script.write_text(f'#!/bin/sh\nexec "{real}" --exclude-table-data=public.orders "$@"\n')
    script.chmod(0o755)
    return folder


def test_a_dump_that_lost_rows_stops_the_migration_before_any_statement(
    pg_url: str, tmp_path: Path, make_env: Callable[..., Environment]
) -> None:
    seed(make_env(pg_url), rows=100)
    variables = cli_env(tmp_path, pg_url, backup={"prove": "restore"}, policy={"confirm": "never"})
    variables["PATH"] = f"{fake_pg_dump(tmp_path / 'bin')}{os.pathsep}{os.environ['PATH']}"
    result = run_invoke("backup", "--env", "staging", env=variables)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "public.orders has 0 rows, the source had 100" in result.stderr
    assert not list((tmp_path / "var" / "backups").glob("*.dump*"))  # not kept


def test_a_migration_with_a_proof_that_fails_runs_nothing(
    pg_url: str, tmp_path: Path, make_env: Callable[..., Environment]
) -> None:
    env = make_env(pg_url)
    from safe_migrations.pipeline.upgrade import run_migrations
    from safe_migrations.project.alembic_api import DEFAULT_PROJECT

    run_migrations(env, DEFAULT_PROJECT, "0005")
    engine = create_engine(pg_url, poolclass=NullPool)
    with engine.begin() as connection:  # rows for the incomplete dump to lose
        connection.execute(text("INSERT INTO users (id, email, name) VALUES (1, 'a@b.c', 'a')"))
        connection.execute(text("INSERT INTO orders (id, user_id, total_cents) VALUES (1, 1, 5)"))
    engine.dispose()
    variables = cli_env(tmp_path, pg_url, backup={"prove": "restore"}, policy={"confirm": "never"})
    variables["PATH"] = f"{fake_pg_dump(tmp_path / 'bin')}{os.pathsep}{os.environ['PATH']}"
    result = run_invoke("migrate", "--env", "staging", "--backup", env=variables)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "does not restore what its source held" in result.stderr
    with create_engine(pg_url, poolclass=NullPool).connect() as connection:
        assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar() == (
            "0005"
        )


def test_a_backup_rewritten_after_it_was_made_fails_backups_prove(
    pg_url: str, pg_admin_url: str, tmp_path: Path, make_env: Callable[..., Environment]
) -> None:
    variables = cli_env(tmp_path, pg_url, backup={"prove": "restore"})
    env = make_env(pg_url, backup={"prove": "restore"})
    seed(env, rows=50)
    info = take_backup(env, "0007")
    proven = run_invoke("backups", "--env", "staging", "--prove", "latest", env=variables)
    assert proven.returncode == 0, proven.stdout + proven.stderr
    assert "every table's rows and checksum match the source" in proven.stdout
    # Rewrite the archive with one row changed, and its checksum to match.
    scratch = pg_url.rsplit("/", 1)[0] + "/tamper_" + os.urandom(4).hex()
    admin = create_engine(pg_admin_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    name = scratch.rsplit("/", 1)[1]
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        child = pg_environment(scratch)
        subprocess.run(["pg_restore", "--no-owner", "-d", name, info.path], env=child, check=True)
        with create_engine(scratch, poolclass=NullPool).begin() as connection:
            connection.execute(text("UPDATE users SET name = 'changed' WHERE id = 7"))
        Path(info.path).unlink()
        subprocess.run(["pg_dump", "-Fc", "-f", info.path, name], env=child, check=True)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()
    manifest = Path(info.manifest)
    data = json.loads(manifest.read_text())
    data["sha256"] = sha256_of(Path(info.path))
    manifest.write_text(json.dumps(data))
    refused = run_invoke("backups", "--env", "staging", "--prove", "latest", env=variables)
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert "public.users has 50 rows as the source had, but other contents" in refused.stderr
    assert "It stays where it is, unproven." in refused.stderr


@pytest.mark.parametrize("earlier", ["md5", "hash64"])
def test_a_backup_proven_by_earlier_proofs_checksums_is_proven_the_same_way(
    pg_url: str, tmp_path: Path, make_env: Callable[..., Environment], earlier: str
) -> None:
    """New proofs (PostgreSQL 14+) checksum rows with the row's own 64-bit hash and say
    so; a manifest of earlier proofs (the first ones' md5, no checksum named; then the
    text's hash64) is checked their way, its tampered fingerprint still found."""
    from safe_migrations.engines.pgproof import fingerprints

    variables = cli_env(tmp_path, pg_url, backup={"prove": "restore"})
    env = make_env(pg_url, backup={"prove": "restore"})
    seed(env, rows=40)
    info = take_backup(env, "0007")
    assert info.proof is not None and info.proof["checksum"] == "record64"
    with create_engine(pg_url, poolclass=NullPool).connect() as connection:
        old = fingerprints(connection, earlier)
    assert old != info.proof["fingerprints"] and old.keys() == info.proof["fingerprints"].keys()
    manifest = Path(info.manifest)
    data = json.loads(manifest.read_text())
    named = {"checksum": earlier} if earlier != "md5" else {}
    data["proof"] = {k: v for k, v in data["proof"].items() if k != "checksum"} | {
        "fingerprints": old,
        **named,
    }
    manifest.write_text(json.dumps(data))
    proven = run_invoke("backups", "--env", "staging", "--prove", "latest", env=variables)
    assert proven.returncode == 0, proven.stdout + proven.stderr
    assert "every table's rows and checksum match the source" in proven.stdout
    assert json.loads(manifest.read_text())["proof"]["checksum"] == earlier
    data = json.loads(manifest.read_text())
    data["proof"]["fingerprints"]["public.users"][1] = "12345"
    manifest.write_text(json.dumps(data))
    refused = run_invoke("backups", "--env", "staging", "--prove", "latest", env=variables)
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert "public.users has 40 rows as the source had, but other contents" in refused.stderr


def test_a_table_whose_types_hash_loosely_is_checksummed_by_its_text(
    pg_url: str, make_env: Callable[..., Environment]
) -> None:
    """The row's own hash only where every column's hash tells values apart as its text
    does: a numeric's 1.0 and 1.00 hash alike, an enum's hash is its label's oid (another
    in the restored copy); such a table is hashed by its text, so its backup proves and
    a change of scale is found."""
    from safe_migrations.engines.pgproof import fingerprints

    env = make_env(pg_url, backup={"prove": "restore"})
    seed(env, rows=10)
    source = create_engine(pg_url, poolclass=NullPool)
    with source.begin() as connection:
        connection.execute(text("CREATE TYPE mood AS ENUM ('calm', 'busy')"))
        connection.execute(text("CREATE TABLE prices (id int PRIMARY KEY, amount numeric, m mood)"))
        connection.execute(text("INSERT INTO prices VALUES (1, 1.0, 'busy'), (2, 2.5, 'calm')"))
    info = take_backup(env, "0007")  # the enum's oids differ in the scratch copy
    assert info.proof is not None and info.proof["compared"] is True
    with source.connect() as connection:
        record, by_text = fingerprints(connection, "record64"), fingerprints(connection, "hash64")
        assert record["public.prices"] == by_text["public.prices"]
        assert record["public.users"] != by_text["public.users"]  # its types hash exactly
        connection.execute(text("UPDATE prices SET amount = 1.00 WHERE id = 1"))
        assert fingerprints(connection, "record64")["public.prices"] != record["public.prices"]
    source.dispose()


def test_prove_is_refused_where_it_is_not_built(
    sqlite_url: str, make_env: Callable[..., Environment]
) -> None:
    with pytest.raises(ConfigError, match="PostgreSQL backups only"):
        make_env(sqlite_url, backup={"prove": "restore"})


def test_a_dump_that_fails_stops_the_source_fingerprints_running_beside_it(
    pg_url: str, tmp_path: Path, make_env: Callable[..., Environment], monkeypatch: Any
) -> None:
    """The source is fingerprinted on the snapshot's connection while pg_dump dumps it.
    When pg_dump fails, the fingerprints' query is cancelled: here one waits on a lock
    another session holds, and the failure comes back while that lock is still held;
    no backup is left."""
    import threading

    from safe_migrations.core.errors import BackupError

    env = make_env(pg_url, backup={"prove": "restore"})
    seed(env, rows=20)
    folder = tmp_path / "bin"
    folder.mkdir()
    script = folder / "pg_dump"
    script.write_text("#!/bin/sh\nsleep 1\necho 'pg_dump: error: the disk is full' >&2\nexit 1\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    locked, release = threading.Event(), threading.Event()
    held_until_released = []

    def hold_lock() -> None:
        with create_engine(pg_url, poolclass=NullPool).connect() as connection:
            connection.execute(text("LOCK TABLE users IN ACCESS EXCLUSIVE MODE"))
            locked.set()
            held_until_released.append(release.wait(timeout=60))
            connection.rollback()

    locker = threading.Thread(target=hold_lock)
    locker.start()
    try:
        assert locked.wait(timeout=30)
        with pytest.raises(BackupError, match="pg_dump failed: pg_dump: error: the disk is full"):
            take_backup(env, "0007")
    finally:
        release.set()
        locker.join()
    assert held_until_released == [True]  # the lock was still held when the failure came
    assert not list((tmp_path / "var" / "backups").glob("*.dump*"))


@pytest.mark.parametrize(
    "failing",
    [
        "SELECT count(*), (count(*) / 0)::text FROM {table} AS t",
        "SELECT count(*), (count(*) / CASE WHEN pg_sleep(1.5) IS NULL THEN 1 ELSE 0 END)::text "
        "FROM {table} AS t",
    ],
    ids=["before-pg_dump-took-the-snapshot", "after-the-dump-was-stored"],
)
def test_a_dump_whose_source_fingerprints_failed_is_not_kept(
    pg_url: str,
    tmp_path: Path,
    make_env: Callable[..., Environment],
    monkeypatch: Any,
    failing: str,
) -> None:
    """The fingerprints beside pg_dump fail on the server: at once (their error, not
    pg_dump's, which then could not import the snapshot they ended), or once the dump
    is stored (without them there is nothing to prove it against: it is removed)."""
    from sqlalchemy.exc import DBAPIError

    from safe_migrations.engines import pgproof

    env = make_env(pg_url, backup={"prove": "restore"})
    seed(env, rows=20)
    monkeypatch.setitem(pgproof.CHECKSUMS, "hash64", failing)
    monkeypatch.setitem(pgproof.CHECKSUMS, "record64", failing)
    with pytest.raises(DBAPIError, match="division by zero"):
        take_backup(env, "0007")
    assert not list((tmp_path / "var" / "backups").glob("*.dump*"))
