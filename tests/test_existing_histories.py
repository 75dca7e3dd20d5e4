"""Existing histories (issue 15): a lint baseline that accepts the past, relative
revisions as Alembic takes them, lint and dry runs that never pass by checking
nothing, and a stairway whose scratch database is named by the environment."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from alembic import command
from alembic.config import Config
from helpers import ScratchProject, cli_env, run_invoke
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from safe_migrations.core.config import Environment
from safe_migrations.core.errors import ConfigError
from safe_migrations.core.revisions import resolve_revision
from safe_migrations.operations.check import stairway
from safe_migrations.pipeline.status import read_current

BASE_TABLE = (
    'op.create_table("orders", sa.Column("id", sa.BigInteger, primary_key=True), '
    'sa.Column("note", sa.Text))'
)
DROP_NOTE = 'op.drop_column("orders", "note")'
ADD_INDEX = 'op.create_index("ix_orders_id", "orders", ["id"])'
READS_ROWS = 'op.get_bind().execute(sa.text("SELECT 1")).fetchone()'


def lint(tmp_path: Path, scratch: ScratchProject, *flags: str):  # noqa: ANN201
    env = cli_env(tmp_path, "sqlite:///unused.db", alembic={"script_location": str(scratch.folder)})
    return run_invoke("lint", "--env", "staging", *flags, env=env)


def test_baseline_accepts_the_history_and_only_a_new_risky_revision_fails(
    tmp_path: Path, scratch: ScratchProject
) -> None:
    scratch.add(BASE_TABLE)
    dropped = scratch.add(DROP_NOTE)
    indexed = scratch.add(ADD_INDEX)
    assert lint(tmp_path, scratch, "--all").returncode == 1  # the history as it stands

    written = lint(tmp_path, scratch, "--baseline")
    assert written.returncode == 0, written.stdout + written.stderr
    baseline = yaml.safe_load((scratch.folder / "lint-baseline.yml").read_text())
    entries = {(e["revision"], e["rule"]) for e in baseline["accepted"]}
    assert entries == {(dropped, "ban-drop-column"), (indexed, "require-concurrent-index-creation")}
    assert all(e["reason"] == "" and len(e["fingerprint"]) == 16 for e in baseline["accepted"])

    accepted = lint(tmp_path, scratch, "--all")
    assert accepted.returncode == 0, accepted.stdout
    assert accepted.stdout.count("accepted in the baseline") == 2
    assert "2 baselined" in accepted.stdout

    risky = scratch.add('op.add_column("orders", sa.Column("code", sa.Text, nullable=False))')
    new = lint(tmp_path, scratch, "--all")
    assert new.returncode == 1
    assert f"{risky} (" in new.stdout and "adding-required-field [NOT ALLOWED]" in new.stdout
    assert new.stdout.count("accepted in the baseline") == 2  # the past stays accepted


def test_editing_a_baselined_revision_makes_its_finding_new_again(
    tmp_path: Path, scratch: ScratchProject
) -> None:
    scratch.add(BASE_TABLE)
    dropped = scratch.add(DROP_NOTE)
    assert lint(tmp_path, scratch, "--baseline").returncode == 0
    baseline = scratch.folder / "lint-baseline.yml"
    baseline.write_text(baseline.read_text().replace("reason: ''", "reason: column was unused"))
    assert "accepted in the baseline: column was unused" in lint(tmp_path, scratch, "--all").stdout

    revision_file = scratch.folder / "versions" / f"{dropped}.py"
    revision_file.write_text(revision_file.read_text() + "# edited after the baseline\n")
    edited = lint(tmp_path, scratch, "--all")
    assert edited.returncode == 1 and "ban-drop-column [NOT ALLOWED]" in edited.stdout

    rewritten = lint(tmp_path, scratch, "--baseline")  # accepting it again keeps the reason
    assert rewritten.returncode == 0
    assert "reason: column was unused" in baseline.read_text()


def test_since_lints_only_the_revisions_after_the_one_named(
    tmp_path: Path, scratch: ScratchProject
) -> None:
    scratch.add(BASE_TABLE)
    dropped = scratch.add(DROP_NOTE)
    last = scratch.add('op.add_column("orders", sa.Column("extra", sa.Text))')
    later = lint(tmp_path, scratch, "--since", dropped)
    assert later.returncode == 0, later.stdout
    assert f"{last}: clean" in later.stdout and dropped not in later.stdout
    assert "1 revision(s) checked" in later.stdout
    relative = lint(tmp_path, scratch, "--since", "head-2")  # what Alembic accepts
    assert relative.returncode == 1 and "ban-drop-column" in relative.stdout
    both = lint(tmp_path, scratch, "--since", dropped, "--all")
    assert both.returncode == 2 and "contradict" in both.stderr


def test_a_history_that_renders_nothing_fails_lint_and_dry_run(
    tmp_path: Path, scratch: ScratchProject, sqlite_url: str
) -> None:
    scratch.add(BASE_TABLE + "\n" + READS_ROWS)
    scratch.add(READS_ROWS)
    nothing = lint(tmp_path, scratch, "--all")
    assert nothing.returncode == 1, nothing.stdout
    assert "No revision could be rendered offline, so nothing was checked" in nothing.stderr
    assert nothing.stderr.count("first failure") == 1 and "Traceback" not in nothing.stderr

    env = cli_env(tmp_path, sqlite_url, alembic={"script_location": str(scratch.folder)})
    dry = run_invoke("migrate", "--env", "staging", "--dry-run", env=env)
    assert dry.returncode == 1, dry.stdout + dry.stderr
    assert "No pending revision could be rendered offline" in dry.stderr


def test_stock_env_py_with_its_placeholder_url_renders_for_the_environments_dialect(
    tmp_path: Path, scratch: ScratchProject
) -> None:
    project = tmp_path / "service"
    project.mkdir()
    config = Config(str(project / "alembic.ini"))
    command.init(config, str(project / "migrations"))  # stock env.py, driver:// in alembic.ini
    shutil.copy(project / "migrations" / "env.py", scratch.folder / "env.py")
    scratch.add(BASE_TABLE)
    scratch.add(DROP_NOTE)
    env = cli_env(
        tmp_path,
        "sqlite:///unused.db",
        alembic={"ini": str(project / "alembic.ini"), "script_location": str(scratch.folder)},
    )
    result = run_invoke("lint", "--env", "staging", "--all", env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "2 revision(s) checked" in result.stdout and "ban-drop-column" in result.stdout
    assert "0 not renderable" in result.stdout


def three(scratch: ScratchProject) -> list[str]:
    return [
        scratch.add(
            f'op.create_table("{name}", sa.Column("id", sa.Integer, primary_key=True))',
            f'op.drop_table("{name}")',
        )
        for name in ("a", "b", "c")
    ]


def test_relative_revisions_prefixes_and_labels_resolve_as_alembic_does(
    scratch: ScratchProject,
) -> None:
    first, second, third = three(scratch)
    scripts = scratch.project().scripts()
    assert resolve_revision(scripts, "head-1") == second
    assert resolve_revision(scripts, "-1", current=third) == second
    assert resolve_revision(scripts, "+2", current=None) == second
    assert resolve_revision(scripts, f"{first}+2") == third
    assert resolve_revision(scripts, "base+1") == first
    with pytest.raises(ConfigError, match="ambiguous"):
        resolve_revision(scripts, "r00")
    assert resolve_revision(scripts, "r002") == second
    with pytest.raises(ConfigError, match="only 3 revision"):
        resolve_revision(scripts, "head-4")
    with pytest.raises(ConfigError, match="only 0 revision"):
        resolve_revision(scripts, "+1", current=third)
    with pytest.raises(ConfigError, match="--revision base"):
        resolve_revision(scripts, "-3", current=third)  # to base only when typed out
    with pytest.raises(ConfigError, match=r"Unknown revision 'r009'; nearest: .*r00"):
        resolve_revision(scripts, "r009")


def test_branch_label_at_head_resolves(scratch: ScratchProject) -> None:
    first = scratch.add('op.create_table("a", sa.Column("id", sa.Integer, primary_key=True))')
    path = scratch.folder / "versions" / f"{first}.py"
    path.write_text(path.read_text().replace("branch_labels = None", "branch_labels = ('app',)"))
    second = scratch.add('op.create_table("b", sa.Column("id", sa.Integer, primary_key=True))')
    scripts = scratch.project().scripts()
    assert resolve_revision(scripts, "app@head") == second
    assert resolve_revision(scripts, "app@head-1") == first


@pytest.mark.parametrize("engine", ["postgresql", "sqlite"])
def test_downgrade_relative_two_moves_two_steps(
    engine: str, request: pytest.FixtureRequest, tmp_path: Path, scratch: ScratchProject
) -> None:
    url = request.getfixturevalue("pg_url" if engine == "postgresql" else "sqlite_url")
    first, _second, third = three(scratch)
    env = cli_env(tmp_path, url, alembic={"script_location": str(scratch.folder)})
    up = run_invoke("migrate", "--env", "staging", "--yes", env=env)
    assert up.returncode == 0, up.stdout + up.stderr
    down = run_invoke("downgrade", "--env", "staging", "--revision", "-2", "--yes", env=env)
    assert down.returncode == 0, down.stdout + down.stderr
    engine_ = create_engine(url, poolclass=NullPool)
    with engine_.connect() as connection:
        assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar() == first
    engine_.dispose()
    back = run_invoke("migrate", "--env", "staging", "--revision", "+1", "--yes", env=env)
    assert back.returncode == 0, back.stdout + back.stderr
    status = run_invoke("status", "--env", "staging", "--json", env=env)
    assert json.loads(status.stdout)["current"] == _second
    assert [p["revision"] for p in json.loads(status.stdout)["pending"]] == [third]


def test_stairway_uses_the_configured_prefix_and_leaves_no_database_behind(
    pg_url: str,
    pg_admin_url: str,
    make_env: Callable[..., Environment],
    scratch: ScratchProject,
    tmp_path: Path,
) -> None:
    seen = tmp_path / "seen.txt"
    record = (
        f"open({str(seen)!r}, 'a').write("
        'op.get_bind().execute(sa.text("SELECT current_database()")).scalar() + "\\n")'
    )
    scratch.add(
        'op.create_table("a", sa.Column("id", sa.Integer, primary_key=True))\n' + record,
        'op.drop_table("a")',
    )
    env = make_env(pg_url, check={"scratch_prefix": "team_scratch_"})
    result = stairway(env, scratch.project())
    assert result.ok, result.message
    names = set(seen.read_text().split())
    assert len(names) == 1 and next(iter(names)).startswith("team_scratch_")
    admin = create_engine(pg_admin_url, poolclass=NullPool)
    with admin.connect() as connection:
        left = connection.execute(
            text("SELECT datname FROM pg_database WHERE datname LIKE 'team_scratch_%'")
        ).all()
    admin.dispose()
    assert left == []
    assert read_current(env) is None  # the environment's own database untouched


def test_a_scratch_prefix_that_cannot_name_a_database_is_one_sentence(
    make_env: Callable[..., Environment], sqlite_url: str
) -> None:
    with pytest.raises(ConfigError, match="check.scratch_prefix"):
        make_env(sqlite_url, check={"scratch_prefix": 'x"; DROP DATABASE prod; --'})


def test_the_scripts_are_loaded_again_after_any_edit_and_a_missing_location_holds_none(
    tmp_path: Path,
) -> None:
    """A run asks for the scripts a dozen times and gets them loaded once, until a
    revision file is added or edited; a version location not made yet is no error."""
    import os

    from safe_migrations.project.alembic_api import heads, script_directory

    scratch = ScratchProject(tmp_path / "migrations")
    first = scratch.add(BASE_TABLE)
    project = scratch.project()
    loaded = project.scripts()
    assert project.scripts() is loaded and heads(loaded) == [first]
    second = scratch.add(DROP_NOTE)
    assert heads(project.scripts()) == [second]
    again = project.scripts()
    path = next(scratch.folder.glob(f"versions/*{second}*.py"))
    path.write_text(path.read_text().replace("test revision", "tset revision"))
    os.utime(path, ns=(0, 0))  # the same size and an earlier time: still an edit
    assert project.scripts() is not again
    cfg = project.config()
    later = os.pathsep.join([str(scratch.folder / "versions"), str(tmp_path / "later")])
    cfg.set_main_option("version_locations", later)  # alembic.ini: path_separator = os
    assert heads(script_directory(cfg)) == [second]
