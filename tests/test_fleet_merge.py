"""fleet-report's merge of the shards' summaries: never a success with a shard missing,
duplicated or damaged, never a traceback, and every field from a file escaped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import cli_env, run_invoke

from safe_migrations.operations.fleet import FleetSummary, MemberResult


def shard_summary(folder: Path, shard: str, members: list[str], exit_code: int = 0) -> Path:
    summary = FleetSummary("tenants", "upgrade", 2, True, shard, exit_code=exit_code)
    summary.finished_at = summary.started_at
    summary.members = [MemberResult(m, "succeeded", 0, 0.5, "0003", "0007") for m in members]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"tenants-fleet-upgrade-shard{shard.replace('/', 'of')}-x.json"
    path.write_text(json.dumps(summary.to_dict()))
    return path


@pytest.fixture
def environ(tmp_path: Path, sqlite_url: str) -> dict[str, str]:
    return cli_env(tmp_path, sqlite_url, name="tenants")


def fleet_report(environ: dict[str, str], folder: Path, *flags: str):  # noqa: ANN201
    return run_invoke(
        "fleet-report", "--env", "tenants", "--input", str(folder), *flags, env=environ
    )


def test_all_shards_once_merge_to_their_worst_exit_code(
    environ: dict[str, str], tmp_path: Path
) -> None:
    shards = tmp_path / "shards"
    shard_summary(shards / "shard-1", "1/2", ["a", "b"])
    shard_summary(shards / "shard-2", "2/2", ["c"], exit_code=0)
    merged = fleet_report(environ, shards, "--json")
    assert merged.returncode == 0, merged.stderr
    data = json.loads(merged.stdout)
    assert data["exit_code"] == 0 and data["problems"] == []
    assert [m["member"] for m in data["members"]] == ["a", "b", "c"]


def test_a_shard_that_wrote_no_summary_fails_the_merge_and_the_issue_says_so(
    environ: dict[str, str], tmp_path: Path
) -> None:
    shards = tmp_path / "shards"
    shard_summary(shards / "shard-1", "1/3", ["a"])
    shard_summary(shards / "shard-3", "3/3", ["c"])  # shard 2 died with exit 3 first
    merged = fleet_report(environ, shards, "--json")
    assert merged.returncode == 1, merged.stdout + merged.stderr
    assert "shard 2/3 wrote no summary" in merged.stderr and "Traceback" not in merged.stderr
    assert json.loads(merged.stdout)["exit_code"] == 1
    body = fleet_report(environ, shards, "--issue-body")
    assert body.returncode == 0, body.stderr
    assert "exit code 1" in body.stdout and "shard 2/3 wrote no summary" in body.stdout


def test_a_shard_with_two_summaries_fails_the_merge(
    environ: dict[str, str], tmp_path: Path
) -> None:
    shards = tmp_path / "shards"
    shard_summary(shards / "shard-1", "1/2", ["a"])
    shard_summary(shards / "shard-2", "2/2", ["b"])
    shard_summary(shards / "again", "2/2", ["b"])
    merged = fleet_report(environ, shards)
    assert merged.returncode == 1 and "shard 2/2 has 2 summaries" in merged.stderr


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"exit_code": "abc"}, "exit_code"),
        ({"members": "x"}, "members"),
        ({"started_at": None}, "started_at"),
        ({"members": [{"member": "a"}]}, "members.0"),
    ],
)
def test_a_damaged_summary_is_named_in_one_sentence_never_a_traceback(
    environ: dict[str, str], tmp_path: Path, change: dict, where: str
) -> None:
    shards = tmp_path / "shards"
    shard_summary(shards / "shard-1", "1/2", ["a"])
    damaged = shard_summary(shards / "shard-2", "2/2", ["b"])
    data = json.loads(damaged.read_text()) | change
    if change.get("started_at", "") is None:
        del data["started_at"]
    damaged.write_text(json.dumps(data))
    for flags in ((), ("--issue-body",), ("--json",)):
        merged = fleet_report(environ, shards, *flags)
        assert "Traceback" not in merged.stderr, merged.stderr
    merged = fleet_report(environ, shards)
    assert merged.returncode == 1
    assert f"{damaged.name} is damaged (" in merged.stderr and where in merged.stderr


def test_fields_from_the_files_are_escaped_in_the_markdown_and_the_issue(
    environ: dict[str, str], tmp_path: Path
) -> None:
    shards = tmp_path / "shards"
    path = shard_summary(shards / "shard-1", "1/1", ["a"])
    data = json.loads(path.read_text())
    hostile = "<img src=x onerror=alert(1)> @org/team **bold** | cell"
    data["members"][0]["outcome"] = hostile
    data["counts"] = {hostile: 1}
    data["started_at"] = "2026-12-02T00:00:00+00:00 <b>@here</b>"
    path.write_text(json.dumps(data))
    for flags in ((), ("--issue-body",)):
        out = fleet_report(environ, shards, *flags).stdout
        assert "<img" not in out and "<b>" not in out and "@org" not in out and "@here" not in out
        assert "**bold**" not in out and "&lt;img" in out
