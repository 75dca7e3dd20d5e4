"""Reports, audit trail, step summary and issue bodies, written by real runs."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import jsonschema
import pytest
from helpers import QUIET, ScratchProject, write_environment
from pgcluster import PASSWORD

from safe_migrations.core.config import Environment, load_environment
from safe_migrations.core.errors import BlockedError
from safe_migrations.operations.standalone import backup, restore, rollback
from safe_migrations.pipeline.migrate import RunOptions, migrate
from safe_migrations.pipeline.report import find_report, list_reports, show
from safe_migrations.pipeline.upgrade import MigrationError
from safe_migrations.project.alembic_api import DEFAULT_PROJECT

SCHEMA = json.loads(
    (
        Path(__file__).parent.parent
        / "tasks"
        / "safe_migrations"
        / "schemas"
        / "report-v2.schema.json"
    ).read_text()
)


def failing_project(scratch: ScratchProject, error: str) -> ScratchProject:
    scratch.add(
        'op.create_table("a", sa.Column("id", sa.Integer, primary_key=True))',
        'op.drop_table("a")',
        message="create a",
    )
    scratch.add(f"raise RuntimeError({error!r})", message="<script>alert(1)</script> boom")
    return scratch


def test_failed_run_report_says_where_it_stopped(
    pg_url: str, scratch: ScratchProject, make_env: Callable[..., Environment]
) -> None:
    env = make_env(pg_url)
    project = failing_project(scratch, "disk on fire").project()
    with pytest.raises(MigrationError):
        migrate(env, RunOptions(yes=True), project, QUIET)
    data = find_report(env, None)
    jsonschema.validate(data, SCHEMA)
    assert data["success"] is False and data["exit_code"] == 1
    assert data["failed_revision"] == "r002" and data["post_revision"] == "r001"
    assert "disk on fire" in data["error"]
    markdown = show(data, "md", [])
    assert "Revision `r002` failed. The database was left at `r001`." in markdown
    issue = show(data, "issue", [])
    assert "**left at** | `r001`" in issue and "invoke rollback --env staging" in issue


@pytest.mark.parametrize("quoting", ["every character", "only what a URL needs"])
def test_no_password_in_any_file_the_run_wrote(
    quoting: str,
    pg_url: str,
    scratch: ScratchProject,
    make_env: Callable[..., Environment],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    if quoting == "only what a URL needs":  # as a user types it, and SQLAlchemy 1.4 renders it
        head, _, host = pg_url.rpartition("@")
        pg_url = f"{head.rsplit(':', 1)[0]}:{PASSWORD.replace('@', '%40')}@{host}"
        assert "w'rd" in pg_url
    env = make_env(pg_url, backup={"required": True})
    # A revision whose error carries the URL, as many libraries' errors do.
    project = failing_project(scratch, f"could not reach {pg_url} with {PASSWORD}").project()
    with pytest.raises(MigrationError):
        migrate(env, RunOptions(yes=True), project, QUIET)
    written = [p for p in (tmp_path / "var").rglob("*") if p.is_file()]
    written = [p for p in written if "backups" not in p.parts or p.name.endswith(".json")]
    texts = [p.read_text() for p in written] + [summary.read_text()]
    data = find_report(env, None)
    texts += [show(data, fmt, [env.password]) for fmt in ("md", "json", "html", "issue")]
    assert len(written) >= 4
    for text in texts:
        assert PASSWORD not in text
        assert "w%27rd" not in text and "w'rd" not in text
    assert "***" in data["error"]


def test_html_is_autoescaped(
    sqlite_url: str, scratch: ScratchProject, make_env: Callable[..., Environment]
) -> None:
    env = make_env(sqlite_url)
    with pytest.raises(MigrationError):
        migrate(env, RunOptions(yes=True), failing_project(scratch, "x").project(), QUIET)
    data = find_report(env, None)
    data["applied"].append(
        {
            "revision": "r002",
            "message": "<script>alert(1)</script> boom",
            "direction": "upgrade",
            "duration": 0.1,
            "retries": 0,
        }
    )
    html = show(data, "html", [])
    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; boom" in html


def test_every_operation_writes_a_report_that_validates(
    sqlite_url: str, make_env: Callable[..., Environment], tmp_path: Path
) -> None:
    env = make_env(sqlite_url, policy={"auto_rollback": True})
    migrate(env, RunOptions(yes=True, revision="0003"), DEFAULT_PROJECT, QUIET)
    migrate(env, RunOptions(yes=True, backup=True), DEFAULT_PROJECT, QUIET)
    migrate(env, RunOptions(dry_run=True), DEFAULT_PROJECT, QUIET)
    rollback(env, from_backup=False, yes=True, interactive=False, console=QUIET)
    backup(env, QUIET)
    restore(env, "latest", yes=True, interactive=False, console=QUIET)
    migrate(
        env, RunOptions(yes=True, revision="base", direction="downgrade"), DEFAULT_PROJECT, QUIET
    )
    reports = list_reports(env)
    operations = sorted(json.loads(p.read_text())["operation"] for p in reports)
    assert operations == sorted(
        ["upgrade", "upgrade", "upgrade", "rollback", "backup", "restore", "downgrade"]
    )
    for path in reports:
        jsonschema.validate(json.loads(path.read_text()), SCHEMA)
        assert path.with_suffix(".md").exists()
    audit = (env.report_dir / "audit.jsonl").read_text().splitlines()
    assert len(audit) == 7


def _one_run(directory: str, url: str) -> int:
    env = load_environment("staging", environ={"DATABASE_URL": url}, directory=Path(directory))
    migrate(env, RunOptions(yes=True), DEFAULT_PROJECT, QUIET)
    return os.getpid()


def test_concurrent_runs_append_whole_audit_lines(sqlite_url: str, tmp_path: Path) -> None:
    directory = tmp_path / "environments"
    write_environment(directory, "staging", tmp_path / "var", migration={"lock_wait": 120})
    with ProcessPoolExecutor(10) as pool:
        list(pool.map(_one_run, [str(directory)] * 50, [sqlite_url] * 50))
    lines = (tmp_path / "var" / "reports" / "audit.jsonl").read_text().splitlines()
    assert len(lines) == 50
    records = [json.loads(line) for line in lines]
    assert all(r["success"] for r in records)
    assert sum(1 for r in records if r["pre_revision"] == "base") == 1


def test_step_summary_gets_the_markdown(
    sqlite_url: str,
    make_env: Callable[..., Environment],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    summary = tmp_path / "summary.md"
    summary.write_text("previous step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    env = make_env(sqlite_url)
    migrate(env, RunOptions(yes=True), DEFAULT_PROJECT, QUIET)
    text = summary.read_text()
    assert text.startswith("previous step\n") and "upgrade on staging" in text
    assert "| `0007` | create products and order\\_items |" in text


def test_issue_body_links_to_the_run(
    sqlite_url: str,
    scratch: ScratchProject,
    make_env: Callable[..., Environment],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = make_env(sqlite_url)
    with pytest.raises(MigrationError):
        migrate(env, RunOptions(yes=True), failing_project(scratch, "x").project(), QUIET)
    monkeypatch.setenv("GITHUB_SERVER_URL", "https://github.example")
    monkeypatch.setenv("GITHUB_REPOSITORY", "team/service")
    monkeypatch.setenv("GITHUB_RUN_ID", "42")
    body = show(find_report(env, None, failed_only=True), "issue", [])
    assert "Run: https://github.example/team/service/actions/runs/42" in body


def test_old_reports_are_pruned_but_the_audit_log_stays(
    sqlite_url: str, make_env: Callable[..., Environment]
) -> None:
    env = make_env(sqlite_url, reports={"retention_days": 1})
    migrate(env, RunOptions(yes=True), DEFAULT_PROJECT, QUIET)
    old = list_reports(env)[0]
    two_days_ago = time.time() - 2 * 86400
    os.utime(old, (two_days_ago, two_days_ago))
    migrate(env, RunOptions(yes=True), DEFAULT_PROJECT, QUIET)
    assert not old.exists() and not old.with_suffix(".md").exists()
    assert len(list_reports(env)) == 1
    assert len((env.report_dir / "audit.jsonl").read_text().splitlines()) == 2


HOSTILE = "@octocat see this\n```\n## Injected heading\n<img src=x onerror=alert(1)>\x1b[2J\x1b[31m"


def _rendered(markdown: str) -> tuple[list[str], list[str], str]:
    """(heading texts, HTML blocks, plain text outside code) as GitHub-flavoured Markdown."""
    from markdown_it import MarkdownIt

    tokens = MarkdownIt("commonmark").enable("table").parse(markdown)
    headings = [tokens[i + 1].content for i, t in enumerate(tokens) if t.type == "heading_open"]
    html = [t.content for t in tokens if t.type == "html_block"]
    text = []
    for token in tokens:
        for child in token.children or []:
            if child.type == "html_inline":
                html.append(child.content)
            if child.type == "text":
                text.append(child.content)
    return headings, html, " ".join(text)


def test_revision_messages_cannot_ping_inject_or_break_out_of_markdown(
    sqlite_url: str, scratch: ScratchProject, make_env: Callable[..., Environment]
) -> None:
    env = make_env(sqlite_url)
    scratch.add("pass", message=HOSTILE.replace("\x1b", "\\x1b"))
    scratch.add(f"raise RuntimeError({HOSTILE!r})", message=HOSTILE.replace("\x1b", "\\x1b"))
    with pytest.raises(MigrationError):
        migrate(env, RunOptions(yes=True), scratch.project(), QUIET)
    data = find_report(env, None)
    for fmt in ("md", "issue"):
        markdown = show(data, fmt, [])
        headings, html, text = _rendered(markdown)
        assert not any("Injected" in h for h in headings), headings
        assert html == []
        assert "@octocat" not in text  # a mention would ping; code blocks never do
        assert "\x1b" not in markdown


def test_terminal_never_gets_escape_sequences_from_a_message(
    sqlite_url: str, scratch: ScratchProject, make_env: Callable[..., Environment]
) -> None:
    from safe_migrations.pipeline.confirm import confirm, summary
    from safe_migrations.pipeline.upgrade import plan

    env = make_env(sqlite_url)
    scratch.add("pass", message="innocent\x1b[2K\x1b[1A\rrevision 0000: nothing to see")
    shown: list[str] = []
    pending = plan(scratch.project(), None, "r001", "upgrade")
    text = summary(env, "upgrade", None, "r001", pending)
    with pytest.raises(BlockedError):
        confirm(env, text, ask=lambda prompt: shown.append(prompt) or "no", say=shown.append)
    assert "\x1b" not in "".join(shown) and "\r" not in "".join(shown)
    assert "innocent" in "".join(shown)


def test_every_field_a_report_file_carries_is_escaped_in_the_issue_and_the_shell_quoted(
    sqlite_url: str, scratch: ScratchProject, make_env: Callable[..., Environment]
) -> None:
    """A forged report file (environment, operation, started_at, step names, exit code):
    nothing renders as HTML, a heading or a mention, and the recovery commands hold the
    environment as one quoted shell word."""
    import shlex

    env = make_env(sqlite_url)
    scratch.add("pass")
    scratch.add("raise RuntimeError('boom')")
    with pytest.raises(MigrationError):
        migrate(env, RunOptions(yes=True), scratch.project(), QUIET)
    data = find_report(env, None)
    forged = "x; rm -rf ~ #\n## Injected <img src=x> @octocat"
    data |= {"environment": forged, "operation": HOSTILE, "started_at": HOSTILE}
    data["exit_code"] = HOSTILE
    data["post_revision"], data["pre_revision"] = "r001", None
    data["steps"] = [dict(step, name=HOSTILE, ok=False) for step in data["steps"]]
    markdown = show(data, "issue", [])
    headings, html, text = _rendered(markdown)
    assert headings[1:] == ["What failed", "Error", "How to recover"], headings
    assert html == [] and "@octocat" not in text
    data["pre_revision"] = "base-ish"
    block = show(data, "issue", []).split("```bash\n", 1)[1].split("```", 1)[0]
    for line in block.splitlines():
        if line.startswith("invoke "):
            words = shlex.split(line)
            assert words[words.index("--env") + 1] == forged.replace("\n", " ")


def test_a_record_as_data_equals_asdict_and_is_a_copy() -> None:
    """Records become data without asdict's deep copy of every value: the same dict,
    tuples kept, and changing it changes nothing in the record."""
    from dataclasses import asdict

    from safe_migrations.pipeline.report import RunRecord
    from safe_migrations.pipeline.upgrade import AppliedRevision

    applied = AppliedRevision(
        "0002", "add orders", "upgrade", 1.234567, 1, True,
        ({"operation": "create_index", "as": ["CONCURRENTLY"]},),
        ({"kind": "CREATE INDEX", "offset": 0.1, "seconds": 1.1},),
    )  # fmt: skip
    expected = asdict(applied) | {"duration": 1.2346}
    assert applied.to_dict() == expected
    assert isinstance(applied.to_dict()["statements"], tuple)
    record = RunRecord("staging", "migrate", "postgresql://db/app")
    record.applied = [applied.to_dict()]
    record.backup = {"proof": {"fingerprints": {"public.users": [3, "12"]}}}
    data = record.to_dict()
    assert data == asdict(record)
    data["applied"][0]["rewritten"][0]["as"].append("changed")
    data["backup"]["proof"]["fingerprints"]["public.users"][0] = 4
    assert record.applied[0]["rewritten"][0]["as"] == ["CONCURRENTLY"]
    assert record.backup["proof"]["fingerprints"]["public.users"] == [3, "12"]
