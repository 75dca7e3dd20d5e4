"""`invoke rehearse`: the migration on a copy first, watched, with a verdict per revision.

The copy is a verified backup (a fresh one, or the one named) restored into a temporary
database (the engine's copy, engines/scratch.py). On the copy the pipeline's own upgrade
step runs, with an observer beside it (engines/pgobserver.py), then the validate step; then the
copy is dropped. The environment's database is only read (its revision, and pg_dump's
snapshot) and, once the copy is gone, gets one row of proof (proof.py). Its migration
lock is not taken.

Kept long: the rehearsal's run (copy, observed upgrade, validate, proof) and its verdict
and record are one report's lifecycle; the copy, the observer and the proof are already
apart.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from safe_migrations.core.config import Environment, resolve_url
from safe_migrations.core.errors import ConfigError, ToolError, first_line
from safe_migrations.core.masking import redact, redact_data, url_password
from safe_migrations.core.revisions import resolve_revision
from safe_migrations.core.sampling import SAMPLE_INTERVAL
from safe_migrations.engines import engine_for
from safe_migrations.engines.pgobserver import BLOCKS_ALL, Findings, RevisionObserver, analyse
from safe_migrations.operations import proof
from safe_migrations.operations.restore import find_backup, local_copy, restore_backup
from safe_migrations.pipeline import upgrade, validate
from safe_migrations.pipeline.backup import take_backup
from safe_migrations.pipeline.context import Console
from safe_migrations.pipeline.report import (
    TOOL_VERSION,
    append_audit,
    current_user,
    git_commit,
    reported,
    write_pair,
)
from safe_migrations.pipeline.status import read_current
from safe_migrations.project.alembic_api import Project, heads, project_for

SCHEMA_VERSION = 1


class RehearsalFailed(ToolError):
    """A revision failed on the copy, or broke one of the environment's limits (exit 1)."""


@dataclass
class RehearsalRecord:
    """What a rehearsal learned; written as JSON (rehearsal-v1 schema) and Markdown."""

    environment: str
    url: str
    started_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    finished_at: str | None = None
    duration: float = 0.0
    success: bool = False
    exit_code: int = 1
    engine: str = ""  # the URL's dialect
    pre_revision: str | None = None
    target_revision: str | None = None
    scripts_sha256: str | None = None
    backup: dict[str, Any] | None = None
    copy: dict[str, Any] | None = None
    sample_interval_ms: float = SAMPLE_INTERVAL * 1000
    samples: int = 0
    samples_per_second: float = 0.0
    lock_details: str | None = None  # why there are none, when there are none
    limits: dict[str, Any] = field(default_factory=dict)
    revisions: list[dict[str, Any]] = field(default_factory=list)
    validation: list[dict[str, Any]] = field(default_factory=list)
    verdict: str = ""
    proof: str | None = None
    traffic: dict[str, Any] | None = None  # rehearse --traffic: the clients beside it
    error: str | None = None
    user: str = field(default_factory=current_user)
    host: str = field(default_factory=socket.gethostname)
    commit: str | None = field(default_factory=git_commit)
    tool_version: str = TOOL_VERSION
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def server_for(env: Environment) -> Environment:
    """Where the copy goes: ``rehearsal.server`` when the file names one, else the
    environment's own server (reached through its database URL)."""
    from dataclasses import replace

    template = env.settings.rehearsal.server
    if not template or not engine_for(env.dialect).copies_on_servers:
        return env
    url = resolve_url(template, dict(os.environ), env.path, "rehearsal.server")
    if url.split(":", 1)[0].split("+", 1)[0] != env.dialect:
        raise ConfigError(
            f"{env.path.name}: rehearsal.server must be a {env.dialect} server like the "
            "environment's database."
        )
    return replace(env, url=url)


