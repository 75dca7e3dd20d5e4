"""`safe-migrations init` in a project made by `alembic init`: the project's own env.py
is adapted, and every guarantee then holds there (issue 14, in part)."""

from __future__ import annotations

import os
import shlex
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import ROOT, fresh_database, read_in_open_transaction, table_names
from projects import alembic_project, run, with_secrets


@pytest.fixture
def other_database(pg_admin_url: str) -> Iterator[str]:
    with fresh_database(pg_admin_url) as url:
        yield url


@pytest.fixture
def bin_dir(installed: Path) -> Path:
    """The commands of a fresh venv where this package was installed from its wheel."""
    return installed / "bin"


TEMPLATES = ["generic", "async", "pyproject"]


@pytest.mark.parametrize("template", TEMPLATES)
def test_init_adapts_an_alembic_init_project_and_migrates_the_environments_database(
    template: str, pg_url: str, other_database: str, tmp_path: Path, bin_dir: Path
) -> None:
    project, base = alembic_project(tmp_path, bin_dir, template, other_database)
    stock_env_py = (project / "migrations" / "env.py").read_text()

    adopted = run(project, str(bin_dir / "safe-migrations"), "init", env=base)
    assert adopted.returncode == 0, adopted.stdout + adopted.stderr
    assert '+    connection = config.attributes.get("connection")' in adopted.stdout  # a diff
    for written in ("tasks.py", "environments/staging.yml", ".github/workflows/db-migrate.yml"):
        assert (project / written).is_file(), written
    staging = project / "environments" / "staging.yml"
    staging.write_text(staging.read_text() + "# tuned by the team\n")
    again = run(project, str(bin_dir / "safe-migrations"), "init", env=base)
    assert again.returncode == 0 and "kept environments/staging.yml" in again.stdout
    assert staging.read_text().endswith("# tuned by the team\n")  # never overwritten

    secrets = with_secrets(base, pg_url)
    migrated = run(
        project, str(bin_dir / "invoke"), "migrate", "--env", "staging", "--yes", env=secrets
    )
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    assert table_names(pg_url) == {"alembic_version", "items"}
    assert table_names(other_database) == set()  # the database alembic.ini names: untouched
    assert list((project / "var" / "reports" / "staging").glob("staging-upgrade-*.json"))
    assert list((project / "var" / "backups" / "staging").glob("*.manifest.json"))  # required
    status = run(
        project, str(bin_dir / "safe-migrations"), "status", "--env", "staging", env=secrets
    )
    assert "current:     a1" in status.stdout, status.stderr

    (project / "migrations" / "env.py").write_text(stock_env_py)
    refused = run(
        project,
        str(bin_dir / "invoke"),
        "downgrade",
        "--env",
        "staging",
        "--revision",
        "base",
        "--yes",
        env=secrets,
    )
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "env.py" in refused.stderr and "Traceback" not in refused.stderr
    assert table_names(pg_url) == {"alembic_version", "items"}
    assert table_names(other_database) == set()  # its own engine ran nothing there


def test_init_refuses_multidb_and_reports_an_unknown_env_py(tmp_path: Path, bin_dir: Path) -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "MIGRATE_"))}
    multi = tmp_path / "multi"
    multi.mkdir()
    run(multi, str(bin_dir / "alembic"), "init", "-t", "multidb", "migrations", env=base)
    refused = run(multi, str(bin_dir / "safe-migrations"), "init", env=base)
    assert refused.returncode == 2 and "multidb" in refused.stderr
    custom = tmp_path / "custom"
    custom.mkdir()
    run(custom, str(bin_dir / "alembic"), "init", "migrations", env=base)
    (custom / "migrations" / "env.py").write_text("from alembic import context\n")
    unknown = run(custom, str(bin_dir / "safe-migrations"), "init", env=base)
    assert unknown.returncode == 1 and "matches none of the templates" in unknown.stdout
    assert (custom / "migrations" / "env.py").read_text() == "from alembic import context\n"


SECOND = '''"""add items.n"""
import sqlalchemy as sa
from alembic import op

revision = "a2"
down_revision = "a1"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("items", sa.Column("n", sa.Integer))


def downgrade():
    op.drop_column("items", "n")
'''

MODELS = """import sqlalchemy as sa

metadata = sa.MetaData()
sa.Table("items", metadata, sa.Column("id", sa.Integer, primary_key=True), {extra})
"""


