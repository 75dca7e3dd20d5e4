"""``invoke dashboard``: where every environment and fleet member stands, in one page.

Everything comes from what runs already leave behind (reports, the audit log, backup
manifests, rehearsal reports), plus, unless offline, each database's current revision
read live with the connect timeout, several at once so a fleet of 200 takes seconds.
A database that cannot be read is shown as such, with the sentence that says why; a
run never stops at one member. The page itself is rendered by dashboard_page.py.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from safe_migrations.core.config import Environment
from safe_migrations.core.errors import ToolError

RUNS_SHOWN = 20  # per environment, newest first: the timeline's length
READERS = 8  # live revision reads at once


@dataclass
class View:
    """One database on the page: an environment, or one member of a fleet."""

    name: str
    group: str  # "environments", or the fleet whose member it is
    engine: str
    current: str | None = None
    state: str = "live"  # live, last run (offline), unreachable, not read
    note: str = ""  # why the revision is not live
    heads: list[str] = field(default_factory=list)
    pending: int | None = None
    last_run: dict[str, Any] | None = None
    runs: list[dict[str, Any]] = field(default_factory=list)
    backup: dict[str, Any] | None = None
    backup_note: str = ""
    rehearsals: list[dict[str, Any]] = field(default_factory=list)
    reports: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> report

    @property
    def behind(self) -> bool:
        return bool(self.pending)


def databases(names: list[str], directory: Path | None, offline: bool) -> list[Environment]:
    """The environments named (all files when none), each fleet as its members."""
    from safe_migrations.core.config import ENVIRONMENTS_DIR, known_environments, load_environment

    folder = directory or ENVIRONMENTS_DIR
    found: list[Environment] = []
    for name in names or known_environments(folder):
        try:
            env = load_environment(name, directory=directory, need_database=not offline)
        except ToolError:  # a secret this machine lacks: read the files, not the database
            env = load_environment(name, directory=directory, need_database=False)
        found += _members(env, offline) if env.is_fleet else [env]
    return found


def _members(env: Environment, offline: bool) -> list[Environment]:
    """A fleet's members: as the fleet finds them, or (offline, or when it cannot: a
    secret missing, the server down) those the file names and those with reports."""
    import re

    from safe_migrations.operations.fleet import Member, member_environment, members

    if not offline:
        try:
            return [member_environment(env, m) for m in members(env)]
        except ToolError:
            pass
    assert env.settings.fleet is not None
    names = set(env.settings.fleet.databases)
    pattern = re.compile(re.escape(env.name) + r"\.([A-Za-z0-9_-]+)-[a-z_]+-\d{8}T")
    if env.report_dir.is_dir():
        for path in env.report_dir.glob(f"{env.name}.*.json"):
            match = pattern.match(path.name)
            if match:
                names.add(match.group(1))
    return [member_environment(env, Member(name, "")) for name in sorted(names)]


def gather(envs: list[Environment], offline: bool) -> list[View]:
    """A view of each database; live revisions read in parallel unless ``offline``."""
    views = [_from_files(env) for env in envs]
    if not offline:
        with ThreadPoolExecutor(max_workers=READERS) as pool:
            views = list(pool.map(_read_live, envs, views))
    return [_with_pending(env, view) for env, view in zip(envs, views, strict=True)]


def _from_files(env: Environment) -> View:
    from safe_migrations.pipeline.report import readable_reports

    group = f"fleet {env.path.stem}" if env.member else "environments"
    view = View(env.name, group, env.dialect or "unknown")
    reports = list(readable_reports(env))
    view.reports = {path.name: data for path, data in reports[:RUNS_SHOWN]}
    if reports:
        last = reports[0][1]
        view.last_run = last
        view.current = last.get("post_revision") or last.get("pre_revision")
        view.state, view.note = "last run", f"as the last run ({last.get('finished_at')}) left it"
    else:
        view.state, view.note = "not read", "no run on record"
    view.runs = _audit_lines(env)
    view.backup, view.backup_note = _newest_backup(env, local_only=True)
    view.rehearsals = _rehearsals(env)
    return view


def _read_live(env: Environment, view: View) -> View:
    """The database's revision now; the files' view, saying why, when it cannot be read."""
    from safe_migrations.pipeline.status import read_current

    if not env.url or "${" in env.url:
        return replace(view, state="not read", note="its database URL needs a secret not set here")
    try:
        current = read_current(env)
    except ToolError as exc:
        return replace(view, state="unreachable", note=exc.message)
    except Exception as exc:  # noqa: BLE001 - one database never stops the page
        from safe_migrations.core.errors import first_line
        from safe_migrations.core.masking import redact

        note = redact(f"reading its revision failed: {first_line(exc)}", [env.password])
        return replace(view, state="unreachable", note=note)
    backup, backup_note = _newest_backup(env, local_only=False)
    return replace(
        view, current=current, state="live", note="", backup=backup, backup_note=backup_note
    )


def _with_pending(env: Environment, view: View) -> View:
    from safe_migrations.project.alembic_api import heads, project_for, upgrade_path

    try:
        scripts = project_for(env).scripts()
        found = heads(scripts)
        known = view.state == "live" or view.current is not None  # None live: at base
        pending = (
            len(upgrade_path(scripts, view.current, found[0]))
            if len(found) == 1 and known
            else None
        )
    except Exception as exc:  # noqa: BLE001 - a broken project is shown, not raised
        from safe_migrations.core.errors import first_line

        return replace(view, note=(view.note + "; " if view.note else "") + first_line(exc))
    return replace(view, heads=found, pending=pending)


def _audit_lines(env: Environment) -> list[dict[str, Any]]:
    """This database's runs from the audit log, newest first."""
    path = env.report_dir / "audit.jsonl"
    if not path.is_file():
        return []
    lines = []
    for raw in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if isinstance(line, dict) and line.get("environment") == env.name:
            lines.append(line)
    return sorted(lines, key=lambda line: str(line.get("time")), reverse=True)[:RUNS_SHOWN]


def _newest_backup(env: Environment, local_only: bool) -> tuple[dict[str, Any] | None, str]:
    """The newest of this database's own backups, and a note when the store was not read."""
    from safe_migrations.stores import store_for

    store = store_for(env)
    try:
        found = store.copies() if local_only else store.manifests()
    except Exception as exc:  # noqa: BLE001 - the store's failure is shown, not raised
        from safe_migrations.core.errors import first_line

        return None, f"the backup store could not be read: {first_line(exc)}"
    note = (
        "the store was not read: this machine's copies of its manifests"
        if store.remote and local_only
        else ""
    )
    return (found[0] if found else None), note


def _rehearsals(env: Environment) -> list[dict[str, Any]]:
    """This database's rehearsal reports, newest first (the page shows the newest)."""
    folder = env.report_dir / "rehearsals"
    if not folder.is_dir():
        return []
    found = []
    for path in folder.glob(f"{env.name}-rehearse-*.json"):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("environment") == env.name:
            found.append(data)
    return sorted(found, key=lambda d: str(d.get("started_at")), reverse=True)


def age(moment: str | None, now: datetime) -> str:
    """How long ago, in the largest unit that fits: "3 h", "2 d"."""
    if not moment:
        return "never"
    try:
        then = datetime.fromisoformat(moment)
    except ValueError:
        return "unknown"
    if then.tzinfo is None:
        then = then.replace(tzinfo=UTC)
    seconds = max(0.0, (now - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"
