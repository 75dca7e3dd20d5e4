"""The zero-downtime rewrites over the forms real revisions are written in, on a real
PostgreSQL with populated tables, under ``safe_operations: rewrite`` and the shipped
data-statement limit.

Each form either runs, and then the schema equals bare Alembic's from the same
revisions (names included: long names SQLAlchemy cut, names PostgreSQL chose) with
nothing NOT VALID, INVALID or ``sm_*`` left; or it is refused before any statement ran,
with one sentence naming the rule and the safe alternative. The forms are drawn from
strong_migrations' checks, squawk's rules, django-pg-zero-downtime-migrations and the
histories of Flask-Migrate (``render_as_batch``), CKAN, Airflow and Superset: batch and
not, ``index=True``, inline keys, names near 63 characters, schema-qualified tables.
How long each holds its locks under load is measured by
``benchmarks/bench_zero_downtime.py``; here, what it leaves."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import ScratchProject, fresh_database
from sqlalchemy import MetaData, create_engine, inspect, text
from sqlalchemy.pool import NullPool

from safe_migrations.core.config import Environment
from safe_migrations.core.errors import RefusedError
from safe_migrations.pipeline.upgrade import MigrationError, run_migrations

ROWS = 2_000
LIMIT = 1_000  # migration.max_rows_in_one_statement in these tests (100,000 shipped)
LONG = "a_table_name_that_runs_long"  # with its column, conventional names pass 63


def base(rows: int) -> str:
    """The tables every form works on, ``rows`` rows each (the benchmark: 1,000,000)."""
    return f"""
