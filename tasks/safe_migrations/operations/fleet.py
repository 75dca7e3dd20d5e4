"""Fleets: one Alembic history across many databases, several at a time, one summary.

Fleets wrap the pipeline, they do not fork it: a member's run is exactly the
single-database run (its own health, lock, backup, upgrade, validate and report), in
a process of its own, because Alembic's ``op`` and ``context`` are module-global and
two upgrades in one process would interfere. Processes are forked from this one, so
each starts with SQLAlchemy and Alembic already imported. A member's name is part of
its environment's name (``<file>.<member>``), so its backups, manifests and reports
carry it and retention, restore and rollback never take another member's files.

Kept long: the scheduler (fork, collect, stop on failure or interrupt) and the summary
it writes share the members' state; the work a member does (fleet_work.py) and the
shards' merge (fleet_merge.py) are apart.
"""

from __future__ import annotations

import fnmatch
import json
import multiprocessing
import os
import signal
import sys
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from safe_migrations.core.config import MEMBER_NAME, Environment, resolve_url
from safe_migrations.core.errors import (
    EXIT_BLOCKED,
    EXIT_FAILED,
    EXIT_OK,
    ConfigError,
    ToolError,
    UsageError,
    first_line,
)
from safe_migrations.core.files import write_atomic
from safe_migrations.core.leftovers import claimed
from safe_migrations.core.masking import redact, url_password

SUMMARY_SCHEMA_VERSION = 1
# The worst exit code wins, in this order: a refusal, a failure, a held lock, a block.
SEVERITY = {2: 5, 1: 4, 4: 3, 3: 2, 0: 1}
OUTCOMES = {0: "succeeded", 1: "failed", 2: "refused", 3: "blocked", 4: "locked"}


@dataclass(frozen=True)
class Member:
    name: str
    url: str  # secret: holds the password


def members(env: Environment, environ: dict[str, str] | None = None) -> list[Member]:
    """The fleet's databases: those the file names, then those ``discover`` finds (a name
    the file already gives keeps the file's URL), sorted by name."""
    fleet = env.settings.fleet
    assert fleet is not None
    environ = dict(os.environ if environ is None else environ)
    found: dict[str, str] = {}
    for name, template in fleet.databases.items():
        found[name] = resolve_url(template, environ, env.path, f"fleet.databases.{name}")
    if fleet.discover is not None:
        server = resolve_url(fleet.discover.server, environ, env.path, "fleet.discover.server")
        for name in discover(env, server, fleet.discover.like):
            found.setdefault(name, _with_database(server, name))
    return [Member(name, url) for name, url in sorted(found.items())]


MAINTENANCE_DATABASES = frozenset(
    {
        "postgres",
        "template0",
        "template1",
        "rdsadmin",
        "azure_maintenance",
        "azure_sys",
        "cloudsqladmin",
    }
)


def discover(env: Environment, server: str, like: str) -> list[str]:
    """Databases on ``server`` whose name matches ``like``, templates and databases that
    refuse connections excluded; names that cannot be a member's are refused by name."""
    from safe_migrations.core.database import connect

    with connect(replace(env, url=server, name=f"{env.name} (discover)"), role="fleet") as db:
        names = db.exec_driver_sql(
            "SELECT datname FROM pg_database WHERE NOT datistemplate AND datallowconn "
            "AND datname LIKE %(like)s ORDER BY datname",
            {"like": like},
        ).scalars()
        # The server's own databases and the tool's temporary copies are never members.
        ours = (env.settings.check.scratch_prefix, env.settings.rehearsal.prefix)
        found = [n for n in names if n not in MAINTENANCE_DATABASES and not n.startswith(ours)]
    bad = [n for n in found if not MEMBER_NAME.match(n)]
    if bad:
        raise ConfigError(
            f"{env.path.name}: fleet.discover found the database {bad[0][:40]!r}, whose name "
            "cannot name a member (letters, digits, '_' and '-'); narrow fleet.discover.like."
        )
    return found


