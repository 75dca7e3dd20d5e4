"""The MySQL journal and ``migrate --resume`` on a real MariaDB (issue 27): a 5-statement
revision killed (SIGKILL) after each of its statements blocks the next plain run, and
``--resume`` reaches head with the schema a clean run gives; a journal the catalog
contradicts resumes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import ScratchProject, cli_env, run_invoke
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

STATEMENTS = [
    'op.create_table("resume_a", sa.Column("id", sa.Integer, primary_key=True))',
    'op.add_column("resume_a", sa.Column("b", sa.Integer))',
    'op.create_index("ix_resume_a_b", "resume_a", ["b"])',
    'op.create_table("resume_c", sa.Column("id", sa.Integer, primary_key=True))',
    'op.add_column("resume_c", sa.Column("d", sa.String(20)))',
]
KILL = "SM_TEST_KILL_AFTER"


def killed_after(k: int) -> str:
    """The runner dies once statement ``k`` committed; never while the revision is only
    rendered offline (the refusals list its operations before the run, as dry-run does)."""
    return (
        f'if os.environ.get("{KILL}") == "{k}" and not op.get_context().as_sql:\n'
        "    os.kill(os.getpid(), signal.SIGKILL)  # the runner dies, statement committed"
    )


def five_statements(scratch: ScratchProject) -> None:
    scratch.add('op.create_table("first", sa.Column("id", sa.Integer, primary_key=True))')
    body = ["import os, signal"]
    for k, statement in enumerate(STATEMENTS, start=1):
        body += [statement, killed_after(k)]
    scratch.add("\n".join(body), message="five DDL statements")


def schema(url: str) -> dict[str, str]:
    """Every table as SHOW CREATE TABLE prints it, and the version table's row."""
    engine = create_engine(url, poolclass=NullPool)
    with engine.connect() as connection:
        names = [r[0] for r in connection.execute(text("SHOW TABLES"))]
        found = {
            name: connection.execute(text(f"SHOW CREATE TABLE `{name}`")).one()[1]
            for name in names
            if not name.startswith("safe_migrations_") and name != "alembic_version"
        }
        if "alembic_version" in names:
            found["version"] = connection.execute(
                text("SELECT version_num FROM alembic_version")
            ).scalar_one()
    engine.dispose()
    return found


def reset(url: str) -> None:
    engine = create_engine(url, poolclass=NullPool)
    with engine.begin() as connection:
        for (name,) in list(connection.execute(text("SHOW TABLES"))):
            connection.execute(text(f"DROP TABLE `{name}`"))
    engine.dispose()


@pytest.fixture
def env(tmp_path: Path, mysql_url: str, scratch: ScratchProject) -> dict[str, str]:
    five_statements(scratch)
    return cli_env(
        tmp_path,
        mysql_url,
        policy={"confirm": "never"},
        alembic={"script_location": str(scratch.folder)},
        migration={"online_ddl": "enforce"},
    )


def migrate(env: dict[str, str], *flags: str, kill: int | None = None):  # noqa: ANN201
    extra = {KILL: str(kill)} if kill is not None else {}
    return run_invoke("migrate", "--env", "staging", "--no-backup", *flags, env=env | extra)


def test_a_revision_killed_after_each_statement_resumes_to_the_clean_schema(
    env: dict[str, str], mysql_url: str
) -> None:
    clean = migrate(env)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    expected = schema(mysql_url)
    assert expected["version"] == "r002" and "ix_resume_a_b" in expected["resume_a"]
    for k in range(1, len(STATEMENTS) + 1):
        reset(mysql_url)
        killed = migrate(env, kill=k)
        assert killed.returncode == -9, killed.stdout + killed.stderr
        assert schema(mysql_url)["version"] == "r001"
        blocked = migrate(env)
        assert blocked.returncode == 3, blocked.stdout + blocked.stderr
        assert "partly applied" in blocked.stderr and "--resume" in blocked.stderr
        assert f"committed {k} of its statement(s)" in blocked.stdout
        resumed = migrate(env, "--resume")
        assert resumed.returncode == 0, f"after statement {k}: {resumed.stdout}{resumed.stderr}"
        assert schema(mysql_url) == expected, f"killed after statement {k}"
        again = migrate(env)  # the journal's record went with the version update
        assert again.returncode == 0, again.stdout + again.stderr


def test_a_journal_the_catalog_contradicts_resumes_nothing(
    env: dict[str, str], mysql_url: str
) -> None:
    assert migrate(env, kill=3).returncode == -9
    engine = create_engine(mysql_url, poolclass=NullPool)
    with engine.begin() as connection:  # someone undid statement 2 by hand
        connection.execute(text("ALTER TABLE resume_a DROP COLUMN b"))
    engine.dispose()
    before = schema(mysql_url)
    refused = migrate(env, "--resume")
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert "does not show it" in refused.stderr and "invoke resolve" in refused.stderr
    assert "ADD COLUMN b" in refused.stderr
    assert schema(mysql_url) == before  # nothing ran
