"""A rehearsal under the application's load (issue 28, ``rehearse --traffic N``) on a
real PostgreSQL: four clients read and write the touched table on the copy while the
revisions run; a revision holding ACCESS EXCLUSIVE for 2 s fails
``policy.max_app_wait_ms: 300`` by name, the same change made safe passes."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
from helpers import ScratchProject, cli_env, run_invoke
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool
from test_rehearsal import SCHEMA, copies_on

from safe_migrations.core.config import load_environment
from safe_migrations.pipeline.upgrade import run_migrations


def prepared(tmp_path: Path, pg_url: str, scratch: ScratchProject) -> dict[str, str]:
    first = scratch.add(
        'op.create_table("accounts", sa.Column("id", sa.Integer, primary_key=True), '
        'sa.Column("balance", sa.Integer))'
    )
    variables = cli_env(
        tmp_path,
        pg_url,
        policy={"confirm": "never", "max_app_wait_ms": 300},
        alembic={"script_location": str(scratch.folder)},
    )
    env = load_environment(
        "staging",
        environ={"DATABASE_URL": pg_url},
        directory=tmp_path / "environments",
    )
    run_migrations(env, scratch.project(), first)
    engine = create_engine(pg_url, poolclass=NullPool)
    with engine.begin() as connection:
        connection.execute(
            text("INSERT INTO accounts SELECT i, 0 FROM generate_series(1, 1000) AS i")
        )
    engine.dispose()
    return variables


def rehearsal(tmp_path: Path) -> dict:
    folder = tmp_path / "var" / "reports" / "rehearsals"
    report = json.loads(sorted(folder.glob("*.json"))[-1].read_text())
    jsonschema.validate(report, SCHEMA)
    return report


def test_a_two_second_exclusive_lock_fails_the_application_wait_limit(
    tmp_path: Path, pg_url: str, pg_admin_url: str, scratch: ScratchProject
) -> None:
    variables = prepared(tmp_path, pg_url, scratch)
    scratch.add(
        'op.execute("LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE")\n'
        'op.execute("SELECT pg_sleep(2)")',
        message="a slow statement under an exclusive lock",
    )
    result = run_invoke("rehearse", "--env", "staging", "--traffic", "4", env=variables)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "r002" in result.stderr and "policy.max_app_wait_ms=300" in result.stderr
    report = rehearsal(tmp_path)
    waits = report["revisions"][0]["app_waits"]
    # every client queued behind the lock: at least one operation each, counted here
    # (how many more ran before the lock and after it depends on the machine's speed)
    assert waits["worst_ms"] >= 1500 and waits["operations"] >= 4
    assert report["traffic"]["clients"] == 4 and report["traffic"]["tables"] == ["accounts"]
    assert copies_on(pg_admin_url) == set()


def test_the_same_change_without_the_long_lock_passes(
    tmp_path: Path, pg_url: str, scratch: ScratchProject
) -> None:
    variables = prepared(tmp_path, pg_url, scratch)
    scratch.add(
        'op.execute("SELECT pg_sleep(2)")\nop.add_column("accounts", sa.Column("note", sa.Text))',
        message="the slow part first, then a brief lock",
    )
    result = run_invoke("rehearse", "--env", "staging", "--traffic", "4", env=variables)
    assert result.returncode == 0, result.stdout + result.stderr
    report = rehearsal(tmp_path)
    waits = report["revisions"][0]["app_waits"]
    assert waits["operations"] > 100 and waits["worst_ms"] < 300, waits
    assert report["success"] is True
