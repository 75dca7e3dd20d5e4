"""pytest-alembic's built-in tests (single head, upgrade, model definitions match the
DDL, up/down consistency) pass against this repository's migrations/ on PostgreSQL.

pytest-alembic 0.13 does not collect under pytest 9, which this suite uses, so it
runs in a venv of its own with pytest<9, against a copy of the Alembic project.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from helpers import ROOT

CONFTEST = """
import os

import pytest
import sqlalchemy


@pytest.fixture
def alembic_engine():
    url = os.environ["PYTEST_ALEMBIC_URL"]
    return sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
"""


def test_pytest_alembic_built_in_tests_pass_on_postgresql(pg_url: str, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run(
        [
            str(venv / "bin" / "pip"),
            "install",
            "-q",
            "pytest<9",
            "pytest-alembic>=0.11",
            "alembic>=1.13",
            "sqlalchemy>=2.0",
            "psycopg2-binary>=2.9",
        ],
        check=True,
        capture_output=True,
        timeout=900,
    )
    project = tmp_path / "project"
    shutil.copytree(
        ROOT / "migrations", project / "migrations", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(ROOT / "alembic.ini", project / "alembic.ini")
    (project / "tests").mkdir()
    (project / "tests" / "conftest.py").write_text(CONFTEST)  # where pytest-alembic binds
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"} | {
        "PYTEST_ALEMBIC_URL": pg_url
    }
    run = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-m",
            "pytest",
            "--test-alembic",
            "-p",
            "pytest_alembic",
            "-q",
            "-rA",
        ],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    for name in (
        "test_single_head_revision",
        "test_upgrade",
        "test_model_definitions_match_ddl",
        "test_up_down_consistency",
    ):
        assert "PASSED" in run.stdout and name in run.stdout, name
