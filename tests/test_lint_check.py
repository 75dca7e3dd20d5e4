"""`invoke lint` and `invoke check`: locking and data-losing revisions caught before they run."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from helpers import QUIET, ScratchProject, cli_env, run_invoke

from safe_migrations.core.config import Environment
from safe_migrations.core.errors import BlockedError
from safe_migrations.operations.check import check_drift, run_check, stairway
from safe_migrations.pipeline.migrate import RunOptions, migrate
from safe_migrations.pipeline.status import read_current
from safe_migrations.pipeline.upgrade import run_migrations
from safe_migrations.project.alembic_api import DEFAULT_PROJECT, history, upgrade_path
from safe_migrations.project.lint import lint_revisions

BASE_TABLE = 'op.create_table("orders", sa.Column("id", sa.BigInteger, primary_key=True))'
RISKY = {
    "adding-required-field": 'op.add_column("orders", sa.Column("code", sa.Text, nullable=False))',
    "require-concurrent-index-creation": 'op.create_index("ix_orders_id", "orders", ["id"])',
    "ban-drop-column": 'op.drop_column("orders", "note")',
}


def lint_all(scratch: ScratchProject):  # noqa: ANN201 - LintResult
    project = scratch.project()
    return lint_revisions(project, upgrade_path(project.scripts(), None, "head"))


@pytest.mark.parametrize("rule", sorted(RISKY))
def test_risky_revision_is_reported_with_rule_and_revision(
    scratch: ScratchProject, rule: str
) -> None:
    scratch.add(BASE_TABLE + '\nop.add_column("orders", sa.Column("note", sa.Text))')
    risky = scratch.add(RISKY[rule])
    result = lint_all(scratch)
    found = [(f.revision, f.rule) for f in result.blocking]
    assert (risky, rule) in found
    assert all(revision == risky for revision, _ in found)
    finding = next(f for f in result.blocking if f.rule == rule)
    assert finding.path.endswith(f"{risky}.py") and finding.statement.endswith(";")


@pytest.mark.parametrize("rule", sorted(RISKY))
def test_allow_marker_with_reason_passes_and_is_listed(scratch: ScratchProject, rule: str) -> None:
    scratch.add(BASE_TABLE + '\nop.add_column("orders", sa.Column("note", sa.Text))')
    risky = scratch.add(
        f"# squawk: allow {rule} -- table is empty in every environment\n" + RISKY[rule]
    )
    result = lint_all(scratch)
    assert result.blocking == []
    assert [(f.revision, f.rule, f.reason) for f in result.allowed] == [
        (risky, rule, "table is empty in every environment")
    ]


def test_marker_without_reason_allows_nothing(scratch: ScratchProject) -> None:
    scratch.add(BASE_TABLE + '\nop.add_column("orders", sa.Column("note", sa.Text))')
    scratch.add("# squawk: allow ban-drop-column\n" + RISKY["ban-drop-column"])
    assert [f.rule for f in lint_all(scratch).blocking] == ["ban-drop-column"]


def test_clean_revision_passes(scratch: ScratchProject) -> None:
    scratch.add(BASE_TABLE)
    scratch.add('op.add_column("orders", sa.Column("note", sa.Text))')
    result = lint_all(scratch)
    assert result.findings == [] and len(result.checked) == 2


def test_concurrent_index_in_autocommit_block_is_clean(scratch: ScratchProject) -> None:
    scratch.add(BASE_TABLE)
    scratch.add(
        "with op.get_context().autocommit_block():\n"
        '    op.create_index("ix_o", "orders", ["id"], postgresql_concurrently=True)'
    )
    assert lint_all(scratch).findings == []


def test_revision_that_reads_rows_is_named_not_crashed(scratch: ScratchProject) -> None:
    scratch.add(BASE_TABLE)
    reader = scratch.add('op.get_bind().execute(sa.text("SELECT 1")).fetchone()')
    result = lint_all(scratch)
    assert list(result.unrendered) == [reader] and result.checked == ["r001"]


def test_example_schema_passes_lint_with_its_allowed_rename() -> None:
    result = lint_revisions(DEFAULT_PROJECT, upgrade_path(DEFAULT_PROJECT.scripts(), None, "head"))
    assert result.blocking == []
    assert [(f.revision, f.rule) for f in result.allowed] == [("0006", "renaming-column")]


def test_lint_cli_exit_codes_and_json() -> None:
    clean = run_invoke("lint", "--all", "--json")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert json.loads(clean.stdout)["ok"] is True
    ranged = run_invoke("lint", "--range", "0005:0006")
    assert ranged.returncode == 0 and "0006" in ranged.stdout and "0005:" not in ranged.stdout
    bad = run_invoke("lint", "--range", "nope")
    assert bad.returncode == 2 and "--range must look like A:B" in bad.stderr


def test_stairway_names_the_revision_whose_downgrade_forgets_a_table(
    pg_url: str, scratch: ScratchProject, make_env: Callable[..., Environment]
) -> None:
    env = make_env(pg_url)
    scratch.add(BASE_TABLE, 'op.drop_table("orders")')
    leaky = scratch.add('op.create_table("audit", sa.Column("id", sa.Integer))', "pass")
    scratch.add(
        'op.add_column("orders", sa.Column("note", sa.Text))', 'op.drop_column("orders", "note")'
    )
    result = stairway(env, scratch.project())
    assert not result.ok and f"revision {leaky}" in result.message
    assert "audit" in result.message


def test_example_schema_passes_the_stairway(
    pg_url: str, make_env: Callable[..., Environment]
) -> None:
    result = stairway(make_env(pg_url), DEFAULT_PROJECT)
    assert result.ok, result.message
    assert f"{len(history(DEFAULT_PROJECT.scripts()))} revision(s)" in result.message


def test_model_change_without_revision_is_drift_naming_table_and_column(
    pg_url: str, scratch: ScratchProject, make_env: Callable[..., Environment]
) -> None:
    env = make_env(pg_url)
    scratch.add(BASE_TABLE, 'op.drop_table("orders")')
    models = sa.MetaData()
    sa.Table(
        "orders",
        models,
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column("coupon", sa.Text),
    )
    run_migrations(env, scratch.project(models), "head")
    drift = check_drift(env, scratch.project(models))
    assert not drift.ok and "add_column orders.coupon" in drift.message
    results = {r.name: r for r in run_check(env, scratch.project(models), with_stairway=False)}
    assert not results["drift"].ok and results["single_head"].ok and results["lint"].ok


def test_environment_with_lint_refuses_to_migrate_an_unallowed_finding(
    sqlite_url: str, scratch: ScratchProject, make_env: Callable[..., Environment]
) -> None:
    env = make_env(sqlite_url, health={"lint": True})
    scratch.add(
        BASE_TABLE + '\nop.add_column("orders", sa.Column("note", sa.Text))',
        'op.drop_table("orders")',
    )
    scratch.add(RISKY["ban-drop-column"])
    with pytest.raises(BlockedError, match=r"\(lint\): r002: ban-drop-column"):
        migrate(env, RunOptions(yes=True, skip_validation=True), scratch.project(), QUIET)
    assert read_current(env) is None


def test_a_downgrade_that_raises_is_the_stairways_finding_among_the_check_lines(
    pg_url: str, scratch: ScratchProject, tmp_path: Path
) -> None:
    """Was: only "failed and was rolled back", none of check's other lines."""
    scratch.add(BASE_TABLE, 'op.drop_table("orders")')
    broken = scratch.add(
        'op.add_column("orders", sa.Column("note", sa.Text))',
        'raise RuntimeError("this downgrade is broken")',
    )
    env = cli_env(tmp_path, pg_url, alembic={"script_location": str(scratch.folder)})
    done = run_invoke("check", "--env", "staging", "--stairway", env=env)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "single_head" in done.stdout and "lint" in done.stdout
    assert f"revision {broken}" in done.stdout and "this downgrade is broken" in done.stdout