def verdict(
    found: Findings, limit_ms: int | None, observed: bool = True
) -> tuple[str, str, list[str]]:
    """(status, sentence, limits broken) for one revision: failed, blocks, rewrites, safe;
    ``timed`` when nothing but its duration could be observed (SQLite)."""
    if found.error:
        return "failed", f"failed: {found.error}", []
    if not observed:
        return "timed", f"ran in {found.duration_ms:,} ms; locks not observed", []
    parts, status = [], "safe"
    broken = []
    for hold in found.locks:
        short = hold.held_ms is None or hold.held_ms < SAMPLE_INTERVAL * 1000
        held = "under one sampling interval" if short else f"{hold.held_ms} ms"
        if hold.blocks_reads:
            parts.append(f"blocks reads and writes on {hold.relation} for {held}")
            status = "blocks"
            if limit_ms is not None and (hold.held_ms or 0) > limit_ms:
                broken.append(
                    f"ACCESS EXCLUSIVE on {hold.relation} held {held}, over "
                    f"policy.max_exclusive_lock_ms={limit_ms}"
                )
        elif hold.blocks_writes and not any(
            h.blocks_reads and h.relation == hold.relation for h in found.locks
        ):  # a SHARE beside ACCESS EXCLUSIVE on the same table adds nothing to say
            parts.append(f"blocks writes on {hold.relation} ({hold.mode}) for {held}")
            status = "blocks"
    for rewrite in found.rewrites:
        if rewrite.kind == "table":
            parts.append(f"rewrites {rewrite.relation} ({rewrite.size_bytes / 2**20:.1f} MB)")
            status = "blocks" if status == "blocks" else "rewrites"
    for rows in found.rows_written:
        if rows.changed:
            parts.append(
                f"updates or deletes {rows.changed:,} rows of {rows.relation} in one "
                f"transaction of {found.duration_ms:,} ms: writers to those rows wait until "
                "it commits"
            )
            status = "blocks"
    for index in found.plain_indexes:
        parts.append(
            f"builds {index.index} on {index.table} ({index.table_bytes / 2**20:.1f} MB) "
            "without CONCURRENTLY"
        )
    if broken:
        status = "over limit"
    return status, "; ".join(parts) or "safe", broken


def rehearse(
    env: Environment,
    revision: str = "head",
    from_backup: str | None = None,
    project: Project | None = None,
    console: Console | None = None,
    on_report: Callable[[dict[str, Any]], None] | None = None,
) -> RehearsalRecord:
    """Copy, upgrade the copy under observation, validate it, drop it, judge, report."""
    project = project or project_for(env)
    console = console or Console()
    server = server_for(env)
    secrets = [env.password, url_password(server.url)]
    record = RehearsalRecord(env.name, env.masked_url, engine=env.dialect)
    record.limits = {"max_exclusive_lock_ms": env.settings.policy.max_exclusive_lock_ms}
    started = time.perf_counter()
    try:
        _rehearse(env, server, revision, from_backup, project, console, record)
        record.success, record.exit_code = True, 0
    except ToolError as exc:
        exc.message = redact(exc.message + _copy_left(record), secrets)
        record.error, record.exit_code = exc.message, exc.exit_code
        raise
    except KeyboardInterrupt as exc:
        record.error, record.exit_code = f"interrupted ({exc or 'SIGINT'})", 3
        raise
    except Exception as exc:  # the driver's, say: reported, then re-raised for the exit code
        record.error = redact(f"{type(exc).__name__}: {first_line(exc)}", secrets)
        left = _copy_left(record)
        if left:  # a server lost midway: say where its copy is, in the message users see
            record.exit_code = 1
            raise ToolError(redact(record.error + "." + left, secrets)) from exc
        raise
    finally:
        record.duration = round(time.perf_counter() - started, 4)
        record.finished_at = datetime.now(UTC).isoformat()
        name = report_name(env, record)
        if record.target_revision and record.revisions and record.copy:
            why = proof.record_proof(
                env,
                record.pre_revision or "base",
                record.target_revision,
                record.scripts_sha256 or "",
                record.success,
                name + ".json",
            )
            record.proof = redact(why, secrets) if why else f"recorded in {proof.where(env)}"
            if why:
                console.warn(f"warning: {record.proof}")
        written = write_rehearsal_report(env, record, name, secrets)
        console.say(f"report: {written}")
        if on_report is not None:
            on_report(json.loads(written.read_text(encoding="utf-8")))
    return record


