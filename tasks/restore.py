"""`invoke restore`: checksum first, then put a backup back, all or nothing."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from tasks.backup import (
    MANIFEST_SUFFIX,
    archive_listing,
    find_binary,
    list_backups,
    pg_environment,
    sha256_of,
)
from tasks.config import Environment
from tasks.database import make_engine, sqlite_path
from tasks.errors import BackupError, ConfigError


def find_backup(env: Environment, spec: str) -> dict[str, Any]:
    """``latest`` or a path to a backup (or its manifest) -> that backup's manifest."""
    if spec == "latest":
        backups = list_backups(env)
        if not backups:
            raise ConfigError(
                f"There is no backup for {env.name} in {env.backup_dir}; "
                "take one with `invoke backup`."
            )
        return backups[0]
    path = Path(spec)
    manifest = path if path.name.endswith(MANIFEST_SUFFIX) else Path(str(path) + MANIFEST_SUFFIX)
    if not manifest.exists():
        raise ConfigError(
            f"No backup at {spec} (its manifest {manifest.name} is missing); "
            "pass a path that `invoke backup` printed, or 'latest'."
        )
    data = json.loads(manifest.read_text(encoding="utf-8"))
    data["manifest"] = str(manifest)
    return data


def verify_checksum(backup: dict[str, Any]) -> None:
    path = Path(backup["path"])
    if not path.exists():
        raise BackupError(f"The backup {path} named by its manifest is missing.")
    actual = sha256_of(path)
    if actual != backup["sha256"]:
        raise BackupError(
            f"The backup {path.name} does not match its manifest's sha256 "
            f"(expected {backup['sha256'][:12]}..., found {actual[:12]}...); "
            "it was changed or damaged and will not be restored."
        )


def restore_backup(env: Environment, backup: dict[str, Any]) -> None:
    verify_checksum(backup)
    if backup.get("environment") not in (None, env.name):
        raise ConfigError(
            f"The backup belongs to {backup['environment']}, not {env.name}; "
            "pass --env for the environment it came from."
        )
    if env.is_sqlite:
        _restore_sqlite(env, Path(backup["path"]))
    else:
        _restore_postgres(env, Path(backup["path"]))


def _restore_sqlite(env: Environment, path: Path) -> None:
    import sqlite3

    target = sqlite_path(env.url)
    if target is None:
        raise ConfigError("An in-memory SQLite database cannot be restored.")
    source = sqlite3.connect(path)
    destination = sqlite3.connect(target)
    try:
        source.backup(destination)
    finally:
        destination.close()
        source.close()


def _backup_tables(env: Environment, path: Path) -> set[tuple[str, str]]:
    tables = set()
    for line in archive_listing(env, path):
        parts = line.split()
        if (
            not line.startswith(";")
            and len(parts) > 5
            and parts[3] == "TABLE"
            and parts[4] != "DATA"
        ):
            tables.add((parts[4], parts[5]))
    return tables


def _tables_made_after(env: Environment, keep: set[tuple[str, str]]) -> list[str]:
    """Quoted names of the tables in the backup's schemas that the backup does not hold."""
    from sqlalchemy import text

    schemas = {schema for schema, _ in keep} or {"public"}
    engine = make_engine(env, role="restore")
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                text("SELECT schemaname, tablename FROM pg_tables WHERE schemaname = ANY(:s)"),
                {"s": sorted(schemas)},
            ).all()
            quote = connection.dialect.identifier_preparer.quote
    finally:
        engine.dispose()
    return [
        f"{quote(schema)}.{quote(table)}" for schema, table in rows if (schema, table) not in keep
    ]


def _restore_postgres(env: Environment, path: Path) -> None:
    """All or nothing: drop the tables made after the backup and replay the archive,
    in one psql transaction fed by ``pg_restore --file=-``.
    """
    drops = "".join(
        f"DROP TABLE IF EXISTS {name} CASCADE;\n"
        for name in _tables_made_after(env, _backup_tables(env, path))
    )
    child = pg_environment(env.url)
    with tempfile.TemporaryFile() as restore_errors, tempfile.TemporaryFile() as psql_errors:
        producer = subprocess.Popen(
            [
                find_binary("pg_restore"),
                "--clean",
                "--if-exists",
                "--no-owner",
                "--file=-",
                str(path),
            ],
            env=child,
            stdout=subprocess.PIPE,
            stderr=restore_errors,
        )
        consumer = subprocess.Popen(
            [
                find_binary("psql"),
                "--no-password",
                "--no-psqlrc",
                "--quiet",
                "--single-transaction",
                "--set=ON_ERROR_STOP=1",
                "--file=-",
            ],
            env=child,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=psql_errors,
        )
        assert producer.stdout is not None and consumer.stdin is not None
        try:
            consumer.stdin.write(drops.encode())
            shutil.copyfileobj(producer.stdout, consumer.stdin, 1024 * 1024)
        except BrokenPipeError:
            pass  # psql stopped on an error; its message and exit code say which
        finally:
            with contextlib.suppress(BrokenPipeError):
                consumer.stdin.close()
            producer.stdout.close()
        producer.wait()
        consumer.wait()
        if producer.returncode != 0 or consumer.returncode != 0:
            failed = psql_errors if consumer.returncode != 0 else restore_errors
            failed.seek(0)
            lines = failed.read().decode(errors="replace").strip().splitlines()
            raise BackupError(
                f"Restoring {path.name} failed and was rolled back, the database is unchanged: "
                f"{lines[0] if lines else 'exit code ' + str(consumer.returncode)}"
            )
