"""`invoke generate`: new revisions through Alembic's own revision command."""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from helpers import ScratchProject

from safe_migrations.core.config import Environment
from safe_migrations.pipeline.upgrade import run_migrations
from safe_migrations.project.generate import new_revision


def test_generate_writes_a_revision_on_top_of_the_head(scratch: ScratchProject) -> None:
    first = scratch.add('op.create_table("a", sa.Column("id", sa.Integer, primary_key=True))')
    output = new_revision("add widgets", autogenerate=False, env=None, project=scratch.project())
    created = list((scratch.folder / "versions").glob("*add_widgets*.py"))
    assert len(created) == 1 and str(created[0]) in output
    text = created[0].read_text()
    assert f"down_revision: str | Sequence[str] | None = {first!r}" in text
    assert scratch.project().scripts().get_current_head() in created[0].name


def test_autogenerate_diffs_models_against_the_database(
    sqlite_url: str, scratch: ScratchProject, make_env: Callable[..., Environment]
) -> None:
    env = make_env(sqlite_url)
    scratch.add('op.create_table("a", sa.Column("id", sa.Integer, primary_key=True))')
    models = sa.MetaData()
    sa.Table(
        "a",
        models,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("label", sa.String(40)),
    )
    run_migrations(env, scratch.project(models), "head")
    new_revision("add label", autogenerate=True, env=env, project=scratch.project(models))
    created = next((scratch.folder / "versions").glob("*add_label*.py")).read_text()
    assert "batch_op.add_column(sa.Column('label'" in created or "add_column('a'" in created


def test_autogenerate_never_drops_the_tools_own_tables(
    sqlite_url: str, scratch: ScratchProject, make_env: Callable[..., Environment]
) -> None:
    """Was: on SQLite the revision dropped the rehearsal proof table, which no model has."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    from safe_migrations.operations.proof import TOOL_TABLES

    env = make_env(sqlite_url)
    scratch.add('op.create_table("a", sa.Column("id", sa.Integer, primary_key=True))')
    models = sa.MetaData()
    sa.Table("a", models, sa.Column("id", sa.Integer, primary_key=True))
    run_migrations(env, scratch.project(models), "head")
    engine = create_engine(sqlite_url, poolclass=NullPool)
    with engine.begin() as connection:
        for table in sorted(TOOL_TABLES):
            connection.execute(text(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY)"))
    engine.dispose()
    new_revision("nothing new", autogenerate=True, env=env, project=scratch.project(models))
    created = next((scratch.folder / "versions").glob("*nothing_new*.py")).read_text()
    assert "drop_table" not in created and not any(t in created for t in TOOL_TABLES)
