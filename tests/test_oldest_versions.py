"""The oldest SQLAlchemy and Alembic supported (1.4 and 1.16, as a Flask-SQLAlchemy 2.x
application pins them): pip resolves the tool beside them, and the example project and
an adopted `alembic init` project migrate on SQLite and PostgreSQL (issue 34)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from conftest import OLDEST
from helpers import ROOT, table_names
from projects import alembic_project, run, with_secrets


@pytest.fixture
def oldest_bin(installed_oldest: Path) -> Path:
    """A venv where pip installed the tool's wheel beside the oldest pins, versions checked."""
    bin_dir = installed_oldest / "bin"
    printed = run(
        ROOT,
        str(bin_dir / "python"),
        "-c",
        "import sqlalchemy, alembic; print(sqlalchemy.__version__, alembic.__version__)",
        env=dict(os.environ),
    )
    wanted = " ".join(pin.split("==")[1] for pin in OLDEST)
    assert printed.stdout.strip() == wanted, printed.stdout + printed.stderr
    return bin_dir


def _example_project(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    project = tmp_path / "service"
    project.mkdir()
    for name in ("migrations", "environments"):
        shutil.copytree(ROOT / name, project / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "alembic.ini", project / "alembic.ini")
    shutil.copy(ROOT / "tasks.py", project / "tasks.py")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "MIGRATE_"))}
    return project, base


def test_the_example_project_migrates_on_sqlite_and_postgresql(
    oldest_bin: Path, pg_url: str, tmp_path: Path
) -> None:
    project, base = _example_project(tmp_path)
    local = run(project, str(oldest_bin / "safe-migrations"), "migrate", "--yes", env=base)
    assert local.returncode == 0, local.stdout + local.stderr
    assert (
        "current:     0007"
        in run(project, str(oldest_bin / "safe-migrations"), "status", env=base).stdout
    )
    secrets = with_secrets(base, pg_url)
    invoke = str(oldest_bin / "invoke")
    first = run(project, invoke, "migrate", "--env", "staging", "-r", "0005", "--yes", env=secrets)
    assert first.returncode == 0, first.stdout + first.stderr
    staging = run(project, invoke, "migrate", "--env", "staging", "--yes", env=secrets)
    assert staging.returncode == 0, staging.stdout + staging.stderr
    assert "2 revision(s) applied" in staging.stdout
    assert list((project / "var" / "backups" / "staging").glob("*.manifest.json"))
    down = run(project, invoke, "rollback", "--env", "staging", "--yes", env=secrets)
    assert down.returncode == 0, down.stdout + down.stderr
    status = run(project, invoke, "status", "--env", "staging", env=secrets)
    assert "current:     0005" in status.stdout, status.stdout + status.stderr


def test_an_adopted_alembic_init_project_migrates_on_sqlite_and_postgresql(
    oldest_bin: Path, pg_url: str, tmp_path: Path
) -> None:
    theirs = f"sqlite:///{tmp_path / 'theirs.db'}"
    project, base = alembic_project(tmp_path, oldest_bin, "generic", theirs)
    adopted = run(project, str(oldest_bin / "safe-migrations"), "init", env=base)
    assert adopted.returncode == 0, adopted.stdout + adopted.stderr
    local = run(project, str(oldest_bin / "invoke"), "migrate", "--yes", env=base)
    assert local.returncode == 0, local.stdout + local.stderr
    assert table_names(f"sqlite:///{project / 'var' / 'local.db'}") == {"alembic_version", "items"}
    staging = run(
        project,
        str(oldest_bin / "invoke"),
        "migrate",
        "--env",
        "staging",
        "--yes",
        env=with_secrets(base, pg_url),
    )
    assert staging.returncode == 0, staging.stdout + staging.stderr
    assert table_names(pg_url) == {"alembic_version", "items"}
    assert not (tmp_path / "theirs.db").exists()  # the URL in alembic.ini: never used
