"""The tasks as a user types them: exit codes, one-sentence errors, no tracebacks."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

from helpers import ROOT, ScratchProject, cli_env, run_invoke


def test_list_shows_every_task_and_alias() -> None:
    from safe_migrations.commands import ns

    result = run_invoke("--list")
    assert result.returncode == 0
    listed = set()
    for line in result.stdout.splitlines()[1:]:
        words = line.split()
        if words and line.startswith("  ") and not line.startswith("   "):  # not a wrapped help
            listed.add(words[0])
            if len(words) > 1 and words[1].startswith("("):  # "migrate (upgrade)"
                listed.update(w.strip("(),") for w in words[1:] if w.startswith("(") or "," in w)
    expected = set(ns.tasks) | {alias for t in ns.tasks.values() for alias in t.aliases}
    assert expected <= listed, expected - listed


# What every task that needs the database is given in the test below; the others
# refuse or finish before connecting, each for the reason named.
NEEDS_DATABASE = {
    "status": [],
    "health": [],
    "migrate": ["--yes"],
    "downgrade": ["--revision", "base", "--yes"],
    "backup": [],
    "check": [],
    "rehearse": [],
    "ci": [],
    "lint": [],
    "generate": ["-m", "probe", "--autogenerate"],
}
NO_DATABASE = {
    "heads": "reads the scripts only",
    "dashboard": "shows an unreachable database on its page and exits 0 (test_dashboard.py)",
    "pr-comment": "reads the pull-request jobs' report files only",
    "report": "reads report files only",
    "backups": "reads the backup folder (or the store) only",
    "rollback": "refused (2) before connecting when there is no run to undo",
    "restore": "refused (2) before connecting when there is no backup",
    "fleet-matrix": "refused (2) on a file that describes no fleet",
    "fleet-report": "reads fleet summary files only",
    "resolve": "refused (2) before connecting on an engine that never leaves a revision half done",
}


def test_unreachable_database_exits_3_from_every_task_that_needs_it(tmp_path: Path) -> None:
    from safe_migrations.commands import ns

    assert set(ns.tasks) == set(NEEDS_DATABASE) | set(NO_DATABASE)  # a new task is classified
    env = cli_env(tmp_path, "postgresql://u:pw@127.0.0.1:1/db", policy={"confirm": "never"})
    for name, args in NEEDS_DATABASE.items():
        result = run_invoke(name, "--env", "staging", *args, env=env)
        assert result.returncode == 3, (name, result.stderr)
        assert "refused" in result.stderr.lower() or "connection" in result.stderr, name
        assert "Traceback" not in result.stderr, name
    assert not list((ROOT / "migrations" / "versions").glob("*probe*"))


def test_migrate_then_status_on_sqlite(tmp_path: Path, sqlite_url: str) -> None:
    env = cli_env(tmp_path, sqlite_url, policy={"confirm": "never"})
    result = run_invoke("migrate", "--env", "staging", env=env)
    assert result.returncode == 0, result.stderr
    status = run_invoke("status", "--env", "staging", "--json", env=env)
    data = json.loads(status.stdout)
    assert data["current"] == data["head"] == "0007" and data["pending"] == []
    assert [r["revision"] for r in data["applied"]][:2] == ["0001", "0002"]


def test_unknown_environment_exits_2_with_one_sentence() -> None:
    result = run_invoke("status", "--env", "nope")
    assert result.returncode == 2
    assert "Unknown environment 'nope'" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_secret_exits_2_naming_it() -> None:
    result = run_invoke("status", "--env", "staging", env={"DB_HOST": "x"})
    assert result.returncode == 2
    assert "DB_PORT" in result.stderr and "Traceback" not in result.stderr


def test_unknown_revision_exits_2(tmp_path: Path, sqlite_url: str) -> None:
    env = cli_env(tmp_path, sqlite_url)
    result = run_invoke("migrate", "--env", "staging", "--revision", "deadbeef", "--yes", env=env)
    assert result.returncode == 2
    assert "Unknown revision 'deadbeef'" in result.stderr


def test_no_terminal_and_no_yes_refuses_before_any_work(tmp_path: Path, sqlite_url: str) -> None:
    env = cli_env(tmp_path, sqlite_url)
    result = run_invoke("migrate", "--env", "staging", env=env)
    assert result.returncode == 3
    assert "pass --yes" in result.stderr
    assert not Path(sqlite_url.removeprefix("sqlite:///")).exists()
    assert not (tmp_path / "var" / "reports").exists()


def test_heads_prints_the_single_head() -> None:
    result = run_invoke("heads")
    assert result.returncode == 0 and result.stdout.split() == ["0007"]


def test_generate_requires_a_message() -> None:
    result = run_invoke("generate")
    assert result.returncode == 2 and "needs a message" in result.stderr


def test_report_task_renders_last_report_in_each_format(tmp_path: Path, sqlite_url: str) -> None:
    env = cli_env(tmp_path, sqlite_url)
    assert run_invoke("migrate", "--env", "staging", "--yes", env=env).returncode == 0
    markdown = run_invoke("report", "--env", "staging", env=env)
    assert markdown.returncode == 0 and markdown.stdout.startswith("# ✅ upgrade on staging")
    data = json.loads(run_invoke("report", "--env", "staging", "--format", "json", env=env).stdout)
    assert data["post_revision"] == "0007"
    html = run_invoke("report", "--env", "staging", "--format", "html", env=env)
    assert html.stdout.startswith("<!doctype html>")
    no_failure = run_invoke("report", "--env", "staging", "--issue-body", env=env)
    assert no_failure.returncode == 0
    assert "failed before the migration wrote a report" in no_failure.stdout
    bad = run_invoke("report", "--env", "staging", "--format", "pdf", env=env)
    assert bad.returncode == 2 and "Unknown report format 'pdf'" in bad.stderr


def test_environment_can_point_at_another_alembic_project(
    tmp_path: Path, sqlite_url: str, scratch: ScratchProject
) -> None:
    scratch.add('op.create_table("widgets", sa.Column("id", sa.Integer, primary_key=True))')
    (scratch.folder / "models.py").write_text(
        "import sqlalchemy as sa\nmetadata = sa.MetaData()\n"
        'sa.Table("widgets", metadata, sa.Column("id", sa.Integer, primary_key=True))\n'
    )
    env = cli_env(tmp_path, sqlite_url, alembic={"script_location": str(scratch.folder)})
    result = run_invoke("migrate", "--env", "staging", "--yes", env=env)
    assert result.returncode == 0, result.stderr
    assert "schema matches the models" in result.stdout
    status = json.loads(run_invoke("status", "--env", "staging", "--json", env=env).stdout)
    assert status["current"] == "r001" and status["heads"] == ["r001"]
    broken = cli_env(tmp_path, sqlite_url, alembic={"script_location": str(tmp_path)})
    missing = run_invoke("status", "--env", "staging", env=broken)
    assert missing.returncode == 2 and "has no env.py" in missing.stderr


def test_every_flag_has_help_text() -> None:
    from safe_migrations.commands import ns

    for name, task in ns.tasks.items():
        # invoke 3 pops each help text as it reads it: read a copy, as another test may too
        for argument in copy.deepcopy(task).get_arguments():
            assert argument.help, f"invoke {name} --{argument.names[0]} has no help"


def test_unreachable_database_is_a_failed_health_check_exit_3(tmp_path: Path) -> None:
    env = cli_env(tmp_path, "postgresql://app:s3cret@127.0.0.1:1/app")
    result = run_invoke("migrate", "--env", "staging", "--yes", env=env)
    assert result.returncode == 3, result.stderr
    assert "connection refused" in result.stderr and "s3cret" not in result.stderr
    report = json.loads(next((tmp_path / "var" / "reports").glob("*.json")).read_text())
    assert report["success"] is False and "could not be re-read" in report["error"]


def test_blocked_run_without_terminal_never_reads_stdin(tmp_path: Path) -> None:
    """stdin stays open and silent: reading it would hang until the timeout."""
    import os
    import subprocess
    import sys

    env = cli_env(tmp_path, "postgresql://app:pw@127.0.0.1:1/app")
    for args in (["migrate", "--env", "staging", "--yes"], ["migrate", "--env", "staging"]):
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "invoke"), *args],
            cwd=Path(__file__).parent.parent,
            env=os.environ | env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert process.wait(timeout=30) == 3
        finally:
            process.kill()
            process.communicate()


def test_debug_switch_shows_the_traceback_with_the_same_exit_code(tmp_path: Path) -> None:
    env = cli_env(tmp_path, "postgresql://u:pw@127.0.0.1:1/db")
    plain = run_invoke("status", "--env", "staging", env=env)
    debug = run_invoke("status", "--env", "staging", env=env | {"SAFE_MIGRATIONS_DEBUG": "1"})
    assert plain.returncode == debug.returncode == 3
    assert "Traceback" not in plain.stderr and "Traceback" in debug.stderr
    assert "UnreachableError" in debug.stderr and "pw@" not in debug.stderr


def test_both_entry_points_import_the_application_from_the_project_root(tmp_path: Path) -> None:
    """An env.py importing the application's package: `invoke` put the project root on
    sys.path, `safe-migrations` did not (ModuleNotFoundError)."""
    import shutil
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    project = tmp_path / "service"
    shutil.copytree(root / "migrations", project / "migrations")
    shutil.copytree(root / "environments", project / "environments")
    ini = (root / "alembic.ini").read_text()  # without Alembic's own prepend_sys_path
    (project / "alembic.ini").write_text(
        "\n".join(line for line in ini.splitlines() if not line.startswith("prepend_sys_path"))
    )
    (project / "myapp").mkdir()
    (project / "myapp" / "__init__.py").write_text("IMPORTED = True\n")
    env_py = project / "migrations" / "env.py"
    text = env_py.read_text().replace(
        "from alembic import context\n",
        "from alembic import context\n\nimport myapp  # noqa: F401 - the application's package\n",
        1,
    )
    assert "import myapp" in text
    env_py.write_text(text)
    (project / "tasks.py").write_text("from safe_migrations.commands import ns\n")
    bin_dir = Path(sys.executable).parent
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "PYTHON"))}
    for program in ("safe-migrations", "invoke"):
        done = subprocess.run(
            [str(bin_dir / program), "migrate"],
            cwd=project,
            env=clean,
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, (program, done.stdout, done.stderr)
        (project / "var" / "local.db").unlink()