def _rehearse(
    env: Environment,
    server: Environment,
    revision: str,
    from_backup: str | None,
    project: Project,
    console: Console,
    record: RehearsalRecord,
) -> None:
    scripts = project.scripts()
    current = read_current(env)
    target = resolve_revision(scripts, revision, lambda: current)
    record.pre_revision, record.target_revision = reported(current), reported(target)
    path = upgrade.plan(project, current, target, "upgrade")
    record.scripts_sha256 = proof.scripts_digest(project, path)
    if not path:
        record.verdict = f"nothing to rehearse: {env.name} is already at {reported(target)}"
        console.say(record.verdict)
        return
    engine_for(server.dialect).check_can_create(server)
    backup = _backup(env, current, from_backup, console)
    record.backup = {k: backup.get(k) for k in ("path", "remote", "revision", "sha256", "size")}
    record.lock_details = engine_for(env.dialect).rehearsal_limits
    try:
        observer, waits = _on_copy(env, server, project, target, path, backup, console, record)
    finally:
        if record.copy is not None:
            record.copy["dropped"] = _dropped(server, record.copy["name"])
    sampler = observer.sampler
    if sampler is not None:
        record.samples, record.samples_per_second = sampler.ticks, sampler.per_second
        if sampler.error:
            record.lock_details = f"the sampling connection failed: {sampler.error}"
    found = analyse(observer.windows, sampler.samples if sampler else [])
    _judge(env, path, found, record, waits)
    console.say(render_terminal(record))
    failed = next((w for w in observer.windows if w.error), None)
    if failed is not None:
        raise RehearsalFailed(
            f"Rehearsal failed: revision {failed.revision} failed on the copy ({failed.error}); "
            "the copy was dropped and the database was not touched."
        )
    failed_checks = [r for r in record.validation if not r["ok"]]
    if failed_checks:
        raise RehearsalFailed(
            "Rehearsal failed validation on the copy: "
            + "; ".join(f"{r['name']}: {r['message']}" for r in failed_checks)
        )
    broken = [
        f"revision {r['revision']}: {b}" for r in record.revisions for b in r["limits_broken"]
    ]
    if broken:
        raise RehearsalFailed(f"Rehearsal broke the environment's limits: {'; '.join(broken)}.")


def _copy_left(record: RehearsalRecord) -> str:
    """The sentence for a copy that could not be dropped (its server lost midway)."""
    copy = record.copy
    if copy is None or copy.get("dropped") is True:
        return ""
    return (
        f" The copy {copy['name']} on {copy['server']} could not be dropped and may still be "
        "there; its owner lock went with this run, so the next rehearsal drops it (or drop it "
        "by hand)."
    )


def _dropped(server: Environment, name: str) -> bool | None:
    """True once the copy is gone; None when that cannot be told (server unreachable)."""
    from sqlalchemy.exc import DBAPIError

    try:
        return not engine_for(server.dialect).copy_exists(server, name)
    except (ToolError, DBAPIError):
        return None


def _on_copy(
    env: Environment,
    server: Environment,
    project: Project,
    target: str | None,
    path: list[Any],
    backup: dict[str, Any],
    console: Console,
    record: RehearsalRecord,
) -> tuple[RevisionObserver, dict[str, Any]]:
    """Restore into a fresh copy, upgrade it under observation (beside the clients of
    ``--traffic``: their waits per revision), validate it; dropped after."""
    with engine_for(server.dialect).database_copy(env, server) as made:
        record.copy = {"name": made.name, "server": made.server, "dropped": False}
        if made.dropped_stale:
            console.say(
                f"dropped copies left by killed rehearsals: {', '.join(made.dropped_stale)}"
            )
        console.say(f"copy {made.name} on {made.server}: restoring {Path(backup['path']).name}")
        with local_copy(env, backup) as local:
            restore_backup(made.env, local)
        observer = RevisionObserver(made.env)
        failure: upgrade.MigrationError | None = None
        console.say(f"rehearsing {len(path)} revision(s) on the copy")
        load = _traffic(env, made.env, project, path, record)
        waits: dict[str, Any] = {}
        try:
            if load is not None:
                load.start()
            upgrade.run_migrations(made.env, project, target, observer=observer)
        except upgrade.MigrationError as exc:
            failure = exc
            cause = exc.__cause__
            statement = getattr(cause, "statement", None)
            observer.failed(
                exc.revision or "?",
                redact(first_line(cause) if cause else exc.message, [env.password]),
                redact(str(statement)[:2000], [env.password]) if statement else None,
            )
        finally:
            observer.stop()
            if load is not None:
                record.traffic, waits = _waits(load, observer, record)
        if failure is None:
            at_head = [target] == heads(project.scripts())
            results = validate.validate(made.env, project, target, compare_models=at_head)
            record.validation = [r.to_dict() for r in results]
    return observer, waits