@pytest.mark.parametrize("template", TEMPLATES)
def test_adopted_project_checks_its_own_models_rolls_back_and_obeys_the_lock_timeout(
    template: str, pg_url: str, other_database: str, tmp_path: Path, bin_dir: Path
) -> None:
    project, base = alembic_project(tmp_path, bin_dir, template, other_database)
    (project / "migrations" / "versions" / "a2_add_n.py").write_text(SECOND)
    models = project / "app_models.py"  # the team's models, in a module of their own
    models.write_text(MODELS.format(extra='sa.Column("n", sa.Integer)'))
    env_py = project / "migrations" / "env.py"
    env_py.write_text(
        env_py.read_text().replace(
            "target_metadata = None",
            "from app_models import metadata\n\ntarget_metadata = metadata",
        )
    )
    assert run(project, str(bin_dir / "safe-migrations"), "init", env=base).returncode == 0
    staging = project / "environments" / "staging.yml"
    staging.write_text(
        staging.read_text()
        .replace("lock_timeout: 0.2", "lock_timeout: 0.5")
        .replace("lock_budget: 120", "lock_budget: 1.5")
    )
    secrets = with_secrets(base, pg_url)
    invoke = str(bin_dir / "invoke")
    first = run(
        project, invoke, "migrate", "--env", "staging", "--revision", "a1", "--yes", env=secrets
    )
    assert first.returncode == 0, first.stdout + first.stderr

    release, _outcome = read_in_open_transaction(pg_url, "items")  # an application reads
    try:
        blocked = run(
            project,
            invoke,
            "migrate",
            "--env",
            "staging",
            "--yes",
            "--skip-health-checks",
            env=secrets,
        )
    finally:
        release.set()
    assert blocked.returncode == 1, blocked.stdout + blocked.stderr
    assert "lock_timeout=0.5s" in blocked.stderr

    second = run(project, invoke, "migrate", "--env", "staging", "--yes", env=secrets)
    assert second.returncode == 0, second.stdout + second.stderr
    clean = run(project, invoke, "check", "--env", "staging", env=secrets)
    assert clean.returncode == 0 and "models match the database" in clean.stdout, clean.stdout
    models.write_text(
        MODELS.format(extra='sa.Column("n", sa.Integer), sa.Column("label", sa.Text)')
    )
    drift = run(project, invoke, "check", "--env", "staging", env=secrets)
    assert drift.returncode == 1 and "label" in drift.stdout, drift.stdout
    linted = run(project, invoke, "lint", "--env", "staging", "--all", env=secrets)
    assert linted.returncode == 0, linted.stdout + linted.stderr  # squawk's defaults: packaged
    assert "2 revision(s) checked" in linted.stdout

    undone = run(project, invoke, "rollback", "--env", "staging", "--yes", env=secrets)
    assert undone.returncode == 0, undone.stdout + undone.stderr
    assert run(project, invoke, "status", "--env", "staging", env=secrets).stdout.count("a1") >= 1
    down = run(
        project, invoke, "downgrade", "--env", "staging", "--revision", "base", "--yes", env=secrets
    )
    assert down.returncode == 0, down.stdout + down.stderr
    assert table_names(pg_url) == {"alembic_version"}
    assert table_names(other_database) == set()


THEIR_TASKS = """from invoke import Collection, task


@task
def hello(c):
    print("hello from the team's own tasks")


ns = Collection(hello)
"""


def test_a_project_with_its_own_tasks_gets_the_migrations_under_a_namespace(
    tmp_path: Path, bin_dir: Path
) -> None:
    project, base = alembic_project(tmp_path, bin_dir, "generic", "sqlite:///unused.db")
    (project / "tasks.py").write_text(THEIR_TASKS)
    (project / "requirements.txt").write_text("requests\n")
    adopted = run(project, str(bin_dir / "safe-migrations"), "init", env=base)
    assert adopted.returncode == 0, adopted.stdout + adopted.stderr
    assert (project / "tasks.py").read_text() == THEIR_TASKS  # theirs, untouched
    lines = adopted.stdout.split("add the migration tasks under a namespace:\n", 1)[1]
    workflow = (project / ".github" / "workflows" / "db-migrate.yml").read_text()
    assert "pip install -r requirements.txt safe-alembic-migrations" in workflow

    (project / "tasks.py").write_text(THEIR_TASKS + "\n" + lines)  # as the note says
    env = base | {"PATH": f"{bin_dir}:{base.get('PATH', '')}"}
    listed = run(project, str(bin_dir / "invoke"), "--list", env=env)
    assert "hello" in listed.stdout and "db.migrate" in listed.stdout, listed.stdout
    migrated = run(project, str(bin_dir / "invoke"), "db.migrate", "--yes", env=env)
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    assert (project / "var" / "local.db").is_file()  # the local environment's SQLite file
    assert not (project / "unused.db").exists()  # not the one alembic.ini names
    assert "hello from the team" in run(project, str(bin_dir / "invoke"), "hello", env=env).stdout