def _with_database(server: str, name: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(server).set(database=name).render_as_string(hide_password=False)


def member_environment(env: Environment, member: Member) -> Environment:
    """The environment of one member: the file's settings, the member's database."""
    return replace(env, name=f"{env.name}.{member.name}", url=member.url, member=member.name)


def shard_of(name: str, shards: int) -> int:
    """Which of ``shards`` shards (1-based) a member lands in: by its name alone, so a
    member always lands in the same shard, whatever else joins the fleet."""
    return zlib.crc32(name.encode()) % shards + 1


def parse_shard(text: str) -> tuple[int, int]:
    try:
        index, total = (int(part) for part in text.split("/"))
    except ValueError:
        index = total = 0
    if not (total >= 1 and 1 <= index <= total):
        raise UsageError(f"--shard {text!r} must be I/K with 1 <= I <= K, e.g. --shard 2/4.")
    return index, total


def select(found: list[Member], only: str = "", exclude: str = "", shard: str = "") -> list[Member]:
    """--only / --exclude (comma-separated shell-style patterns) and --shard I/K. A choice
    of no member is refused (exit 2), except a shard that happens to be empty: another
    shard of the same split has its members."""
    if not found:
        raise UsageError(
            "No member matched: the fleet has no database (check fleet.databases and "
            "fleet.discover)."
        )
    chosen = found
    if only:
        patterns = [p.strip() for p in only.split(",") if p.strip()]
        unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(m.name, p) for m in found)]
        if unmatched:
            raise UsageError(
                f"--only {unmatched[0]!r} matches no member of the fleet; `invoke status` "
                "lists them."
            )
        chosen = [m for m in chosen if any(fnmatch.fnmatchcase(m.name, p) for p in patterns)]
    if exclude:
        patterns = [p.strip() for p in exclude.split(",") if p.strip()]
        chosen = [m for m in chosen if not any(fnmatch.fnmatchcase(m.name, p) for p in patterns)]
    if not chosen:
        raise UsageError(
            f"No member matched: --exclude {exclude!r} leaves none of the fleet's "
            f"{len(found)} member(s); `invoke status` lists them."
        )
    if shard:
        index, total = parse_shard(shard)
        chosen = [m for m in chosen if shard_of(m.name, total) == index]
    return chosen


def matrix(found: list[Member], shards: int) -> dict[str, Any]:
    """What a GitHub Actions ``strategy.matrix`` takes: one entry per shard."""
    if shards < 1:
        raise UsageError("--shards must be at least 1.")
    return {
        "include": [
            {
                "shard": f"{i}/{shards}",
                "index": i,  # for artifact names, which may not hold a '/'
                "members": sum(shard_of(m.name, shards) == i for m in found),
            }
            for i in range(1, shards + 1)
        ]
    }


def worst(codes: list[int]) -> int:
    """The fleet's exit code: the worst member's, 2 > 1 > 4 > 3 > 0."""
    return max(codes, key=lambda c: SEVERITY.get(c, SEVERITY[EXIT_FAILED]), default=EXIT_OK)


@dataclass
class MemberResult:
    member: str
    outcome: str  # succeeded, failed, refused, blocked, locked, not started
    exit_code: int | None
    duration: float = 0.0
    pre_revision: str | None = None
    post_revision: str | None = None
    report: str | None = None
    log: str | None = None
    message: str = ""
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class FleetSummary:
    environment: str
    operation: str
    jobs: int
    keep_going: bool
    shard: str | None
    started_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    finished_at: str | None = None
    duration: float = 0.0
    exit_code: int = EXIT_OK
    interrupted: bool = False
    members: list[MemberResult] = field(default_factory=list)
    schema_version: int = SUMMARY_SCHEMA_VERSION
    orphaned: list[dict[str, Any]] = field(default_factory=list)  # killed runs found at start

    def counts(self) -> dict[str, int]:
        return dict(Counter(result.outcome for result in self.members))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["counts"] = self.counts()
        return data