def _traffic(
    env: Environment, copy: Environment, project: Project, path: list[Any], record: RehearsalRecord
) -> Any:
    """The synthetic clients for ``rehearse --traffic`` (None without): on the tables the
    pending revisions' offline SQL touches that exist on the copy before they run."""
    from sqlalchemy import text

    from safe_migrations.core.database import connect
    from safe_migrations.operations.traffic import Traffic, touched_tables
    from safe_migrations.project.alembic_api import render_sql

    settings = env.settings.rehearsal
    if not settings.traffic:
        return None
    named: list[str] = []
    for rendered in render_sql(project.config(), project.scripts(), path, copy.dialect):
        named += touched_tables(rendered.sql or "")
    with connect(copy, role="traffic") as connection:
        tables = [
            name
            for name in dict.fromkeys(named)
            if connection.execute(text("SELECT to_regclass(:t)"), {"t": name}).scalar()
        ]
    record.limits["max_app_wait_ms"] = env.settings.policy.max_app_wait_ms
    return Traffic(copy, tables, settings.traffic, long_reader_seconds=settings.long_reader_seconds)


def _waits(
    load: Any, observer: RevisionObserver, record: RehearsalRecord
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Stop the clients: the report's summary of them, and their waits per revision."""
    from safe_migrations.operations.traffic import MAX_CLIENTS, per_revision

    waits = load.stop()
    return {
        "clients": min(load.clients, MAX_CLIENTS),
        "long_reader_seconds": load.long_reader_seconds,
        "tables": load.tables,
        "operations": len(waits),
        "errors": sum(1 for w in waits if w.error),
        "limit_ms": record.limits.get("max_app_wait_ms"),
    }, per_revision(waits, observer.windows)


def _backup(
    env: Environment, current: str | None, spec: str | None, console: Console
) -> dict[str, Any]:
    """The backup to copy from: the one named (any, even another environment's: it only
    reaches the copy), or a fresh verified one of the environment."""
    if spec:
        return find_backup(env, spec, foreign=True)
    console.say(f"taking a fresh backup of {env.name}")
    return take_backup(env, current, console.progress).to_dict()


def _judge(
    env: Environment,
    path: list[Any],
    found: list[Findings],
    record: RehearsalRecord,
    waits: dict[str, Any],
) -> None:
    limit = env.settings.policy.max_exclusive_lock_ms
    messages = {r.revision: r.message for r in path}
    statuses = []
    observed = engine_for(env.dialect).rehearsal_limits is None
    app_limit = env.settings.policy.max_app_wait_ms
    for item in found:
        status, sentence, broken = verdict(item, limit, observed)
        app = waits.get(item.revision)
        if app is not None and app_limit is not None and app["worst_ms"] > app_limit:
            broken = [
                *broken,
                f"the application waited {app['worst_ms']} ms on the copy (p99 "
                f"{app['p99_ms']} ms, {app['operations']} operations), over "
                f"policy.max_app_wait_ms={app_limit}",
            ]
            status = "over limit"
        statuses.append(status)
        data = item.to_dict()
        if waits:
            data["app_waits"] = app
        data.update(
            message=messages.get(item.revision, ""),
            status=status,
            verdict=sentence,
            limits_broken=broken,
            longest_exclusive_ms=_longest(item),
        )
        record.revisions.append(data)
    ran = {r["revision"] for r in record.revisions}
    for revision in path:  # revisions after a failure never ran on the copy
        if revision.revision not in ran:
            data = Findings(revision.revision, 0, (), (), ()).to_dict()
            data.update(
                message=revision.message,
                status="not run",
                verdict="not run: an earlier revision failed",
                limits_broken=[],
                longest_exclusive_ms=None,
            )
            record.revisions.append(data)
    record.verdict = _run_verdict(statuses, record)


def _longest(item: Findings) -> int | None:
    hold = item.longest(BLOCKS_ALL)
    return None if hold is None else hold.held_ms or 0


def _run_verdict(statuses: list[str], record: RehearsalRecord) -> str:
    if "failed" in statuses:
        return "failed: a revision failed on the copy"
    if "over limit" in statuses:
        return "failed: a revision broke the environment's limits"
    if any(not r["ok"] for r in record.validation):
        return "failed: the copy did not validate after the upgrade"
    if "timed" in statuses:
        ran = f"passed: {len(statuses)} revision(s) ran on the copy"
        return f"{ran} (timed only: {record.lock_details})"
    worst = max((r.get("longest_exclusive_ms") or 0 for r in record.revisions), default=0)
    blocking = sum(1 for s in statuses if s == "blocks")
    if blocking:
        longest = (
            f"{worst} ms"
            if worst
            else f"under one sampling interval ({record.sample_interval_ms:g} ms)"
        )
        return (
            f"passed: {len(statuses)} revision(s) ran; {blocking} take locks that block "
            f"traffic, the longest ACCESS EXCLUSIVE hold {longest}"
        )
    return f"passed: {len(statuses)} revision(s) ran without blocking traffic"


def render_terminal(record: RehearsalRecord) -> str:
    lines = [f"rehearsal of {record.pre_revision} -> {record.target_revision}: {record.verdict}"]
    for item in record.revisions:
        lines.append(
            f"  {item['revision']:<14} {item['duration_ms']:>8} ms  {item['status']:<10} "
            f"{item['verdict']}"
        )
        app = item.get("app_waits")
        if app:
            lines.append(
                f"  {'':<14} the application's waits: p50 {app['p50_ms']} ms, p99 "
                f"{app['p99_ms']} ms, worst {app['worst_ms']} ms ({app['operations']} operations)"
            )
    if record.lock_details:
        lines.append(f"  ({record.lock_details})")
    else:
        lines.append(
            f"  (locks sampled every {record.sample_interval_ms:g} ms, "
            f"{record.samples_per_second:g} samples/s; shorter holds may be missed)"
        )
    return "\n".join(lines)


def report_name(env: Environment, record: RehearsalRecord) -> str:
    stamp = datetime.fromisoformat(record.started_at).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{env.name}-rehearse-{stamp}-{os.getpid()}"


def write_rehearsal_report(
    env: Environment, record: RehearsalRecord, name: str, secrets: list[str | None]
) -> Path:
    """JSON and Markdown in the reports folder's ``rehearsals/`` (apart from the run
    reports that rollback reads), and a line in the same audit log."""
    from safe_migrations.core.files import private_folder

    folder = private_folder(env.report_dir / "rehearsals")
    data = redact_data(record.to_dict(), secrets)
    base = folder / name
    json_path, _markdown = write_pair(base, data, "rehearsal.md.j2", secrets)
    append_audit(
        private_folder(env.report_dir),
        {
            "time": record.finished_at,
            "environment": record.environment,
            "operation": "rehearse",
            "success": record.success,
            "exit_code": record.exit_code,
            "pre_revision": record.pre_revision,
            "post_revision": record.pre_revision,  # a rehearsal never moves the database
            "target_revision": record.target_revision,
            "verdict": data["verdict"],
            "user": record.user,
            "host": record.host,
            "commit": record.commit,
            "report": f"rehearsals/{base.name}.json",
            "error": data["error"],
        },
    )
    return json_path
