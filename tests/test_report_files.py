"""Reports stay true and private after faults: full or read-only folders, damaged files,
planted symlinks, a permissive umask (issue 11, items 7 and 8)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import QUIET, cli_env, run_invoke

from safe_migrations.core.config import Environment
from safe_migrations.core.errors import BlockedError
from safe_migrations.pipeline.backup import take_backup
from safe_migrations.pipeline.migrate import Console, RunOptions, migrate
from safe_migrations.pipeline.status import read_current
from safe_migrations.project.alembic_api import DEFAULT_PROJECT


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs, filled to the last byte."""
    mount = tmp_path / "full"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    (mount / "reports").mkdir()
    try:
        with open(mount / "filler", "wb") as handle:
            while True:
                handle.write(b"\0" * 4096)
                handle.flush()
    except OSError:
        pass
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_full_report_folder_blocks_in_health_before_any_change(
    sqlite_url: str, full_disk: Path, make_env: Callable[..., Environment]
) -> None:
    env = make_env(sqlite_url, reports={"folder": str(full_disk / "reports")})
    warnings: list[str] = []
    console = Console(say=lambda _t: None, ask=lambda _p: "no", warn=warnings.append)
    with pytest.raises(BlockedError, match="reports"):
        migrate(env, RunOptions(yes=True), DEFAULT_PROJECT, console)
    assert read_current(env) is None
    assert "could not be written" in warnings[0] and "this run failed" in warnings[0]


def test_report_that_cannot_be_written_never_hides_the_outcome(
    sqlite_url: str, full_disk: Path, tmp_path: Path
) -> None:
    env = cli_env(tmp_path, sqlite_url, reports={"folder": str(full_disk / "reports")})
    result = run_invoke("migrate", "--env", "staging", "--yes", "--skip-health-checks", env=env)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "the report could not be written" in result.stderr
    assert "database is at 0007 and this run succeeded" in result.stderr


def test_damaged_newest_report_is_skipped_by_readers_and_stops_rollback(
    sqlite_url: str, tmp_path: Path
) -> None:
    env = cli_env(tmp_path, sqlite_url, policy={"auto_rollback": True})
    assert run_invoke("migrate", "--env", "staging", "--yes", env=env).returncode == 0
    reports = tmp_path / "var" / "reports"
    damaged = reports / "staging-upgrade-29991231T000000000000Z-1.json"
    damaged.write_text('{"operation": "upgrade", "pre_rev')  # a disk-full truncation
    shown = run_invoke("report", "--env", "staging", env=env)
    assert shown.returncode == 0 and "skipping the damaged report" in shown.stderr
    assert "upgrade on staging" in shown.stdout
    issue = run_invoke("report", "--env", "staging", "--issue-body", env=env)
    assert issue.returncode == 0 and "Traceback" not in issue.stderr
    undo = run_invoke("rollback", "--env", "staging", "--yes", env=env)
    assert undo.returncode == 2 and "is damaged" in undo.stderr
    assert "Traceback" not in undo.stderr


def test_reports_are_written_whole_or_not_at_all(
    sqlite_url: str, make_env: Callable[..., Environment]
) -> None:
    env = make_env(sqlite_url)
    migrate(env, RunOptions(yes=True), DEFAULT_PROJECT, QUIET)
    names = sorted(p.name for p in env.report_dir.iterdir())
    assert not [n for n in names if n.endswith(".tmp")]  # no temporary file left behind
    for path in env.report_dir.glob("*.json"):
        json.loads(path.read_text())


def test_audit_log_symlink_is_not_followed(
    sqlite_url: str, tmp_path: Path, make_env: Callable[..., Environment]
) -> None:
    env = make_env(sqlite_url)
    outside = tmp_path / "outside.txt"
    outside.write_text("precious\n")
    env.report_dir.mkdir(parents=True)
    (env.report_dir / "audit.jsonl").symlink_to(outside)
    warnings: list[str] = []
    console = Console(say=lambda _t: None, ask=lambda _p: "no", warn=warnings.append)
    migrate(env, RunOptions(yes=True), DEFAULT_PROJECT, console)
    assert outside.read_text() == "precious\n"
    assert warnings and "could not be written" in warnings[0]


def test_symlinked_backup_folder_keeps_its_targets_mode(
    sqlite_url: str, tmp_path: Path, make_env: Callable[..., Environment]
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    link = tmp_path / "backups-link"
    link.symlink_to(shared)
    env = make_env(sqlite_url, backup={"folder": str(link)})
    migrate(env, RunOptions(yes=True), DEFAULT_PROJECT, QUIET)
    info = take_backup(env, "0007")
    assert stat.S_IMODE(shared.stat().st_mode) == 0o755
    assert stat.S_IMODE(os.stat(info.path).st_mode) == 0o600


def test_reports_and_outputs_are_private_under_umask_000(sqlite_url: str, tmp_path: Path) -> None:
    env = cli_env(tmp_path, sqlite_url)
    old = os.umask(0)
    try:
        assert run_invoke("migrate", "--env", "staging", "--yes", env=env).returncode == 0
        output = tmp_path / "out" / "health.json"
        health = run_invoke(
            "health", "--env", "staging", "--json", "--output", str(output), env=env
        )
        assert health.returncode == 0, health.stderr
    finally:
        os.umask(old)
    reports = tmp_path / "var" / "reports"
    assert stat.S_IMODE(reports.stat().st_mode) == 0o700
    assert {stat.S_IMODE(p.stat().st_mode) for p in reports.iterdir()} == {0o600}
    assert stat.S_IMODE(output.stat().st_mode) == 0o600
    assert stat.S_IMODE(output.parent.stat().st_mode) == 0o700