Work = Callable[[Environment], dict[str, Any]]


def _die_with(parent: int) -> None:
    """SIGTERM this member when the runner dies, however it dies (Linux's
    PR_SET_PDEATHSIG): a SIGKILLed fleet never leaves members migrating on their own."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: members finish on their own
        return
    if os.getppid() != parent:  # the runner died before the prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _child(
    env: Environment, work: Work, reports: bool, sender: Connection, log: Path, parent: int
) -> None:
    """One member, in its own process: its output to its log, its outcome to the parent."""
    from safe_migrations.core import database

    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 - the process's own
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115

    def interrupt(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)
    _die_with(parent)
    database._ENGINES.clear()  # engines are per process; none is shared across a fork
    code, message, details = EXIT_OK, "", {}
    try:
        details = work(env) or {}
        message = str(details.pop("message", "") or "")
    except ToolError as exc:
        code, message = exc.exit_code, exc.message
    except KeyboardInterrupt as exc:
        code, message = EXIT_BLOCKED, f"interrupted ({exc or 'SIGINT'})"
    except Exception as exc:  # a member's failure is reported, never the fleet's crash
        code, message = EXIT_FAILED, f"{type(exc).__name__}: {first_line(exc)}"
    if reports:  # the run's own report, written whatever happened
        details.update(_last_report(env))
    sender.send({"exit_code": code, "message": redact(message, [env.password]), **details})
    sender.close()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # no atexit handlers of the parent's run twice


def _last_report(env: Environment) -> dict[str, Any]:
    from safe_migrations.pipeline.report import readable_reports

    for path, data in readable_reports(env):
        return {
            "report": str(path),
            "pre_revision": data.get("pre_revision"),
            "post_revision": data.get("post_revision"),
        }
    return {}


class Progress:
    """One line on a terminal: members done / running / failed / left; silent otherwise."""

    def __init__(self, total: int, stream: Any = None) -> None:
        self.total = total
        self.stream = stream or sys.stderr
        self.enabled = bool(getattr(self.stream, "isatty", lambda: False)())

    def show(self, done: int, running: int, failed: int, left: int) -> None:
        if self.enabled:
            self.stream.write(
                f"\rfleet: {done}/{self.total} done, {running} running, {failed} failed, "
                f"{left} left  "
            )
            self.stream.flush()

    def end(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


def run_fleet(
    env: Environment,
    chosen: list[Member],
    operation: str,
    work: Work,
    jobs: int | None = None,
    keep_going: bool = False,
    shard: str | None = None,
    progress: Progress | None = None,
    reports: bool = True,
) -> FleetSummary:
    """Run ``work`` on each member, ``jobs`` at a time, each in a forked process. After the
    first failure no new member starts (those running finish) unless ``keep_going``;
    SIGTERM or Ctrl-C stops starting members and interrupts the running ones, and the
    summary is still written.

    Kept long: the scheduling loop (start, collect, stop on a failure or an interrupt)
    keeps every member's outcome in one place, so none goes unrecorded whatever ends the
    run."""
    from safe_migrations.core.files import private_folder

    settings = env.settings.fleet
    assert settings is not None
    jobs = jobs or settings.jobs
    summary = FleetSummary(env.name, operation, jobs, keep_going, shard)
    logs = private_folder(env.report_dir / "fleets" / "logs")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    context = multiprocessing.get_context("fork")
    waiting = list(chosen)
    running: dict[int, tuple[Member, Any, Connection, float, Path]] = {}
    results: dict[str, MemberResult] = {}
    stopping = [False]
    progress = progress or Progress(len(chosen))

    def stop(signum: int, _frame: Any) -> None:
        stopping[0] = summary.interrupted = True
        for _member, process, _receiver, _started, _log in running.values():
            if process.is_alive():
                os.kill(process.pid, signal.SIGTERM)

    warm(env)
    parent = os.getpid()
    summary.orphaned = killed_runs(env)
    record = logs.parent / f".run-{operation}-{stamp}-{parent}.json"
    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    started = time.perf_counter()
    with claimed(record):  # a SIGKILL leaves it for the next run to report
        write_atomic(
            record,
            json.dumps(
                {
                    "operation": operation,
                    "shard": shard,
                    "started_at": summary.started_at,
                    "pid": parent,
                    "members": [m.name for m in chosen],
                }
            ),
        )
        try:
            while running or (waiting and not stopping[0]):
                while waiting and len(running) < jobs and not stopping[0]:
                    member = waiting.pop(0)
                    log = logs / f"{env.name}.{member.name}-{operation}-{stamp}.log"
                    receiver, sender = context.Pipe(duplex=False)
                    process = context.Process(
                        target=_child,
                        args=(member_environment(env, member), work, reports, sender, log, parent),
                    )
                    process.start()
                    sender.close()
                    running[process.sentinel] = (
                        member,
                        process,
                        receiver,
                        time.perf_counter(),
                        log,
                    )
                failed = sum(r.exit_code not in (0, None) for r in results.values())
                progress.show(len(results), len(running), failed, len(waiting))
                for sentinel in wait(list(running), timeout=0.5):
                    member, process, receiver, began, log = running.pop(int(sentinel))  # type: ignore[arg-type]
                    process.join()
                    result = _collect(
                        member, process.exitcode, receiver, time.perf_counter() - began
                    )
                    result.log = str(log)
                    results[member.name] = result
                    if result.exit_code != EXIT_OK and not keep_going:
                        stopping[0] = True
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            progress.end()
            record.unlink(missing_ok=True)
    for member in chosen:
        summary.members.append(
            results.get(member.name)
            or MemberResult(member.name, "not started", None, message=_why_not(summary))
        )
    codes = [r.exit_code for r in summary.members if r.exit_code is not None]
    summary.exit_code = worst(codes + ([EXIT_BLOCKED] if summary.interrupted else []))
    summary.duration = round(time.perf_counter() - started, 3)
    summary.finished_at = datetime.now(UTC).isoformat()
    return summary


def killed_runs(env: Environment) -> list[dict[str, Any]]:
    """Fleet runs of this environment that were killed before their summary (their record
    left claimed by a dead process): what they had started, removed once read. Their
    members had been told to stop (``_die_with``); each wrote its own report."""
    from safe_migrations.core.leftovers import abandoned, sweep

    folder = env.report_dir / "fleets"
    found = []
    for path in abandoned(folder, ".run-*.json"):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = {}
        found.append(
            {
                "operation": str(data.get("operation", "?")),
                "started_at": str(data.get("started_at", "?")),
                "pid": data.get("pid"),
                "members": [str(m) for m in data.get("members", [])][:1000],
            }
        )
    if found:
        sweep(folder)
    return found


def warm(env: Environment) -> None:
    """Load once, before forking, what every member would load again: the step modules,
    Alembic's runtime and autogenerate, the scripts and the report template."""
    import alembic.autogenerate  # noqa: F401 - imported for the children
    import alembic.runtime.environment  # noqa: F401
    import alembic.runtime.migration  # noqa: F401

    from safe_migrations.operations import standalone  # noqa: F401
    from safe_migrations.pipeline import migrate  # noqa: F401
    from safe_migrations.pipeline.report import jinja_environment
    from safe_migrations.project.alembic_api import project_for

    jinja_environment(False).get_template("report.md.j2")
    project_for(env).scripts()


