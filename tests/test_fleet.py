"""Fleets (issue 16): one history on many databases found by ``discover``, several at a
time, each member a single-database run in its own process, one summary."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import run_invoke
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from safe_migrations.operations.fleet import Member, matrix, select, shard_of, worst

HEAD = "0007"


def revision_of(url: str) -> str | None:
    engine = create_engine(url, poolclass=NullPool)
    with engine.connect() as connection:
        found = connection.execute(
            text("SELECT to_regclass('alembic_version') IS NOT NULL")
        ).scalar()
        value = (
            connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
            if found
            else None
        )
    engine.dispose()
    return value


class Fleet:
    """Twelve member databases named <prefix>_01.._12 on the test server, and a fleet file
    that finds them with ``discover``."""

    def __init__(self, admin_url: str, folder: Path, count: int = 12) -> None:
        self.admin_url = admin_url
        self.folder = folder
        self.prefix = f"fl{uuid.uuid4().hex[:8]}"
        self.names = [f"{self.prefix}_{i:02d}" for i in range(1, count + 1)]
        engine = create_engine(admin_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            for name in self.names:
                connection.execute(text(f'CREATE DATABASE "{name}"'))
        engine.dispose()
        self.write()

    def write(self, **sections: Any) -> None:
        data: dict[str, Any] = {
            "database": {"connect_timeout": 5},
            "fleet": {
                "jobs": 4,
                "discover": {
                    "server": "postgresql+psycopg2://${DB_USER}:${DB_PASSWORD}@${DB_HOST}:"
                    "${DB_PORT}/postgres",
                    "like": f"{self.prefix}\\_%",
                },
            },
            "backup": {"folder": str(self.folder / "var" / "backups")},
            "reports": {"folder": str(self.folder / "var" / "reports")},
            "migration": {"lock_timeout": 0.2, "lock_budget": 10, "lock_wait": 30},
            "policy": {"confirm": "never", "auto_rollback": True},
        }
        for section, values in sections.items():
            data.setdefault(section, {}).update(values)
        (self.folder / "environments").mkdir(parents=True, exist_ok=True)
        (self.folder / "environments" / "fleet.yml").write_text(yaml.safe_dump(data))

    @property
    def variables(self) -> dict[str, str]:
        url = make_url(self.admin_url)
        return {
            "MIGRATE_ENVIRONMENTS_DIR": str(self.folder / "environments"),
            "DB_USER": url.username or "",
            "DB_PASSWORD": url.password or "",
            "DB_HOST": url.host or "",
            "DB_PORT": str(url.port or 5432),
        }

    def url(self, name: str) -> str:
        return make_url(self.admin_url).set(database=name).render_as_string(hide_password=False)

    def invoke(self, *args: str, timeout: float = 300) -> Any:
        return run_invoke(*args, "--env", "fleet", env=self.variables, timeout=timeout)

    def summaries(self) -> list[dict[str, Any]]:
        folder = self.folder / "var" / "reports" / "fleets"
        found = sorted(folder.glob("[!.]*.json"), key=lambda p: p.stat().st_mtime)
        return [json.loads(p.read_text()) for p in found]

    def drop(self) -> None:
        engine = create_engine(self.admin_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            for name in self.names:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()


@pytest.fixture
def fleet(pg_admin_url: str, tmp_path: Path) -> Iterator[Fleet]:
    made = Fleet(pg_admin_url, tmp_path)
    yield made
    made.drop()


def _conflict(fleet: Fleet, name: str) -> None:
    """A table 0007 wants to create: that member fails at its last revision."""
    engine = create_engine(fleet.url(name), poolclass=NullPool)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE products (id integer)"))
    engine.dispose()


def test_twelve_discovered_members_reach_head_four_at_a_time(fleet: Fleet) -> None:
    result = fleet.invoke("migrate", "--yes", "--jobs", "4")
    assert result.returncode == 0, result.stderr + result.stdout
    assert all(revision_of(fleet.url(n)) == HEAD for n in fleet.names)
    (summary,) = fleet.summaries()
    assert summary["jobs"] == 4 and summary["exit_code"] == 0
    assert [m["member"] for m in summary["members"]] == fleet.names
    assert {(m["outcome"], m["pre_revision"], m["post_revision"]) for m in summary["members"]} == {
        ("succeeded", "base", HEAD)
    }
    for member in summary["members"]:  # each its own report, carrying its name
        report = json.loads(Path(member["report"]).read_text())
        assert report["environment"] == f"fleet.{member['member']}"
        assert Path(member["report"]).name.startswith(f"fleet.{member['member']}-upgrade-")
    markdown = next((fleet.folder / "var" / "reports" / "fleets").glob("*.md")).read_text()
    assert all(f"`{name}`" in markdown for name in fleet.names)


def test_keep_going_migrates_the_others_and_the_failed_member_stays_at_its_last_good_revision(
    fleet: Fleet,
) -> None:
    failing = fleet.names[6]
    assert fleet.invoke("migrate", "--yes", "--revision", "0003").returncode == 0
    _conflict(fleet, failing)
    result = fleet.invoke("migrate", "--yes", "--jobs", "4", "--keep-going")
    assert result.returncode == 1, result.stderr
    assert revision_of(fleet.url(failing)) == "0006"
    assert all(revision_of(fleet.url(n)) == HEAD for n in fleet.names if n != failing)
    summary = fleet.summaries()[-1]
    outcomes = {m["member"]: m["outcome"] for m in summary["members"]}
    assert len(outcomes) == 12 and outcomes.pop(failing) == "failed"
    assert set(outcomes.values()) == {"succeeded"}
    failed = next(m for m in summary["members"] if m["member"] == failing)
    assert failed["post_revision"] == "0006" and "0007" in failed["message"]

    undone = fleet.invoke("rollback", "--yes")  # only the member that failed with exit 1
    assert undone.returncode == 0, undone.stderr + undone.stdout
    assert revision_of(fleet.url(failing)) == "0003"  # back at its pre-revision
    assert all(revision_of(fleet.url(n)) == HEAD for n in fleet.names if n != failing)
    rolled = fleet.summaries()[-1]
    assert [m["member"] for m in rolled["members"]] == [failing]


def test_without_keep_going_no_member_starts_after_the_first_failure(fleet: Fleet) -> None:
    failing = fleet.names[2]
    _conflict(fleet, failing)
    result = fleet.invoke("migrate", "--yes", "--jobs", "1")
    assert result.returncode == 1
    (summary,) = fleet.summaries()
    outcomes = [m["outcome"] for m in summary["members"]]
    assert outcomes == ["succeeded", "succeeded", "failed"] + ["not started"] * 9
    assert all(revision_of(fleet.url(n)) is None for n in fleet.names[3:])
    assert "not started" in result.stdout


def test_two_fleet_runs_at_once_never_migrate_a_member_twice(fleet: Fleet) -> None:
    import subprocess
    import sys

    from helpers import ROOT

    invoke = str(Path(sys.executable).parent / "invoke")
    command = [invoke, "migrate", "--env", "fleet", "--yes", "--jobs", "3", "--keep-going"]
    import os

    environment = {**os.environ, **fleet.variables}
    runs = [
        subprocess.Popen(command, cwd=ROOT, env=environment, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    codes = [run.wait(timeout=300) for run in runs]
    for run in runs:
        assert run.stdout is not None
        run.stdout.close()
    assert set(codes) <= {0, 4}, codes
    assert all(revision_of(fleet.url(n)) == HEAD for n in fleet.names)
    reports = fleet.folder / "var" / "reports"
    applied: dict[str, int] = {}
    for path in reports.glob("fleet.*-upgrade-*.json"):
        data = json.loads(path.read_text())
        applied[data["environment"]] = applied.get(data["environment"], 0) + len(data["applied"])
    assert applied == {f"fleet.{n}": 7 for n in fleet.names}  # every revision once, in all


def test_three_shards_cover_every_member_exactly_once(fleet: Fleet) -> None:
    matrix_run = fleet.invoke("fleet-matrix", "--shards", "3")
    assert matrix_run.returncode == 0, matrix_run.stderr
    entries = json.loads(matrix_run.stdout)["include"]
    assert [e["shard"] for e in entries] == ["1/3", "2/3", "3/3"]
    assert sum(e["members"] for e in entries) == 12
    seen: list[str] = []
    for entry in entries:
        result = fleet.invoke("migrate", "--yes", "--shard", entry["shard"])
        assert result.returncode == 0, result.stderr
        summary = fleet.summaries()[-1]
        assert summary["shard"] == entry["shard"]
        assert len(summary["members"]) == entry["members"]
        seen += [m["member"] for m in summary["members"]]
    assert sorted(seen) == fleet.names  # each exactly once
    assert all(revision_of(fleet.url(n)) == HEAD for n in fleet.names)


def test_only_and_exclude_pick_members_and_status_is_a_table_per_member(fleet: Fleet) -> None:
    first, second = fleet.names[0], fleet.names[1]
    result = fleet.invoke("migrate", "--yes", "--only", f"{fleet.prefix}_0*", "--exclude", second)
    assert result.returncode == 0, result.stderr
    done = [n for n in fleet.names if revision_of(fleet.url(n)) == HEAD]
    assert done == [n for n in fleet.names[:9] if n != second]
    status = fleet.invoke("status", "--json")
    assert status.returncode == 0, status.stderr
    rows = {m["member"]: m for m in json.loads(status.stdout)["members"]}
    assert rows[first]["pre_revision"] == HEAD and rows[second]["pre_revision"] == "base"
    assert rows[second]["details"]["status"]["pending"]
    unknown = fleet.invoke("migrate", "--yes", "--only", "nobody")
    assert unknown.returncode == 2 and "matches no member" in unknown.stderr
    one = fleet.invoke("restore", "--backup", "latest")
    assert one.returncode == 2 and "--only NAME" in one.stderr


def test_exit_code_is_the_worst_members_and_shards_are_stable() -> None:
    assert worst([0, 3, 4, 1]) == 1 and worst([0, 3, 2, 1]) == 2 and worst([3, 4]) == 4
    assert worst([0, 3]) == 3 and worst([]) == 0
    names = [f"tenant_{i}" for i in range(200)]
    members = [Member(n, "") for n in names]
    shards = [select(members, shard=f"{i}/5") for i in range(1, 6)]
    assert sorted(m.name for s in shards for m in s) == sorted(names)
    grown = [*members, Member("tenant_new", "")]
    assert all(
        shard_of(n, 5) == next(i for i in range(1, 6) if Member(n, "") in shards[i - 1])
        for n in names
    )
    assert sum(e["members"] for e in matrix(grown, 5)["include"]) == 201


def test_sigterm_stops_the_fleet_interrupts_running_members_and_writes_the_summary(
    fleet: Fleet,
) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    from helpers import ROOT, ScratchProject

    scratch = ScratchProject(fleet.folder / "slow")
    scratch.add('op.create_table("t", sa.Column("id", sa.Integer, primary_key=True))')
    scratch.add('op.execute("SELECT pg_sleep(60)")')
    fleet.write(alembic={"script_location": str(scratch.folder)})
    invoke = str(Path(sys.executable).parent / "invoke")
    process = subprocess.Popen(
        [invoke, "migrate", "--env", "fleet", "--yes", "--jobs", "2"],
        cwd=ROOT,
        env={**os.environ, **fleet.variables},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(
        revision_of(fleet.url(n)) == "r001" for n in fleet.names[:2]
    ):
        time.sleep(0.2)
    time.sleep(1)  # both running members are in their sleeping revision
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 3, err
    (summary,) = fleet.summaries()
    assert summary["interrupted"] is True
    outcomes = [m["outcome"] for m in summary["members"]]
    assert outcomes[:2] == ["blocked", "blocked"] and set(outcomes[2:]) == {"not started"}
    assert [revision_of(fleet.url(n)) for n in fleet.names[:2]] == ["r001", "r001"]
    assert "interrupted" in summary["members"][0]["message"]


def test_backups_carry_the_members_name_and_restore_only_takes_that_members_own(
    fleet: Fleet,
) -> None:
    first, second = fleet.names[0], fleet.names[1]
    pair = f"{first},{second}"
    assert fleet.invoke("migrate", "--yes", "--only", pair).returncode == 0
    dry = fleet.invoke("migrate", "--dry-run", "--only", fleet.names[2])
    assert dry.returncode == 0 and revision_of(fleet.url(fleet.names[2])) is None
    taken = fleet.invoke("backup", "--only", pair)
    assert taken.returncode == 0, taken.stderr
    folder = fleet.folder / "var" / "backups"
    for name in (first, second):
        (dump,) = folder.glob(f"fleet.{name}-*.dump")
        manifest = json.loads(Path(f"{dump}.manifest.json").read_text())
        assert manifest["environment"] == f"fleet.{name}"
        assert manifest["target"]["database"] == name
    engine = create_engine(fleet.url(first), poolclass=NullPool)
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE order_items"))
    engine.dispose()
    restored = fleet.invoke("restore", "--only", first, "--backup", "latest", "--yes")
    assert restored.returncode == 0, restored.stderr
    engine = create_engine(fleet.url(first), poolclass=NullPool)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT to_regclass('order_items')")).scalar()
    engine.dispose()
    other = next(folder.glob(f"fleet.{second}-*.dump"))
    refused = fleet.invoke("restore", "--only", first, "--backup", str(other), "--yes")
    assert refused.returncode == 2 and "not one of" in refused.stderr


def test_one_database_tasks_take_the_member_named_with_only(fleet: Fleet) -> None:
    name = fleet.names[0]
    assert fleet.invoke("migrate", "--yes", "--only", name, "--revision", "0003").returncode == 0
    rehearsed = fleet.invoke("rehearse", "--only", name, "--json")
    assert rehearsed.returncode == 0, rehearsed.stderr
    report = json.loads(rehearsed.stdout)
    assert report["environment"] == f"fleet.{name}" and report["target_revision"] == HEAD
    assert revision_of(fleet.url(name)) == "0003"  # rehearsed on a copy only
    assert fleet.invoke("backup", "--only", name).returncode == 0
    listed = fleet.invoke("backups", "--only", name, "--json")
    assert listed.returncode == 0 and len(json.loads(listed.stdout)) == 2  # rehearsal's too
    refused = fleet.invoke("lint")
    assert refused.returncode == 2 and "name one member with --only NAME" in refused.stderr


def test_health_on_a_fleet_saves_every_members_checks(fleet: Fleet) -> None:
    saved = fleet.folder / "health" / "fleet.json"
    result = fleet.invoke("health", "--json", "--output", str(saved))
    assert result.returncode == 0, result.stderr
    data = json.loads(saved.read_text())
    assert [m["member"] for m in data["members"]] == fleet.names
    assert all(m["outcome"] == "succeeded" and m["details"]["checks"] for m in data["members"])
    assert oct(saved.stat().st_mode & 0o777) == "0o600"


def test_progress_counts_on_a_terminal_and_stays_quiet_without_one() -> None:
    import io

    from safe_migrations.operations.fleet import Progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal, pipe = Terminal(), io.StringIO()
    for stream in (terminal, pipe):
        progress = Progress(12, stream)
        progress.show(5, 4, 1, 3)
        progress.end()
    assert "5/12 done, 4 running, 1 failed, 3 left" in terminal.getvalue()
    assert pipe.getvalue() == ""


def test_the_fleet_is_confirmed_once_for_the_chosen_members_on_a_terminal(fleet: Fleet) -> None:
    import os
    import subprocess
    import sys

    from helpers import ROOT

    fleet.write(policy={"confirm": "prompt"})
    chosen = fleet.names[4]
    primary, secondary = os.openpty()  # stdin a terminal: the one question is asked there
    process = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "invoke"),
            "migrate",
            "--env",
            "fleet",
            "--only",
            chosen,
        ],
        cwd=ROOT,
        env={**os.environ, **fleet.variables},
        stdin=secondary,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    os.close(secondary)
    os.write(primary, b"no\n")
    out, err = process.communicate(timeout=60)
    os.close(primary)
    assert process.returncode == 3, err
    assert f"members:     {chosen}" in out and "1 member(s) chosen" in out
    assert fleet.names[0] not in out
    assert all(revision_of(fleet.url(n)) is None for n in fleet.names)
    assert fleet.summaries() == []  # refused before any member started


def _running_backends(fleet: Fleet, names: list[str]) -> int:
    engine = create_engine(fleet.admin_url, poolclass=NullPool)
    with engine.connect() as connection:
        count = connection.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = ANY(:names) "
                "AND query LIKE '%pg_sleep%' AND state = 'active'"
            ),
            {"names": names},
        ).scalar()
    engine.dispose()
    return int(count or 0)


def test_a_sigkilled_fleet_takes_its_members_with_it_and_the_next_run_reports_them(
    fleet: Fleet,
) -> None:
    """SIGKILL runs no handler of the runner: its members get SIGTERM from the kernel
    (PR_SET_PDEATHSIG), roll their revision back and stop; the next run names them."""
    import signal
    import time

    from helpers import ScratchProject, start_invoke

    scratch = ScratchProject(fleet.folder / "slow")
    scratch.add('op.create_table("t", sa.Column("id", sa.Integer, primary_key=True))')
    scratch.add('op.execute("SELECT pg_sleep(60)")')
    fleet.write(alembic={"script_location": str(scratch.folder)})
    process = start_invoke("migrate", "--env", "fleet", "--yes", "--jobs", "2", env=fleet.variables)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and _running_backends(fleet, fleet.names[:2]) < 2:
        time.sleep(0.2)
    assert _running_backends(fleet, fleet.names[:2]) == 2
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _running_backends(fleet, fleet.names[:2]) > 0:
        time.sleep(0.2)
    assert _running_backends(fleet, fleet.names[:2]) == 0  # the members stopped with it
    assert [revision_of(fleet.url(n)) for n in fleet.names[:2]] == ["r001", "r001"]
    assert fleet.summaries() == []  # the runner wrote none

    slow = scratch.folder / "versions" / "r002.py"
    slow.write_text(slow.read_text().replace("pg_sleep(60)", "pg_sleep(0)"))
    again = fleet.invoke("migrate", "--yes", "--jobs", "4")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "was killed before writing its summary" in again.stdout
    assert fleet.names[0] in again.stdout
    (summary,) = fleet.summaries()
    assert summary["orphaned"][0]["members"] == fleet.names
    assert all(revision_of(fleet.url(n)) == "r002" for n in fleet.names)


def test_a_fleet_choice_of_no_member_is_refused(fleet: Fleet) -> None:
    result = fleet.invoke("migrate", "--yes", "--exclude", "*")
    assert result.returncode == 2 and "No member matched" in result.stderr


def test_discovery_needs_a_pattern_and_never_takes_the_servers_own_databases(
    fleet: Fleet, pg_admin_url: str
) -> None:
    data = yaml.safe_load((fleet.folder / "environments" / "fleet.yml").read_text())
    del data["fleet"]["discover"]["like"]
    (fleet.folder / "environments" / "fleet.yml").write_text(yaml.safe_dump(data))
    refused = fleet.invoke("status")
    assert refused.returncode == 2 and "fleet.discover.like" in refused.stderr
    data["fleet"]["discover"]["like"] = "%"
    (fleet.folder / "environments" / "fleet.yml").write_text(yaml.safe_dump(data))
    engine = create_engine(pg_admin_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        names = set(connection.execute(text("SELECT datname FROM pg_database")).scalars())
    engine.dispose()
    from safe_migrations.core.config import load_environment
    from safe_migrations.operations.fleet import members

    env = load_environment(
        "fleet", environ=fleet.variables, directory=fleet.folder / "environments"
    )
    found = {m.name for m in members(env, fleet.variables)}
    assert "postgres" in names and "postgres" not in found
    assert set(fleet.names) <= found
    assert not any(n.startswith(("stairway_", "rehearsal_")) for n in found)
