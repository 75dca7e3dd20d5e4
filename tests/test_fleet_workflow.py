"""The "Fleet Migration" workflow: linted offline, checked against the tasks, and its
jobs played as GitHub would run them: plan, a matrix job per shard, the merged summary
with one issue, and the rollback of failed members outside production."""

from __future__ import annotations

import copy
import json
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from ghactions import condition, play_job
from test_fleet import HEAD, Fleet, _conflict, revision_of
from test_workflow import BIN, actionlint, checkout, fake_gh, runner_env  # noqa: F401 - fixtures

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / ".github" / "workflows" / "db-migrate-fleet.yml"


def load() -> dict[str, Any]:
    data = yaml.safe_load(WORKFLOW.read_text())
    data["on"] = data.pop(True, data.get("on"))
    return data


def test_actionlint_and_the_schema_accept_the_fleet_workflow(actionlint: list[str]) -> None:  # noqa: F811
    linted = subprocess.run([*actionlint, str(WORKFLOW)], capture_output=True, text=True)
    assert linted.returncode == 0 and json.loads(linted.stdout) == [], linted.stdout
    checked = subprocess.run(
        [
            str(BIN / "check-jsonschema"),
            "--builtin-schema",
            "vendor.github-workflows",
            str(WORKFLOW),
        ],
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_step_calls_existing_tasks_and_only_invoke_sees_secrets() -> None:
    from safe_migrations.commands import ns

    workflow = load()
    calls = [
        shlex.split(line.replace("$KEEP_GOING_FLAG", "--keep-going"))
        for job in workflow["jobs"].values()
        for step in job["steps"]
        for line in step.get("run", "").splitlines()
        if line.strip().startswith("invoke ")
    ]
    assert {c[1] for c in calls} == {
        "fleet-matrix",
        "migrate",
        "dashboard",
        "fleet-report",
        "rollback",
    }
    for call in calls:
        flags = {
            f"--{name.strip('_').replace('_', '-')}"
            for arg in copy.deepcopy(ns[call[1]]).get_arguments()  # invoke 3 pops its help
            for name in arg.names
            if len(name) > 1
        }
        assert {w for w in call[2:] if w.startswith("--")} <= flags, call
    assert workflow["permissions"] == {}
    for name, job in workflow["jobs"].items():
        writes = {k for k, v in job.get("permissions", {}).items() if v == "write"}
        assert writes == ({"issues"} if name == "summary" else set()), name
        for step in job["steps"]:
            if any("secrets.DB_" in str(v) for v in (step.get("env") or {}).values()):
                assert step["run"].startswith("invoke "), step["name"]
    assert "environment" not in workflow["jobs"]["summary"]  # no database secret there
    migrate = workflow["jobs"]["migrate"]["strategy"]
    assert migrate["fail-fast"] is False and "max_parallel" in migrate["max-parallel"]


def test_rollback_jobs_run_after_a_failure_outside_production_only() -> None:
    rollback_if = load()["jobs"]["rollback"]["if"]
    for environment, status, expected in (
        ("staging", "failure", True),
        ("production", "failure", False),
        ("staging", "success", False),
    ):
        context = {"inputs": {"environment": environment}, "github": {"event": {}}}
        assert condition(rollback_if, context, status) is expected


@pytest.fixture
def fleet(pg_admin_url: str, tmp_path: Path) -> Any:
    made = Fleet(pg_admin_url, tmp_path / "fleet", count=6)
    yield made
    made.drop()


def test_the_fleet_path_plays_plan_shards_summary_issue_and_rollback(
    fleet: Fleet,
    tmp_path: Path,
    checkout: Path,  # noqa: F811
    fake_gh: Path,  # noqa: F811
) -> None:
    workflow = load()
    environments = checkout / "environments"
    data = yaml.safe_load((fleet.folder / "environments" / "fleet.yml").read_text())
    data["backup"]["folder"] = "var/backups/tenants"  # inside each job's own checkout
    data["reports"]["folder"] = "var/reports/tenants"
    (environments / "tenants.yml").write_text(yaml.safe_dump(data))
    secrets = {k: v for k, v in fleet.variables.items() if k.startswith("DB_")}
    context: dict[str, Any] = {
        "inputs": {
            "environment": "tenants",
            "target_revision": "head",
            "shards": "2",
            "max_parallel": "2",
            "keep_going": True,
        },
        "github": {"event": {}, "token": "fake-token", "run_id": "4242"},
        "secrets": secrets,
        "vars": {},
    }
    env = runner_env(tmp_path, fake_gh)
    plan = play_job(workflow, "plan", context, checkout, env, skip_run=("pip install",))
    assert plan.status == "success", plan.logs
    entries = json.loads(plan.outputs["matrix"])["include"]
    assert [e["shard"] for e in entries] == ["1/2", "2/2"]
    assert fleet.invoke("migrate", "--yes", "--revision", "0003").returncode == 0
    failing = fleet.names[3]
    _conflict(fleet, failing)
    shards: dict[int, Path] = {}
    results = []
    for entry in entries:  # each matrix job has a checkout of its own
        own = tmp_path / f"shard-{entry['index']}"
        shutil.copytree(checkout, own)
        shards[entry["index"]] = own
        run = play_job(
            workflow, "migrate", {**context, "matrix": entry}, own, env, skip_run=("pip install",)
        )
        results.append(run.status)
        assert {u["name"] for u in run.uploads} >= {
            f"fleet-reports-tenants-4242-shard-{entry['index']}"
        }
    assert sorted(results) == ["failure", "success"]
    assert revision_of(fleet.url(failing)) == "0006"
    assert all(revision_of(fleet.url(n)) == HEAD for n in fleet.names if n != failing)

    downloaded = checkout / "var" / "shards"  # what download-artifact leaves, one folder each
    for index, own in shards.items():
        shutil.copytree(own / "var" / "reports", downloaded / f"shard-{index}")
    summary_context = {**context, "needs": {"migrate": {"result": "failure"}}}
    summary = play_job(
        workflow,
        "summary",
        {**summary_context, "secrets": {}},
        checkout,
        env,
        skip_run=("pip install",),
    )
    assert summary.status == "success", summary.logs
    merged = (checkout / "var" / "fleet-summary.md").read_text()
    assert all(f"`{n}`" in merged for n in fleet.names)
    assert summary.outcomes["Open an issue"] == "success"
    body = (fake_gh / "body.md").read_text()
    assert "Fleet migration failed: tenants" in body and f"`{failing}`" in body
    assert "6 member(s) in 2 shard(s)" in body and fleet.variables["DB_PASSWORD"] not in body

    assert condition(workflow["jobs"]["rollback"]["if"], summary_context, "failure")
    for entry in entries:
        own = shards[entry["index"]]
        run = play_job(
            workflow,
            "rollback",
            {**summary_context, "matrix": entry},
            own,
            env,
            skip_run=("pip install",),
        )
        assert run.status == "success", run.logs
    assert revision_of(fleet.url(failing)) == "0003"  # only the failed member, undone
    assert all(revision_of(fleet.url(n)) == HEAD for n in fleet.names if n != failing)


def test_a_shard_that_wrote_no_summary_fails_the_summary_job_and_opens_the_issue(
    tmp_path: Path,
    checkout: Path,  # noqa: F811
    fake_gh: Path,  # noqa: F811
) -> None:
    """Every shard reported success, but shard 2 of 2 left no summary (it died before
    writing one): the merged summary fails and the issue says which shard is missing."""
    from helpers import write_environment
    from test_fleet_merge import shard_summary

    write_environment(checkout / "environments", "tenants", checkout / "var")
    shard_summary(checkout / "var" / "shards" / "shard-1", "1/2", ["tenant_a", "tenant_b"])
    context: dict[str, Any] = {
        "inputs": {"environment": "tenants", "target_revision": "head", "shards": "2"},
        "github": {"event": {}, "token": "fake-token", "run_id": "4242"},
        "secrets": {},
        "vars": {},
        "needs": {"migrate": {"result": "success"}},
    }
    summary = play_job(
        load(), "summary", context, checkout, runner_env(tmp_path, fake_gh), skip_run=("pip",)
    )
    assert summary.status == "failure"
    assert summary.outcomes["Merged summary"] == "failure"
    assert summary.outcomes["Open an issue"] == "success"
    body = (fake_gh / "body.md").read_text()
    assert "shard 2/2 wrote no summary" in body and "`tenant_a`" not in body.split("|")[0]