def _why_not(summary: FleetSummary) -> str:
    if summary.interrupted:
        return "not started: the fleet run was interrupted"
    return "not started: an earlier member failed (pass --keep-going to go on)"


def _collect(
    member: Member, exit_code: int | None, receiver: Connection, seconds: float
) -> MemberResult:
    data: dict[str, Any] = {}
    if receiver.poll():
        try:
            data = receiver.recv()
        except EOFError:
            data = {}
    receiver.close()
    code = data.pop("exit_code", None)
    if code is None:  # it died without a word (killed): a failure whose state is unknown
        code = EXIT_FAILED
        data["message"] = f"the member's process ended with {exit_code} before reporting"
    return MemberResult(
        member.name,
        OUTCOMES.get(code, "failed"),
        code,
        round(seconds, 3),
        data.pop("pre_revision", None),
        data.pop("post_revision", None),
        data.pop("report", None),
        message=str(data.pop("message", "")),
        details=data,
    )


def write_summary(env: Environment, summary: FleetSummary, members_: list[Member]) -> Path:
    """JSON and Markdown in ``reports.folder/fleets/``, and a line in the audit log."""
    from safe_migrations.core.files import private_folder
    from safe_migrations.core.masking import redact_data
    from safe_migrations.pipeline.report import append_audit, write_pair

    secrets = [env.password, *(url_password(m.url) for m in members_)]
    folder = private_folder(env.report_dir / "fleets")
    data = redact_data(summary.to_dict(), secrets)
    stamp = datetime.fromisoformat(summary.started_at).strftime("%Y%m%dT%H%M%S%fZ")
    shard = f"-shard{summary.shard.replace('/', 'of')}" if summary.shard else ""
    base = folder / f"{env.name}-fleet-{summary.operation}{shard}-{stamp}-{os.getpid()}"
    json_path, _markdown = write_pair(base, data, "fleet.md.j2", secrets)
    append_audit(
        private_folder(env.report_dir),
        {
            "time": summary.finished_at,
            "environment": env.name,
            "operation": f"fleet {summary.operation}",
            "success": summary.exit_code == EXIT_OK,
            "exit_code": summary.exit_code,
            "members": len(summary.members),
            "counts": summary.counts(),
            "report": f"fleets/{base.name}.json",
        },
    )
    return json_path


