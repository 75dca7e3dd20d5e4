"""A project's own env.py is held to the contract: it runs migrations only on the
connection the tasks hand in, with the tasks' options (issue 14, in part)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import QUIET, UNATTENDED, ScratchProject, fresh_database, table_names

from safe_migrations.core.config import Environment
from safe_migrations.operations.check import check_drift
from safe_migrations.pipeline.migrate import migrate
from safe_migrations.pipeline.status import read_current
from safe_migrations.pipeline.upgrade import MigrationError, run_migrations
from safe_migrations.project.alembic_api import EnvPyContractError, Project

STOCK_ONLINE = '''
from alembic import context
from sqlalchemy import create_engine, pool

config = context.config
target_metadata = None


def run_migrations_online():
    """As `alembic init` writes it: an engine of its own, from its own URL."""
    connectable = create_engine({url!r}, poolclass=pool.NullPool)
    with connectable.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()


run_migrations_online()
'''

SHARING_BUT_ONE_TRANSACTION = """
from alembic import context

config = context.config


def run_migrations_online():
    connection = config.attributes["connection"]
    context.configure(connection=connection, transaction_per_migration=False)
    with context.begin_transaction():
        context.run_migrations()


run_migrations_online()
"""


@pytest.fixture
def other_database(pg_admin_url: str) -> Iterator[str]:
    with fresh_database(pg_admin_url) as url:
        yield url


def _two_revisions(scratch: ScratchProject) -> None:
    scratch.add('op.create_table("a", sa.Column("id", sa.Integer, primary_key=True))')
    scratch.add('op.create_table("b", sa.Column("id", sa.Integer, primary_key=True))')


def test_env_py_with_its_own_engine_is_refused_before_any_statement(
    pg_url: str,
    other_database: str,
    scratch: ScratchProject,
    make_env: Callable[..., Environment],
) -> None:
    env = make_env(pg_url)
    _two_revisions(scratch)
    (scratch.folder / "env.py").write_text(STOCK_ONLINE.format(url=other_database))
    with pytest.raises(
        EnvPyContractError, match="env.py configured Alembic with a connection"
    ) as refused:
        migrate(env, UNATTENDED, scratch.project(), QUIET)
    assert refused.value.exit_code == 2
    assert 'config.attributes.get("connection")' in refused.value.message
    assert table_names(other_database) == set()  # the database env.py named: untouched
    assert table_names(pg_url) == set() and read_current(env) is None


def test_stock_placeholder_url_is_refused_naming_env_py(
    pg_url: str, scratch: ScratchProject, make_env: Callable[..., Environment]
) -> None:
    env = make_env(pg_url)
    _two_revisions(scratch)
    (scratch.folder / "env.py").write_text(
        STOCK_ONLINE.format(url="driver://user:pass@localhost/dbname")
    )
    with pytest.raises(EnvPyContractError, match="env.py failed before configuring Alembic"):
        migrate(env, UNATTENDED, scratch.project(), QUIET)
    assert table_names(pg_url) == set()


def test_the_tasks_options_apply_whatever_env_py_passes(
    pg_url: str, scratch: ScratchProject, make_env: Callable[..., Environment]
) -> None:
    env = make_env(pg_url)
    scratch.add('op.create_table("a", sa.Column("id", sa.Integer, primary_key=True))')
    scratch.add('raise RuntimeError("second fails")')
    (scratch.folder / "env.py").write_text(SHARING_BUT_ONE_TRANSACTION)
    with pytest.raises(MigrationError, match="r002"):
        migrate(env, UNATTENDED, scratch.project(), QUIET)
    assert read_current(env) == "r001"  # one transaction per revision, as the environment says
    assert "a" in table_names(pg_url)


OWN_METADATA = """
import sys

from alembic import context

sys.path.insert(0, {package!r})
from myapp.models import metadata  # the project's own models, not migrations/models.py

config = context.config
context.configure(connection=config.attributes["connection"], target_metadata={target})
with context.begin_transaction():
    context.run_migrations()
"""

MODELS = """
import sqlalchemy as sa

metadata = sa.MetaData()
sa.Table("a", metadata, sa.Column("id", sa.Integer, primary_key=True), sa.Column("n", sa.Integer))
"""


def _project_with_own_models(scratch: ScratchProject, tmp_path: Path, target: str) -> None:
    package = tmp_path / "src" / "myapp"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "models.py").write_text(MODELS)  # a model column the database does not have
    scratch.add('op.create_table("a", sa.Column("id", sa.Integer, primary_key=True))')
    env_py = OWN_METADATA.format(package=str(tmp_path / "src"), target=target)
    (scratch.folder / "env.py").write_text(env_py)


def test_drift_compares_with_the_metadata_the_projects_env_py_configures(
    pg_url: str, tmp_path: Path, scratch: ScratchProject, make_env: Callable[..., Environment]
) -> None:
    env = make_env(pg_url)
    _project_with_own_models(scratch, tmp_path, "metadata")
    project = Project(script_location=scratch.folder)
    run_migrations(env, project, "head")
    drift = check_drift(env, project)
    assert not drift.ok and drift.blocks
    assert "a" in drift.message and "n" in drift.message


def test_no_metadata_is_a_warning_that_says_how_to_provide_it(
    pg_url: str, tmp_path: Path, scratch: ScratchProject, make_env: Callable[..., Environment]
) -> None:
    env = make_env(pg_url)
    _project_with_own_models(scratch, tmp_path, "None")
    project = Project(script_location=scratch.folder)
    run_migrations(env, project, "head")
    drift = check_drift(env, project)
    assert not drift.ok and drift.severity == "warning" and not drift.blocks
    assert "target_metadata" in drift.message


def test_an_import_env_py_cannot_make_names_the_module_and_asks_for_no_lines(
    pg_url: str, scratch: ScratchProject, make_env: Callable[..., Environment]
) -> None:
    """Was: "failed before configuring Alembic (No module named ...)" and then the lines
    to add, which this env.py already has."""
    from safe_migrations.project.alembic_api import ENV_PY_LINES

    env = make_env(pg_url)
    _two_revisions(scratch)
    env_py = scratch.folder / "env.py"
    text = env_py.read_text().replace(
        "from alembic import context\n", "from alembic import context\n\nimport nosuchapp\n", 1
    )
    assert "import nosuchapp" in text
    env_py.write_text(text)
    with pytest.raises(EnvPyContractError) as refused:
        run_migrations(env, scratch.project(), "head")
    message = refused.value.message
    assert "could not import nosuchapp" in message and "looked for in" in message
    assert ENV_PY_LINES.strip().splitlines()[0] not in message
    assert refused.value.exit_code == 2 and table_names(pg_url) == set()