def readme_adopt_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("### Adopt it in your project", 1)[1].split("\n### ", 1)[0]
    block = section.split("```bash\n", 1)[1].split("\n```", 1)[0]
    return [line.split("#", 1)[0].strip() for line in block.splitlines()]


def test_readme_adopt_commands_install_this_package_and_init_works_as_written(
    tmp_path: Path, bin_dir: Path
) -> None:
    install, init = readme_adopt_commands()
    name = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["name"]
    assert install == f"pip install {name}"  # the wheel of that name is what `installed` holds
    project, base = alembic_project(tmp_path, bin_dir, "generic", "sqlite:///unused.db")
    env = base | {"PATH": f"{bin_dir}:{base.get('PATH', '')}"}
    adopted = subprocess.run(
        shlex.split(init), cwd=project, env=env, capture_output=True, text=True, check=False
    )
    assert adopted.returncode == 0, adopted.stdout + adopted.stderr
    assert (project / "tasks.py").is_file() and (project / "environments" / "local.yml").is_file()


def _plain_project(tmp_path: Path, bin_dir: Path, name: str) -> tuple[Path, dict[str, str]]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "MIGRATE_"))}
    project = tmp_path / name
    project.mkdir()
    made = run(project, str(bin_dir / "alembic"), "init", "migrations", env=base)
    assert made.returncode == 0, made.stderr
    return project, base


def test_init_says_in_one_sentence_what_is_wrong_with_env_py(tmp_path: Path, bin_dir: Path) -> None:
    broken, base = _plain_project(tmp_path, bin_dir, "broken")
    env_py = broken / "migrations" / "env.py"
    env_py.write_text(env_py.read_text() + "\ndef oops(:\n")
    refused = run(broken, str(bin_dir / "safe-migrations"), "init", env=base)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "is not valid Python (line" in refused.stderr and "Traceback" not in refused.stderr
    assert not (broken / "tasks.py").exists()

    offline, _ = _plain_project(tmp_path, bin_dir, "offline")
    env_py = offline / "migrations" / "env.py"
    text = env_py.read_text().replace("def run_migrations_online", "def run_online")
    text = text.replace("    run_migrations_online()", "    run_online()")
    env_py.write_text(text)
    noted = run(offline, str(bin_dir / "safe-migrations"), "init", env=base)
    assert noted.returncode == 1 and "Traceback" not in noted.stderr
    assert "has no run_migrations_online() function" in noted.stdout
    assert env_py.read_text() == text


@pytest.mark.parametrize("link", ["environments", "tasks.py", "env.py", "forced"])
def test_init_never_writes_through_a_symlink_or_outside_the_project(
    tmp_path: Path, bin_dir: Path, link: str
) -> None:
    project, base = _plain_project(tmp_path, bin_dir, "service")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    victim = outside / "victim.py"
    victim.write_text("precious\n")
    argv = [str(bin_dir / "safe-migrations"), "init"]
    if link == "environments":
        (project / "environments").symlink_to(outside, target_is_directory=True)
    elif link == "tasks.py":
        (project / "tasks.py").symlink_to(outside / "planted.py")  # dangling
    elif link == "env.py":
        env_py = project / "migrations" / "env.py"
        victim.write_text(env_py.read_text())
        env_py.unlink()
        env_py.symlink_to(victim)
    else:
        (project / "tasks.py").symlink_to(victim)
        (project / "environments").mkdir()
        (project / "environments" / "local.yml").symlink_to(victim)
        argv.append("--force")
    before = victim.read_text()
    refused = run(project, *argv, env=base)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "symbolic link" in refused.stderr and "Traceback" not in refused.stderr
    assert victim.read_text() == before
    assert sorted(p.name for p in outside.iterdir()) == ["victim.py"]