op.execute("CREATE SCHEMA app")
op.create_table(
    "t",
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("v", sa.Integer),
    sa.Column("ref", sa.Integer),
    sa.Column("note", sa.Text),
    sa.Column("name", sa.String(50)),
)
op.create_table("parent", sa.Column("id", sa.Integer, primary_key=True))
op.create_table("k", sa.Column("id", sa.Integer), sa.Column("v", sa.Integer))
op.create_table(
    "s",
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("v", sa.Integer),
    sa.Column("ref", sa.Integer),
    schema="app",
)
op.create_table("p2", sa.Column("id", sa.Integer, primary_key=True), schema="app")
op.create_table(
    "{LONG}",
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("the_referenced_parent_identifier", sa.Integer),
)
op.create_index("ix_t_ref", "t", ["ref"])
op.create_index("ix_s_ref", "s", ["ref"], schema="app")
op.create_foreign_key("fk_t_parent", "t", "parent", ["ref"], ["id"])
op.execute("INSERT INTO parent SELECT i FROM generate_series(0, 99) i")
op.execute("INSERT INTO app.p2 SELECT i FROM generate_series(0, 99) i")
op.execute(
    "INSERT INTO t SELECT i, i, i % 100, 'n' || i, 'x' || i FROM generate_series(1, {rows}) i"
)
op.execute("INSERT INTO k SELECT i, i FROM generate_series(1, {rows}) i")
op.execute("INSERT INTO app.s SELECT i, i, i % 100 FROM generate_series(1, {rows}) i")
op.execute("INSERT INTO {LONG} SELECT i, i % 100 FROM generate_series(1, {rows}) i")
op.execute("ANALYZE")  # as autovacuum has done to any table in service
"""


BASE = base(ROWS)
CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
LONG_FK = "fk_" + "x" * 70  # op.f(): SQLAlchemy cuts it to 63 with a hash
BATCH = 'with op.batch_alter_table("t") as batch_op:\n    '

# name: (the operation as a revision writes it, what must happen)
# "rewritten": runs in its non-blocking form; "written": runs as written (nothing to
# rewrite, or a table of the run's own); "refused <rule>": refused before any statement.
FORMS: dict[str, tuple[str, str]] = {
    # indexes
    "create_index": ('op.create_index("ix_t_v", "t", ["v"])', "rewritten"),
    "create_index_unique": ('op.create_index("ux_t_v", "t", ["v"], unique=True)', "rewritten"),
    "create_index_two_columns": ('op.create_index("ix_t_v_ref", "t", ["v", "ref"])', "rewritten"),
    "create_index_partial": (
        'op.create_index("ix_t_part", "t", ["v"], postgresql_where=sa.text("v > 10"))',
        "rewritten",
    ),
    "create_index_expression": (
        'op.create_index("ix_t_lower", "t", [sa.text("lower(note)")])',
        "rewritten",
    ),
    "create_index_include": (
        'op.create_index("ix_t_inc", "t", ["v"], postgresql_include=["note"])',
        "rewritten",
    ),
    "create_index_long_name": (
        f'op.create_index(op.f("ix_{"v" * 70}"), "t", ["v"])',
        "rewritten",
    ),
    "create_index_schema": ('op.create_index("ix_s_v", "s", ["v"], schema="app")', "rewritten"),
    "create_index_already_concurrent": (
        "with op.get_context().autocommit_block():\n"
        '    op.create_index("ix_t_v", "t", ["v"], postgresql_concurrently=True)',
        "rewritten",
    ),
    "batch_create_index": (BATCH + 'batch_op.create_index("ix_t_v", ["v"])', "rewritten"),
    "drop_index": ('op.drop_index("ix_t_ref", table_name="t")', "rewritten"),
    "drop_index_without_table": ('op.drop_index("ix_t_ref")', "rewritten"),
    "drop_index_schema": ('op.drop_index("ix_s_ref", table_name="s", schema="app")', "rewritten"),
    "batch_drop_index": (BATCH + 'batch_op.drop_index("ix_t_ref")', "rewritten"),
    # foreign keys and checks
    "create_foreign_key_named": (
        'op.drop_constraint("fk_t_parent", "t")\n'
        'op.create_foreign_key("fk_t_ref", "t", "parent", ["ref"], ["id"])',
        "rewritten",
    ),
    "create_foreign_key_unnamed": (
        'op.drop_constraint("fk_t_parent", "t")\n'
        'op.create_foreign_key(None, "t", "parent", ["ref"], ["id"])',
        "rewritten",
    ),
    "create_foreign_key_on_delete": (
        'op.drop_constraint("fk_t_parent", "t")\n'
        'op.create_foreign_key("fk_t_ref", "t", "parent", ["ref"], ["id"], ondelete="CASCADE")',
        "rewritten",
    ),
    "create_foreign_key_schema": (
        'op.create_foreign_key("fk_s_p2", "s", "p2", ["ref"], ["id"], '
        'source_schema="app", referent_schema="app")',
        "rewritten",
    ),
    "create_foreign_key_long_name": (
        'op.drop_constraint("fk_t_parent", "t")\n'
        f'op.create_foreign_key(op.f("{LONG_FK}"), "t", "parent", ["ref"], ["id"])',
        "rewritten",
    ),
    "create_foreign_key_conventional_long_name": (
        f'op.create_foreign_key(None, "{LONG}", "parent", '
        '["the_referenced_parent_identifier"], ["id"])',
        "rewritten",
    ),
    "create_foreign_key_deferrable": (
        'op.drop_constraint("fk_t_parent", "t")\n'
        'op.create_foreign_key("fk_t_ref", "t", "parent", ["ref"], ["id"], '
        'deferrable=True, initially="DEFERRED")',
        "written",
    ),
    "batch_add_column_and_foreign_key": (
        BATCH + 'batch_op.add_column(sa.Column("parent_id", sa.Integer))\n'
        '    batch_op.create_foreign_key("fk_t_parent_id", "parent", ["parent_id"], ["id"])',
        "rewritten",
    ),
    "create_check_constraint": ('op.create_check_constraint("ck_t_v", "t", "v > 0")', "rewritten"),
    "create_check_constraint_unnamed": (
        'op.create_check_constraint(None, "t", "v > 0")',
        "rewritten",
    ),
    "create_check_constraint_long_name": (
        f'op.create_check_constraint(op.f("ck_{"c" * 70}"), "t", "v > 0")',
        "rewritten",
    ),
    "create_check_constraint_conventional": (
        f'op.create_check_constraint("positive_identifier_of_the_parent", "{LONG}", '
        '"the_referenced_parent_identifier >= 0")',
        "rewritten",
    ),
    "create_check_constraint_schema": (
        'op.create_check_constraint("ck_s_v", "s", "v > 0", schema="app")',
        "rewritten",
    ),
    "batch_create_check_constraint": (
        BATCH + 'batch_op.create_check_constraint("ck_t_v", "v > 0")',
        "rewritten",
    ),
    # unique constraints and primary keys
    "create_unique_constraint": (
        'op.create_unique_constraint("uq_t_v", "t", ["v"])',
        "rewritten",
    ),
    "create_unique_constraint_unnamed": (
        'op.create_unique_constraint(None, "t", ["v"])',
        "rewritten",
    ),
    "create_unique_constraint_two_columns": (
        'op.create_unique_constraint("uq_t_v_ref", "t", ["v", "ref"])',
        "rewritten",
    ),
    "create_unique_constraint_schema": (
        'op.create_unique_constraint("uq_s_v", "s", ["v"], schema="app")',
        "rewritten",
    ),
    "batch_unique_after_create_table": (
        'op.create_table("extra", sa.Column("id", sa.Integer, primary_key=True))\n'
        + BATCH
        + 'batch_op.create_unique_constraint("uq_t_v", ["v"])',
        "rewritten",
    ),
    "create_primary_key": ('op.create_primary_key("pk_k", "k", ["id"])', "rewritten"),
    "create_primary_key_unnamed": ('op.create_primary_key(None, "k", ["id"])', "rewritten"),
    "batch_create_primary_key": (
        'with op.batch_alter_table("k") as batch_op:\n'
        '    batch_op.create_primary_key("pk_k", ["id"])',
        "rewritten",
    ),
    # columns
    "add_column": ('op.add_column("t", sa.Column("extra", sa.Integer))', "written"),
    "add_column_constant_default": (
        'op.add_column("t", sa.Column("state", sa.Text, server_default="new", nullable=False))',
        "written",
    ),
    "add_column_index_true": (
        'op.add_column("t", sa.Column("code", sa.Integer, index=True))',
        "rewritten",
    ),
    "add_column_unique_true": (
        'op.add_column("t", sa.Column("code", sa.Integer, unique=True))',
        "rewritten",
    ),
    "add_column_inline_foreign_key": (
        'op.add_column("t", sa.Column("owner_id", sa.Integer, sa.ForeignKey("parent.id")))',
        "rewritten",
    ),
    "add_column_inline_foreign_key_indexed": (
        'op.add_column("t", sa.Column("owner_id", sa.Integer, '
        'sa.ForeignKey("parent.id", name="fk_t_owner"), index=True))',
        "rewritten",
    ),
    "add_column_schema_foreign_key": (
        'op.add_column("s", sa.Column("p2_id", sa.Integer, sa.ForeignKey("app.p2.id")), '
        'schema="app")',
        "rewritten",
    ),
    "batch_add_column_index_true": (
        BATCH + 'batch_op.add_column(sa.Column("code", sa.Integer, index=True))',
        "rewritten",
    ),
    "add_column_then_index_same_revision": (
        'op.add_column("t", sa.Column("code", sa.Integer))\n'
        'op.create_index("ix_t_code", "t", ["code"])',
        "rewritten",
    ),
    "add_column_not_null_no_default": (
        'op.add_column("t", sa.Column("req", sa.Integer, nullable=False))',
        "refused adding-not-nullable-field",
    ),
    "add_column_volatile_default": (
        'op.add_column("t", sa.Column("tok", sa.Text, '
        'server_default=sa.text("md5(random()::text)")))',
        "refused adding-field-with-default",
    ),
    "add_column_computed": (
        'op.add_column("t", sa.Column("v2", sa.Integer, sa.Computed("v * 2")))',
        "refused adding-generated-column",
    ),
    "add_column_identity": (
        'op.add_column("k", sa.Column("seq", sa.Integer, sa.Identity()))',
        "refused adding-generated-column",
    ),
    "alter_column_not_null": (
        'op.alter_column("t", "v", existing_type=sa.Integer, nullable=False)',
        "rewritten",
    ),
    "alter_column_not_null_schema": (
        'op.alter_column("s", "v", existing_type=sa.Integer, nullable=False, schema="app")',
        "rewritten",
    ),
    "batch_alter_column_not_null": (
        BATCH + 'batch_op.alter_column("v", existing_type=sa.Integer, nullable=False)',
        "rewritten",
    ),
    "alter_column_not_null_and_default": (
        'op.alter_column("t", "v", existing_type=sa.Integer, nullable=False, server_default="0")',
        "rewritten",
    ),
    "alter_column_nullable": (
        'op.alter_column("t", "v", existing_type=sa.Integer, nullable=True)',
        "written",
    ),
    "alter_column_varchar_to_text": (
        'op.alter_column("t", "name", existing_type=sa.String(50), type_=sa.Text)',
        "written",
    ),
    "alter_column_varchar_longer": (
        'op.alter_column("t", "name", existing_type=sa.String(50), type_=sa.String(200))',
        "written",
    ),
    "alter_column_type_rewrites": (
        'op.alter_column("t", "v", existing_type=sa.Integer, type_=sa.BigInteger)',
        "refused changing-column-type",
    ),
    "batch_alter_column_type": (
        BATCH + 'batch_op.alter_column("v", existing_type=sa.Integer, type_=sa.BigInteger)',
        "refused changing-column-type",
    ),
    "alter_column_rename": (
        'op.alter_column("t", "note", new_column_name="remark")',
        "refused renaming-column",
    ),
    "drop_column": ('op.drop_column("t", "note")', "refused ban-drop-column"),
    "batch_drop_column": (BATCH + 'batch_op.drop_column("note")', "refused ban-drop-column"),
    "rename_table": ('op.rename_table("k", "k2")', "refused renaming-table"),
    "drop_table": ('op.drop_table("k")', "refused ban-drop-table"),
    "drop_constraint": ('op.drop_constraint("fk_t_parent", "t", type_="foreignkey")', "written"),
    # data
    "execute_update_whole_table": (
        "op.execute(\"UPDATE t SET note = 'x'\")",
        "refused large-data-change",
    ),
    "execute_delete_whole_table": ('op.execute("DELETE FROM k")', "refused large-data-change"),
    "execute_insert_select": (
        'op.execute("INSERT INTO k SELECT id + 100000, v FROM k")',
        "refused large-data-change",
    ),
    "execute_update_few_rows": (
        "op.execute(\"UPDATE t SET note = 'x' WHERE id < 10\")",
        "written",
    ),
    "new_table_filled_and_updated": (
        'op.create_table("fresh", sa.Column("id", sa.Integer, primary_key=True), '
        'sa.Column("v", sa.Integer))\n'
        'op.execute("INSERT INTO fresh SELECT i, i FROM generate_series(1, 5000) i")\n'
        'op.execute("UPDATE fresh SET v = v + 1")\n'
        'op.create_index("ix_fresh_v", "fresh", ["v"])\n'
        'op.create_unique_constraint("uq_fresh_v", "fresh", ["v"])',
        "written",
    ),
    "backfill": (
        "from safe_migrations.ops import backfill\n"
        'op.add_column("t", sa.Column("copy", sa.Integer))\n'
        'backfill("t", {"copy": "v"})',
        "rewritten",
    ),
}


def shape(url: str) -> dict[str, Any]:
    """What Alembic's compare looks at, per table of both schemas, with every name; and
    what a rewrite may leave behind (read on one connection)."""
    engine = create_engine(url, poolclass=NullPool)
    try:
        connection = engine.connect()
        found = inspect(connection)
        tables: dict[str, Any] = {}
        for schema in (None, "app"):
            for table in sorted(found.get_table_names(schema=schema)):
                if table == "alembic_version":
                    continue
                tables[f"{schema}.{table}"] = {
                    "columns": [
                        (c["name"], str(c["type"]), c["nullable"], str(c.get("default")))
                        for c in found.get_columns(table, schema=schema)
                    ],
                    "pk": found.get_pk_constraint(table, schema=schema),
                    "indexes": sorted(
                        (
                            i["name"],
                            tuple(str(c) for c in i["column_names"]),
                            bool(i["unique"]),
                            str(i.get("dialect_options")),
                        )
                        for i in found.get_indexes(table, schema=schema)
                    ),
                    "unique": sorted(
                        (u["name"], tuple(u["column_names"]))
                        for u in found.get_unique_constraints(table, schema=schema)
                    ),
                    "checks": sorted(
                        (c["name"], c["sqltext"])
                        for c in found.get_check_constraints(table, schema=schema)
                    ),
                    "fks": sorted(
                        (
                            f["name"],
                            tuple(f["constrained_columns"]),
                            f["referred_table"],
                            str(f.get("options")),
                        )
                        for f in found.get_foreign_keys(table, schema=schema)
                    ),
                }
        connection.close()
        return tables
    finally:
        engine.dispose()


def leftovers(url: str) -> list[str]:
    """INVALID indexes, NOT VALID constraints and the tool's own checks."""
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            return [
                row[0]
                for row in connection.execute(
                    text(
                        "SELECT indexrelid::regclass::text FROM pg_index WHERE NOT indisvalid "
                        "UNION ALL SELECT conname FROM pg_constraint "
                        "WHERE NOT convalidated OR conname LIKE 'sm\\_%'"
                    )
                )
            ]
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def forms_template(pg_admin_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A database at r001 (the base, populated), built once; each form's databases are
    copies of it (CREATE DATABASE ... TEMPLATE), closed to connections meanwhile."""
    from helpers import write_environment
    from sqlalchemy.engine import make_url

    from safe_migrations.core.config import load_environment

    folder = tmp_path_factory.mktemp("forms-template")
    scratch = ScratchProject(folder / "p")
    scratch.add(BASE)
    write_environment(folder / "environments", "bare", folder / "var")
    with fresh_database(pg_admin_url) as url:
        env = load_environment(
            "bare", environ={"DATABASE_URL": url}, directory=folder / "environments"
        )
        run_migrations(env, scratch.project(), "r001")
        name = make_url(url).database
        admin = create_engine(pg_admin_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(
                text(f'ALTER DATABASE "{name}" IS_TEMPLATE true ALLOW_CONNECTIONS false')
            )
        try:
            yield str(name)
        finally:
            with admin.connect() as connection:
                connection.execute(
                    text(f'ALTER DATABASE "{name}" IS_TEMPLATE false ALLOW_CONNECTIONS true')
                )
            admin.dispose()


@pytest.fixture
def at_base(pg_admin_url: str, forms_template: str) -> Iterator[tuple[str, str]]:
    """Two copies of the template at r001: one for the rewrite, one for bare Alembic."""
    import uuid

    from sqlalchemy.engine import make_url

    names = [f"f_{uuid.uuid4().hex[:12]}" for _side in range(2)]
    admin = create_engine(pg_admin_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        for name in names:
            connection.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{forms_template}"'))
    try:
        urls = [
            make_url(pg_admin_url).set(database=n).render_as_string(hide_password=False)
            for n in names
        ]
        yield urls[0], urls[1]
    finally:
        with admin.connect() as connection:
            for name in names:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def forms_project(folder: Path, operation: str, conventional: bool = False) -> Any:
    """The base and the operation; models with a naming convention for the forms that
    name their constraints by it (Alembic's operations name them from env.py's
    target_metadata)."""
    scratch = ScratchProject(folder)
    scratch.add(BASE)
    scratch.add(operation)
    return scratch.project(MetaData(naming_convention=CONVENTION) if conventional else None)


def safe_env(make_env: Callable[..., Environment], url: str, name: str = "staging") -> Environment:
    return make_env(
        url,
        name=name,
        migration={
            "safe_operations": "rewrite",
            "max_rows_in_one_statement": LIMIT,
            "lock_timeout": 0.5,
        },
    )


@pytest.mark.parametrize("name", sorted(FORMS))
def test_every_form_runs_as_bare_alembic_leaves_it_or_is_refused_before_any_statement(
    name: str,
    at_base: tuple[str, str],
    make_env: Callable[..., Environment],
    tmp_path: Path,
) -> None:
    pg_url, second_url = at_base
    code, outcome = FORMS[name]
    project = forms_project(tmp_path / "safe", code, "conventional" in name)
    safe = safe_env(make_env, pg_url)
    before = shape(pg_url)
    if outcome.startswith("refused"):
        rule = outcome.split()[1]
        with pytest.raises(RefusedError) as refused:
            run_migrations(safe, project, "r002")
        assert refused.value.exit_code == 2
        assert f"squawk: allow {rule}" in refused.value.message
        assert "instead," in refused.value.message
        assert shape(pg_url) == before  # nothing of r002 ran
        return
    applied = run_migrations(safe, project, "r002")
    bare = make_env(second_url, name="bare", migration={"safe_operations": "off"})
    run_migrations(bare, forms_project(tmp_path / "bare", code, "conventional" in name), "r002")
    assert shape(pg_url) == shape(second_url)
    assert leftovers(pg_url) == []
    rewritten = [r for r in applied[-1].rewritten if r.get("outcome", "ran") == "ran"]
    assert bool(rewritten) == (outcome == "rewritten"), applied[-1].rewritten


def test_the_corpus_holds_at_least_fifty_forms_with_batch_long_names_and_schemas() -> None:
    assert len(FORMS) >= 50
    assert sum(name.startswith("batch_") for name in FORMS) >= 8
    assert sum("schema" in name for name in FORMS) >= 6
    assert sum("long" in name or "conventional" in name for name in FORMS) >= 5


# --- failure paths: what a failed part leaves is what the report says -----------------

# name: (the operation, the name it adds, the team's fix of the data)
BROKEN = {
    "foreign_key_the_rows_break": (
        'op.create_foreign_key("fk_t_v", "t", "parent", ["v"], ["id"])',
        "fk_t_v",
        "UPDATE t SET v = id % 100",
    ),
    "check_the_rows_break": (
        'op.create_check_constraint("ck_t_neg", "t", "v < 0")',
        "ck_t_neg",
        "UPDATE t SET v = -id",
    ),
    "unique_the_rows_break": (
        'op.create_unique_constraint("uq_t_ref", "t", ["ref"])',
        "uq_t_ref",
        "ALTER TABLE t DROP CONSTRAINT fk_t_parent; UPDATE t SET ref = id",
    ),
    "not_null_with_nulls_left": (
        'op.alter_column("t", "name", existing_type=sa.String(50), nullable=False)',
        "sm_nn_",
        "UPDATE t SET name = 'x' WHERE name IS NULL",
    ),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_a_part_the_rows_break_takes_back_what_it_added_and_a_fixed_rerun_completes(
    name: str, pg_url: str, make_env: Callable[..., Environment], tmp_path: Path
) -> None:
    code, added, fix = BROKEN[name]
    scratch = ScratchProject(tmp_path / "p")
    scratch.add(BASE)
    scratch.add('op.execute("UPDATE t SET name = NULL WHERE id = 7")')
    scratch.add('op.create_index("ix_t_v", "t", ["v"])\n' + code)
    project = scratch.project()
    safe = safe_env(make_env, pg_url)
    run_migrations(safe, project, "r002")
    with pytest.raises(MigrationError) as failed:
        run_migrations(safe, project, "r003")
    message = failed.value.message
    assert "failed" in message and "r003" in message
    # The index built before the failing part committed, and the sentence names it.
    assert "stay applied: create_index ix_t_v" in message
    assert leftovers(pg_url) == []
    tables = shape(pg_url)["None.t"]
    names = [n for n, *_ in tables["indexes"]] + [n for n, *_ in tables["checks"]]
    names += [n for n, *_ in tables["fks"]] + [n for n, *_ in tables["unique"]]
    assert not [n for n in names if n and n.startswith(added)], names
    assert "ix_t_v" in [n for n, *_ in tables["indexes"]]
    engine = create_engine(pg_url, poolclass=NullPool)
    with engine.begin() as connection:  # the team fixes the data; the rerun completes
        connection.execute(text(fix))
    engine.dispose()
    assert run_migrations(safe, project, "r003")[-1].revision == "r003"
    assert leftovers(pg_url) == []


def test_a_check_a_kill_left_behind_is_dropped_by_the_next_run_and_by_a_downgrade(
    pg_url: str, make_env: Callable[..., Environment], tmp_path: Path
) -> None:
    """A kill between SET NOT NULL and the check's drop leaves a valid sm_nn_* check;
    validation names it, and the next run, upward or down, drops it first."""
    from safe_migrations.engines.pgsafe import _check_name
    from safe_migrations.pipeline.validate import validate

    scratch = ScratchProject(tmp_path / "p")
    scratch.add(BASE)
    scratch.add(
        'op.add_column("t", sa.Column("extra", sa.Integer))', 'op.drop_column("t", "extra")'
    )
    project = scratch.project()
    safe = safe_env(make_env, pg_url)
    run_migrations(safe, project, "r001")

    def leave_a_check() -> str:
        check = _check_name("t", "v")
        engine = create_engine(pg_url, poolclass=NullPool)
        with engine.begin() as connection:
            connection.execute(text(f"ALTER TABLE t ADD CONSTRAINT {check} CHECK (v IS NOT NULL)"))
            connection.execute(text("ALTER TABLE t ALTER COLUMN v SET NOT NULL"))
        engine.dispose()
        return check

    check = leave_a_check()
    results = {r.name: r for r in validate(safe, project, "r001", compare_models=False)}
    assert not results["constraints"].ok and check in results["constraints"].message
    run_migrations(safe, project, "r002")
    assert leftovers(pg_url) == []
    leave_a_check()
    run_migrations(safe, project, "r001", "downgrade")
    assert leftovers(pg_url) == []


RUNTIME_UPDATE = """
bind = op.get_bind()
for note in ("a", "b"):
    bind.execute(sa.text("UPDATE t SET note = :n"), {"n": note})
"""


def test_a_large_data_statement_issued_at_run_time_rolls_the_revision_back_before_it_runs(
    pg_url: str, make_env: Callable[..., Environment], tmp_path: Path
) -> None:
    scratch = ScratchProject(tmp_path / "p")
    scratch.add(BASE)
    scratch.add('op.add_column("t", sa.Column("extra", sa.Integer))\n' + RUNTIME_UPDATE)
    project = scratch.project()
    safe = safe_env(make_env, pg_url)
    run_migrations(safe, project, "r001")
    with pytest.raises(MigrationError) as failed:
        run_migrations(safe, project, "r002")
    message = failed.value.message
    assert "max_rows_in_one_statement=1,000" in message and "backfill" in message
    assert "squawk: allow large-data-change" in message
    table = shape(pg_url)["None.t"]
    assert "extra" not in [c[0] for c in table["columns"]]  # the whole revision rolled back
    engine = create_engine(pg_url, poolclass=NullPool)
    with engine.connect() as connection:
        changed = connection.execute(text("SELECT count(*) FROM t WHERE note IN ('a', 'b')"))
        assert changed.scalar() == 0
    engine.dispose()
    marked = ScratchProject(tmp_path / "marked")
    marked.add(BASE)
    marked.add("# squawk: allow large-data-change -- a small table in staging\n" + RUNTIME_UPDATE)
    run_migrations(safe_env(make_env, pg_url, "marked"), marked.project(), "r002")


def test_backfill_sizes_its_batches_by_time() -> None:
    """Quick batches grow (at most doubling), slow ones shrink to the target, and no
    batch exceeds batch_size."""
    from safe_migrations.ops import next_size

    assert next_size(100, 0.005, 0.05, 10_000) == 200
    assert next_size(8_000, 0.2, 0.05, 10_000) == 2_000
    assert next_size(9_000, 0.01, 0.05, 10_000) == 10_000
    assert next_size(1, 5.0, 0.05, 10_000) == 1


# --- refusals: all at once, before the backup, never for the history the team shipped --


def test_refusals_list_every_pending_revision_at_once_before_the_prompt_and_the_backup(
    pg_url: str, make_env: Callable[..., Environment], tmp_path: Path
) -> None:
    from helpers import QUIET, UNATTENDED

    from safe_migrations.pipeline.migrate import migrate

    scratch = ScratchProject(tmp_path / "p")
    scratch.add(BASE)
    scratch.add('op.drop_column("t", "note")\nop.rename_table("k", "k2")')
    scratch.add('op.alter_column("t", "v", existing_type=sa.Integer, type_=sa.BigInteger)')
    project = scratch.project()
    env = make_env(
        pg_url,
        migration={"safe_operations": "rewrite", "max_rows_in_one_statement": LIMIT},
        backup={"required": True, "folder": str(tmp_path / "backups")},
    )
    run_migrations(env, project, "r001")
    with pytest.raises(RefusedError) as refused:
        migrate(env, UNATTENDED, project, QUIET)
    message = refused.value.message
    for said in ("revision r002", "drop_column", "rename_table", "revision r003", "type"):
        assert said in message, said
    assert not list((tmp_path / "backups").glob("*"))  # a refused run takes no backup
    with create_engine(pg_url, poolclass=NullPool).connect() as connection:
        assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar() == (
            "r001"
        )


def test_the_history_init_baselines_is_never_refused_and_an_edit_or_a_new_revision_is(
    pg_url: str, make_env: Callable[..., Environment], tmp_path: Path
) -> None:
    """Shipped revisions re-applied after a downgrade (every team does it on staging) run;
    a new revision breaking the same rule is refused, and so is a shipped one edited."""
    from safe_migrations.project.adopt import history_change

    scratch = ScratchProject(tmp_path / "p")
    scratch.add(BASE)
    shipped = scratch.add(
        'op.drop_column("t", "note")', 'op.add_column("t", sa.Column("note", sa.Text))'
    )
    change = history_change(tmp_path, scratch.folder / "alembic.ini", scratch.folder)
    assert change is not None and "shipped before adoption" in change.text
    change.path.write_text(change.text)
    scratch.add('op.drop_column("t", "name")')
    project = scratch.project()
    env = safe_env(make_env, pg_url)
    run_migrations(env, project, "r001")
    assert run_migrations(env, project, shipped)[-1].revision == shipped
    run_migrations(env, project, "r001", "downgrade")
    assert run_migrations(env, project, shipped)[-1].revision == shipped  # again: not refused
    with pytest.raises(RefusedError, match="revision r003.*drop_column drops t.name"):
        run_migrations(env, project, "r003")
    run_migrations(env, project, "r001", "downgrade")
    path = scratch.folder / "versions" / f"{shipped}.py"
    path.write_text(path.read_text() + "\n# edited after it shipped\n")
    with pytest.raises(RefusedError, match=f"revision {shipped}"):
        run_migrations(env, project, shipped)


# --- a kill between the parts of a rewrite ----------------------------------------------

KILLED = """
import os, re, sys
from pathlib import Path
from sqlalchemy import event
from sqlalchemy.engine import Engine
from safe_migrations.core.config import load_environment
from safe_migrations.pipeline.upgrade import run_migrations
from safe_migrations.project.alembic_api import Project

url, directory, folder, pattern = sys.argv[1:5]

@event.listens_for(Engine, "before_cursor_execute")
def die(conn, cursor, statement, *rest):
    if re.search(pattern, statement):
        os._exit(9)  # as SIGKILL: no clean-up of ours runs

env = load_environment("staging", environ={"DATABASE_URL": url}, directory=Path(directory))
run_migrations(env, Project(script_location=Path(folder)), "head")
"""
# (the operation, the statement the runner dies before, what validation then names)
KILLS = {
    "not_null_before_its_check": ("not_null", r"ADD CONSTRAINT sm_nn_", None),
    "not_null_before_validate": ("not_null", r"VALIDATE CONSTRAINT sm_nn_", "sm_nn_"),
    "not_null_before_set": ("not_null", r"SET NOT NULL", "sm_nn_"),
    "not_null_before_the_checks_drop": ("not_null", r"DROP CONSTRAINT IF EXISTS sm_nn_", "sm_nn_"),
    "foreign_key_before_validate": ("foreign_key", r"VALIDATE CONSTRAINT fk_t_owner", "fk_t_owner"),
    "unique_before_using_index": ("unique", r"USING INDEX", None),
}
KILLED_FORMS = {
    "not_null": 'op.alter_column("t", "v", existing_type=sa.Integer, nullable=False)',
    "foreign_key": 'op.create_foreign_key("fk_t_owner", "t", "parent", ["ref"], ["id"])',
    "unique": 'op.create_unique_constraint("uq_t_v", "t", ["v"])',
}


@pytest.mark.parametrize("name", sorted(KILLS))
def test_a_runner_killed_between_parts_leaves_what_validation_names_and_a_rerun_completes(
    name: str,
    at_base: tuple[str, str],
    make_env: Callable[..., Environment],
    tmp_path: Path,
) -> None:
    import subprocess
    import sys

    from safe_migrations.pipeline.validate import validate

    pg_url, second_url = at_base
    form, pattern, named = KILLS[name]
    project = forms_project(tmp_path / "safe", KILLED_FORMS[form])
    safe = safe_env(make_env, pg_url)
    killed = subprocess.run(
        [
            sys.executable,
            "-c",
            KILLED,
            pg_url,
            str(tmp_path / "environments"),
            str(project.script_location),
            pattern,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert killed.returncode == 9, killed.stdout + killed.stderr
    checks = {r.name: r for r in validate(safe, project, "r001", compare_models=False)}
    if named is None:
        assert checks["constraints"].ok, checks["constraints"].message
    else:
        assert not checks["constraints"].ok and named in checks["constraints"].message
    assert run_migrations(safe, project, "head")[-1].revision == "r002"
    bare = make_env(second_url, name="bare", migration={"safe_operations": "off"})
    run_migrations(bare, forms_project(tmp_path / "bare", KILLED_FORMS[form]), "r002")
    assert shape(pg_url) == shape(second_url)
    assert leftovers(pg_url) == []


def test_a_table_an_earlier_revision_of_the_run_made_and_filled_is_not_judged_at_run_time(
    pg_url: str, make_env: Callable[..., Environment], tmp_path: Path
) -> None:
    """Tables the pending revisions create are nobody else's yet, also in the revisions
    after the one that made them (each commits on its own)."""
    scratch = ScratchProject(tmp_path / "p")
    scratch.add(
        'op.create_table("fresh", sa.Column("id", sa.Integer, primary_key=True), '
        'sa.Column("v", sa.Integer))\n'
        'op.execute("INSERT INTO fresh SELECT i, i FROM generate_series(1, 5000) i")\n'
        'op.execute("ANALYZE fresh")'
    )
    scratch.add('op.get_bind().execute(sa.text("UPDATE fresh SET v = v + 1"))')
    applied = run_migrations(safe_env(make_env, pg_url), scratch.project(), "head")
    assert [a.revision for a in applied] == ["r001", "r002"]


def test_dry_run_renders_every_form_in_the_form_that_would_run(
    make_env: Callable[..., Environment], tmp_path: Path
) -> None:
    """Offline (dry-run, lint, the refusals' listing), every form renders under rewrite,
    batch ones included; a rewritten index shows as CONCURRENTLY."""
    from safe_migrations.engines import engine_for
    from safe_migrations.project.alembic_api import render_sql, upgrade_path

    env = make_env("postgresql://nobody@127.0.0.1:1/none", migration={"safe_operations": "rewrite"})
    failed = {}
    for name, (code, _outcome) in FORMS.items():
        project = forms_project(tmp_path / name, code, "conventional" in name)
        scripts = project.scripts()
        with engine_for("postgresql").safe_operations(env):
            pending = upgrade_path(scripts, "r001", "r002")
            [rendered] = render_sql(project.config(), scripts, pending, "postgresql")
        if rendered.error:
            failed[name] = rendered.error
        if name in ("batch_create_index", "add_column_index_true"):
            assert "CONCURRENTLY" in (rendered.sql or ""), rendered.sql
    assert failed == {}
