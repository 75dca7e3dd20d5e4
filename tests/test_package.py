"""The installed package: named safe_migrations, a `safe-migrations` command, nothing
named `tasks`, and paths that belong to the project it runs in (issue 14, in part)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from helpers import ROOT


def test_nothing_named_tasks_is_installed(installed: Path, tmp_path: Path) -> None:
    python = str(installed / "bin" / "python")
    outside = {"cwd": tmp_path, "capture_output": True, "text": True, "check": False}
    assert subprocess.run([python, "-c", "import tasks"], **outside).returncode != 0  # type: ignore[call-overload]
    found = subprocess.run(
        [python, "-c", "import safe_migrations; print(safe_migrations.__file__)"], **outside
    )  # type: ignore[call-overload]
    assert found.returncode == 0 and "site-packages/safe_migrations" in found.stdout
    site = next((installed / "lib").glob("python3*/site-packages"))
    assert not (site / "tasks").exists() and not (site / "tasks.py").exists()
    assert (site / "safe_migrations" / "templates" / "report.md.j2").exists()


def test_the_command_runs_a_project_without_tasks_py_and_keeps_its_files_there(
    installed: Path, tmp_path: Path
) -> None:
    project = tmp_path / "service"
    project.mkdir()
    for name in ("migrations", "environments"):
        shutil.copytree(ROOT / name, project / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "alembic.ini", project / "alembic.ini")
    command = str(installed / "bin" / "safe-migrations")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "MIGRATE_"))}
    listed = subprocess.run(
        [command, "--list"], cwd=project, env=env, capture_output=True, text=True, check=False
    )
    assert listed.returncode == 0 and "migrate (upgrade)" in listed.stdout
    run = subprocess.run(
        [command, "migrate", "--yes"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    status = subprocess.run(
        [command, "status"], cwd=project, env=env, capture_output=True, text=True, check=False
    )
    assert "current:     0007" in status.stdout
    assert (project / "var" / "local.db").exists()
    assert list((project / "var" / "reports").rglob("local-upgrade-*.json"))
    site = next((installed / "lib").glob("python3*/site-packages"))
    assert not (site / "var").exists() and not (site / "migrations").exists()