ARGUMENTS = """
def include_object(obj, name, type_, reflected, compare_to):
    return name != "legacy"


def process_revision_directives(context, revision, directives):
    pass


"""


@pytest.mark.parametrize("template", ["generic", "pyproject", "async"])
def test_init_keeps_every_argument_env_py_passes_to_configure(
    template: str, tmp_path: Path
) -> None:
    """The adapted env.py's configure() gets the project's own arguments, checked by
    running it with a connection handed in; one that cannot run that early is named."""
    from alembic import command
    from alembic.config import Config
    from alembic.runtime.environment import EnvironmentContext
    from alembic.script import ScriptDirectory
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    from safe_migrations.project.adopt import adapted_env_py

    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    ini = tmp_path / "alembic.ini"
    config = Config(str(ini), toml_file=str(tmp_path / "pyproject.toml"))
    command.init(config, str(tmp_path / "migrations"), template=template)
    env_py = tmp_path / "migrations" / "env.py"
    text = env_py.read_text().replace(
        "def run_migrations_online", ARGUMENTS + "def run_migrations_online", 1
    )
    indent = "\n            "
    original = f"context.configure({indent}connection=connection, target_metadata=target_metadata"
    if template == "async":  # do_run_migrations(connection) configures: the block calls it
        original = "context.configure(connection=connection, target_metadata=target_metadata"
    assert original in text
    opened = "    with connectable.connect() as connection:"
    text = text.replace(opened, '    table_name = "versions"\n' + opened, 1)
    arguments = [
        "connection=connection",
        "target_metadata=target_metadata",
        "include_object=include_object",
        "render_as_batch=True",
        "compare_type=False",
        'user_module_prefix="myapp.types."',
        "process_revision_directives=process_revision_directives",
        "version_table=table_name",
    ]
    if template == "async":
        arguments.remove("version_table=table_name")  # sync only: a later-defined name
    text = text.replace(original, "context.configure(" + indent + ("," + indent).join(arguments))
    adapted = adapted_env_py(text, env_py)
    assert adapted is not None
    said = "# not carried over (it uses a name defined later in this function): "
    assert (said + "version_table=table_name" in adapted) is (template != "async")
    env_py.write_text(adapted)
    seen: dict[str, object] = {}
    engine = create_engine(f"sqlite:///{tmp_path / 'x.db'}", poolclass=NullPool)
    with engine.connect() as connection:
        if (tmp_path / "alembic.ini").is_file():
            cfg = Config(str(ini), toml_file=str(tmp_path / "pyproject.toml"))
        else:
            cfg = Config(toml_file=str(tmp_path / "pyproject.toml"))
        cfg.attributes["connection"] = connection
        script = ScriptDirectory.from_config(cfg)
        probe = EnvironmentContext(cfg, script, fn=lambda _rev, _ctx: [])

        class Configured(Exception):
            pass

        def configure(**options: object) -> None:
            seen.update(options)
            raise Configured  # what it was given is all this test reads

        probe.configure = configure  # type: ignore[method-assign,assignment]
        with probe, pytest.raises(Configured):
            script.run_env()
    engine.dispose()
    assert seen["connection"] is not None and seen["render_as_batch"] is True
    assert seen["compare_type"] is False and seen["user_module_prefix"] == "myapp.types."
    assert callable(seen["include_object"]) and callable(seen["process_revision_directives"])
    assert "version_table" not in seen


def test_the_workflows_python_is_the_projects_own(tmp_path: Path) -> None:
    from safe_migrations.project.workflow_file import python_version

    assert python_version(tmp_path) == ("3.11", None)
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\nname = "x"\nrequires-python = ">=3.8,!=3.11.*"\n')
    assert python_version(tmp_path) == ("3.12", None)
    pyproject.write_text('[project]\nname = "x"\nrequires-python = "<3.10"\n')
    version, note = python_version(tmp_path)
    assert version == "3.11" and note is not None and "admits none of Python 3.11" in note
    (tmp_path / ".python-version").write_text("# pinned by pyenv\n3.13.1\n")
    assert python_version(tmp_path) == ("3.13.1", None)
