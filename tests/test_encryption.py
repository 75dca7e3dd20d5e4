"""Backups encrypted to the team's age key: never in clear on disk, restored only with
the identity (issue 12, item 8)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pyrage
import pytest
from helpers import QUIET, seed, table_fingerprints
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from safe_migrations.core.config import Environment
from safe_migrations.core.errors import BackupError, ConfigError
from safe_migrations.operations.standalone import restore
from safe_migrations.pipeline.backup import take_backup
from safe_migrations.pipeline.migrate import RunOptions, migrate
from safe_migrations.project.alembic_api import DEFAULT_PROJECT


@pytest.fixture
def age_key() -> tuple[str, str]:
    identity = pyrage.x25519.Identity.generate()
    return str(identity.to_public()), str(identity)


def test_encrypted_backup_is_never_in_clear_and_restores_with_the_identity(
    pg_url: str,
    make_env: Callable[..., Environment],
    age_key: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    recipient, identity = age_key
    env = make_env(pg_url, backup={"encrypt_to": recipient})
    seed(env, rows=20)
    info = take_backup(env, "0007")
    stored = Path(info.path).read_bytes()
    assert info.path.endswith(".dump.age") and stored.startswith(b"age-encryption.org/v1")
    assert b"PGDMP" not in stored and b"user1@example.org" not in stored
    assert info.tables >= 4 and info.size == len(stored)
    manifest = json.loads(Path(info.manifest).read_text())
    assert manifest["encrypted_to"] == recipient and manifest["sha256"] == info.sha256
    assert sorted(p.name for p in env.backup_dir.iterdir()) == sorted(
        [Path(info.path).name, Path(info.manifest).name]
    )
    before = table_fingerprints(env.url)
    engine = create_engine(env.url, poolclass=NullPool)
    with engine.begin() as connection:
        connection.execute(text("DELETE FROM orders"))
    engine.dispose()
    monkeypatch.delenv("SAFE_MIGRATIONS_AGE_IDENTITY", raising=False)
    with pytest.raises(ConfigError, match="SAFE_MIGRATIONS_AGE_IDENTITY"):
        restore(env, "latest", yes=True, interactive=False, console=QUIET)
    other = pyrage.x25519.Identity.generate()
    monkeypatch.setenv("SAFE_MIGRATIONS_AGE_IDENTITY", str(other))
    with pytest.raises(BackupError, match="cannot be decrypted"):
        restore(env, "latest", yes=True, interactive=False, console=QUIET)
    key_file = tmp_path / "team.key"
    key_file.write_text(f"# created: today\n{identity}\n")
    monkeypatch.setenv("SAFE_MIGRATIONS_AGE_IDENTITY", str(key_file))
    restore(env, "latest", yes=True, interactive=False, console=QUIET)
    assert table_fingerprints(env.url) == before
    assert sorted(p.name for p in env.backup_dir.iterdir()) == sorted(
        [Path(info.path).name, Path(info.manifest).name]
    )  # the clear copy used for the restore is gone


def test_encrypted_sqlite_backup_round_trips(
    sqlite_url: str,
    make_env: Callable[..., Environment],
    age_key: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    recipient, identity = age_key
    env = make_env(sqlite_url, backup={"encrypt_to": recipient})
    migrate(env, RunOptions(yes=True), DEFAULT_PROJECT, QUIET)
    info = take_backup(env, "0007")
    assert b"SQLite format" not in Path(info.path).read_bytes()
    migrate(env, RunOptions(yes=True, revision="0002", direction="downgrade"), None, QUIET)
    monkeypatch.setenv("SAFE_MIGRATIONS_AGE_IDENTITY", identity)
    restore(env, info.path, yes=True, interactive=False, console=QUIET)
    from safe_migrations.pipeline.status import read_current

    assert read_current(env) == "0007"


def test_encryption_settings_are_checked_when_loaded(
    sqlite_url: str, make_env: Callable[..., Environment], age_key: tuple[str, str]
) -> None:
    with pytest.raises(ConfigError, match="not an age recipient"):
        make_env(sqlite_url, backup={"encrypt_to": "age1notakey"})
    with pytest.raises(ConfigError, match="needs backup.format: custom"):
        make_env(sqlite_url, backup={"encrypt_to": age_key[0], "format": "directory"})
    unset = make_env(sqlite_url, backup={"encrypt_to": "${BACKUP_AGE_RECIPIENT:-}"})
    assert unset.settings.backup.encrypt_to is None


def test_a_restore_killed_mid_replay_leaves_its_plaintext_to_the_next_runs_sweep(
    pg_url: str, tmp_path: Path, age_key: tuple[str, str]
) -> None:
    """SIGKILL during the restore of an encrypted backup runs no cleanup: the decrypted
    copy it was replaying from is removed by the next run that uses the backup folder,
    and does not stand in the way of the next restore."""
    from helpers import HangingTool, cli_env, run_invoke

    recipient, identity = age_key
    key_file = tmp_path / "team.key"
    key_file.write_text(f"{identity}\n")
    env = cli_env(tmp_path, pg_url, policy={"confirm": "never"}, backup={"encrypt_to": recipient})
    env["SAFE_MIGRATIONS_AGE_IDENTITY"] = str(key_file)
    assert run_invoke("migrate", "--env", "staging", "--no-backup", env=env).returncode == 0
    assert run_invoke("backup", "--env", "staging", env=env).returncode == 0
    backups = tmp_path / "var" / "backups"
    kept = sorted(p.name for p in backups.iterdir())

    hanging = HangingTool(tmp_path / "spybin", "pg_restore")
    hanging.kill_runner_at_it("restore", "--env", "staging", "--backup", "latest", "--yes", env=env)
    left = [p for p in backups.glob(".decrypted-*") if p.is_dir()]
    assert left and any(f.read_bytes().startswith(b"PGDMP") for f in left[0].iterdir())

    again = run_invoke("restore", "--env", "staging", "--backup", "latest", "--yes", env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert sorted(p.name for p in backups.iterdir()) == kept  # nothing in clear is left
