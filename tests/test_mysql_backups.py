"""MySQL and MariaDB backups off the machine and encrypted (issue 27), on a real MariaDB
and moto's S3 server over loopback: streamed through a compressor thread and age into a
multipart upload, checked from the stream's own end, restored with identical data."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import boto3
import pyrage
import pytest
from helpers import QUIET
from sqlalchemy import text
from test_mysql import checksum, engine

from safe_migrations.core.config import Environment
from safe_migrations.core.errors import BackupError
from safe_migrations.operations.standalone import backup, restore
from safe_migrations.pipeline.backup import take_backup
from safe_migrations.pipeline.upgrade import run_migrations
from safe_migrations.project.alembic_api import DEFAULT_PROJECT


def seeded(env: Environment, url: str, rows: int = 500) -> None:
    run_migrations(env, DEFAULT_PROJECT, "head")
    with engine(url).begin() as connection:
        connection.execute(
            text(
                "INSERT INTO users (email, name, status) "
                "SELECT CONCAT('user', seq, '@example.org'), MD5(seq), 'active' "
                f"FROM seq_1_to_{rows}"
            )
        )
        connection.execute(
            text("INSERT INTO orders (user_id, amount_cents) SELECT id, id * 7 FROM users")
        )


def stored_object(bucket: dict[str, str], path: str) -> bytes:
    key = path.split("/", 3)[3]
    s3 = boto3.client("s3", endpoint_url=bucket["endpoint_url"], region_name="us-east-1")
    return s3.get_object(Bucket=bucket["bucket"], Key=key)["Body"].read()


def test_an_encrypted_backup_in_the_store_restores_identical_data(
    mysql_url: str,
    make_env: Callable[..., Environment],
    bucket: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    identity = pyrage.x25519.Identity.generate()
    env = make_env(mysql_url, backup={"storage": bucket, "encrypt_to": str(identity.to_public())})
    seeded(env, mysql_url)
    before = checksum(mysql_url)
    record = backup(env, QUIET)
    path = record.backup["path"]
    assert path.startswith(f"s3://{bucket['bucket']}/staging/") and path.endswith(".sql.gz.age")
    assert record.backup["tables"] >= 5
    stored = stored_object(bucket, path)
    assert stored.startswith(b"age-encryption.org/v1")
    assert b"user7@example.org" not in stored
    assert hashlib.sha256(stored).hexdigest() == record.backup["sha256"]
    assert not list(env.backup_dir.glob("*.sql.gz*"))  # never on local disk

    with engine(mysql_url).begin() as connection:
        connection.execute(text("SET FOREIGN_KEY_CHECKS = 0"))
        connection.execute(text("DROP TABLE order_items"))
        connection.execute(text("DELETE FROM users WHERE id % 2 = 0"))
    monkeypatch.setenv("SAFE_MIGRATIONS_AGE_IDENTITY", str(identity))
    restored = restore(env, "latest", yes=True, interactive=False, console=QUIET)
    assert restored.restored_from == path
    assert checksum(mysql_url) == before


def test_a_local_backup_is_a_gzip_stream_ending_with_the_marker_and_its_tables_counted(
    mysql_url: str, make_env: Callable[..., Environment]
) -> None:
    import gzip

    env = make_env(mysql_url)
    seeded(env, mysql_url, rows=50)
    info = take_backup(env, "0007")
    plain = gzip.decompress(Path(info.path).read_bytes())
    assert plain.rstrip().splitlines()[-1].startswith(b"-- Dump completed")
    assert info.tables == plain.count(b"\nCREATE TABLE ") >= 5


def test_a_dump_cut_short_is_refused_from_its_stream_and_leaves_no_file(
    mysql_url: str,
    make_env: Callable[..., Environment],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A dump program that exits 0 without the completion marker (a truncated stream)."""
    import shutil

    env = make_env(mysql_url)
    seeded(env, mysql_url, rows=50)
    folder = tmp_path / "bin"
    folder.mkdir()
    for name in ("mariadb-dump", "mysqldump"):
        real = shutil.which(name)
        if real is not None:
            fake = folder / name
            fake.write_text(f'#!/bin/sh\n"{real}" "$@" | head -c 2000\n')
            fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(BackupError, match="completion marker"):
        take_backup(env, "0007")
    assert not list(env.backup_dir.glob("*.sql.gz*"))