def summaries(env: Environment, paths: Any, operations: tuple[str, ...]) -> list[dict[str, Any]]:
    """The environment's readable fleet summaries of these operations among ``paths``,
    newest first (a damaged or foreign file is skipped)."""
    found = []
    for path in paths:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            moment = path.stat().st_mtime
        except (OSError, ValueError):
            continue
        if data.get("environment") == env.name and data.get("operation") in operations:
            found.append((moment, data))
    return [data for _moment, data in sorted(found, key=lambda item: item[0], reverse=True)]


def last_summary(env: Environment, operations: tuple[str, ...]) -> dict[str, Any] | None:
    """The newest fleet summary of these operations (rollback reads it)."""
    found = summaries(env, (env.report_dir / "fleets").glob(f"{env.name}-fleet-*.json"), operations)
    return found[0] if found else None


def to_roll_back(env: Environment, candidates: list[Member]) -> list[Member]:
    """Members the newest fleet run changed and that failed with exit code 1 (a member
    whose revision after the run is unknown is included: its own rollback then decides)."""
    last = last_summary(env, ("upgrade", "downgrade"))
    if last is None:
        return []
    failed = {
        m["member"]
        for m in last.get("members", [])
        if m.get("exit_code") == EXIT_FAILED
        and (m.get("post_revision") is None or m.get("post_revision") != m.get("pre_revision"))
    }
    return [m for m in candidates if m.name in failed]


def render_table(summary: FleetSummary) -> str:
    lines = [
        f"fleet {summary.environment}: {summary.operation} on {len(summary.members)} member(s), "
        f"{summary.jobs} at a time; exit code {summary.exit_code}",
        f"  {'member':<24} {'outcome':<12} {'before':<14} {'after':<14} {'time':>8}  message",
    ]
    for r in summary.members:
        lines.append(
            f"  {r.member:<24} {r.outcome:<12} {str(r.pre_revision or '-'):<14} "
            f"{str(r.post_revision or '-'):<14} {r.duration:>7.2f}s  {r.message[:120]}"
        )
    return "\n".join(lines)
