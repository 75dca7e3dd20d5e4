"""The report step: a JSON report, its Markdown rendering, one audit line per run.

Written in a ``finally`` by every operation, so a failed run reports too. Every
text is passed through ``redact`` with the environment's password first.
"""

from __future__ import annotations

import functools
import getpass
import json
import os
import shlex
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from safe_migrations.core import escaping
from safe_migrations.core.config import PROJECT_ROOT, Environment
from safe_migrations.core.files import append_line, private_folder, write_atomic
from safe_migrations.core.masking import redact, redact_data
from safe_migrations.core.results import StepResult, fields_copied

REPORT_SCHEMA_VERSION = 2
BASE = "base"  # a revision field's value for an empty history; None means unknown
TOOL_VERSION = "0.1.0"
TEMPLATES = Path(__file__).parent.parent / "templates"


@dataclass
class RunRecord:
    """Everything a run learned; filled in step by step, written at the end.

    Revision fields hold an id, ``BASE`` for an empty history, or None when the
    run never read it or could not: never a guess (report schema 2).
    """

    environment: str
    operation: str
    url: str
    started_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    finished_at: str | None = None
    duration: float = 0.0
    success: bool = False
    exit_code: int = 1
    dry_run: bool = False
    pre_revision: str | None = None
    target_revision: str | None = None
    post_revision: str | None = None
    failed_revision: str | None = None
    partly_applied: dict[str, Any] | None = None  # MySQL: what a failed revision left applied
    steps: list[dict[str, Any]] = field(default_factory=list)
    health: list[dict[str, Any]] = field(default_factory=list)
    validation: list[dict[str, Any]] = field(default_factory=list)
    applied: list[dict[str, Any]] = field(default_factory=list)
    retries: list[dict[str, Any]] = field(default_factory=list)
    pending: list[dict[str, Any]] = field(default_factory=list)
    backup: dict[str, Any] | None = None
    restored_from: str | None = None
    error: str | None = None
    user: str = field(default_factory=lambda: current_user())
    host: str = field(default_factory=socket.gethostname)
    commit: str | None = field(default_factory=lambda: git_commit())
    tool_version: str = TOOL_VERSION
    schema_version: int = REPORT_SCHEMA_VERSION

    def add_step(self, result: StepResult) -> None:
        self.steps.append(result.to_dict())

    def to_dict(self) -> dict[str, Any]:
        return fields_copied(self)


def current_user() -> str:
    """Who runs this, as reports name them; "unknown" when the system cannot say."""
    try:
        return str(getpass.getuser())
    except (OSError, KeyError):
        return "unknown"


def git_commit() -> str | None:
    """GITHUB_SHA under Actions, else the checkout's HEAD, else None."""
    if os.environ.get("GITHUB_SHA"):
        return os.environ["GITHUB_SHA"]
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


@functools.cache
def jinja_environment(autoescape: bool = False) -> Any:
    """One Jinja environment per escaping mode; it caches compiled templates."""
    from jinja2 import Environment as Jinja
    from jinja2 import FileSystemLoader, StrictUndefined

    environment = Jinja(
        loader=FileSystemLoader(str(TEMPLATES)),
        autoescape=autoescape,  # noqa: S701 - Markdown is not HTML; HTML templates escape
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    # Markdown templates pass every user-controlled text through one of these.
    environment.filters["md"] = escaping.markdown_inline
    environment.filters["code"] = lambda text: escaping.markdown_code(text).replace("|", "\\|")
    environment.filters["codeblock"] = escaping.markdown_block
    environment.filters["shell"] = lambda text: shlex.quote(
        escaping.terminal(str(text)).replace("\n", " ")  # one shell word on one line
    )
    return environment


def prewarm() -> threading.Thread:
    """Import Jinja and compile the report template while the run waits on the database."""
    worker = threading.Thread(
        target=lambda: jinja_environment(False).get_template("report.md.j2"), daemon=True
    )
    worker.start()
    return worker


def render(report: dict[str, Any], template: str) -> str:
    """Markdown (``report.md.j2``), issue body, or autoescaped HTML (``*.html.j2``)."""
    env = jinja_environment(template.endswith(".html.j2"))
    return env.get_template(template).render(report=report, run_url=run_url())


def run_url() -> str | None:
    """The GitHub Actions run this process belongs to, when GitHub says so."""
    parts = [os.environ.get(k) for k in ("GITHUB_SERVER_URL", "GITHUB_REPOSITORY", "GITHUB_RUN_ID")]
    return "{}/{}/actions/runs/{}".format(*parts) if all(parts) else None


def reported(revision: str | None) -> str:
    """A revision read from the database, as a report states it: None (empty) is BASE."""
    return revision or BASE


def append_audit(folder: Path, line: dict[str, Any]) -> None:
    """One JSON line per run; a single O_APPEND write, so concurrent runs never interleave."""
    append_line(folder / "audit.jsonl", (json.dumps(line, sort_keys=True) + "\n").encode())


def write_pair(
    base: Path, data: dict[str, Any], template: str, secrets: list[str | None]
) -> tuple[Path, str]:
    """``<base>.json`` and its Markdown rendering ``<base>.md``, each written whole (0600);
    returns the JSON's path and the Markdown. ``base`` may hold dots (a member's name)."""
    markdown = redact(render(data, template), secrets)
    json_path = Path(f"{base}.json")
    write_atomic(json_path, json.dumps(data, indent=2) + "\n")
    write_atomic(Path(f"{base}.md"), markdown)
    return json_path, markdown


def write_report(env: Environment, record: RunRecord) -> Path:
    """JSON + Markdown beside each other, an audit line, the step summary; returns the JSON."""
    folder = private_folder(env.report_dir)
    secrets = [env.password]
    data = redact_data(record.to_dict(), secrets)
    stamp = datetime.fromisoformat(record.started_at).strftime("%Y%m%dT%H%M%S%fZ")
    base = folder / f"{env.name}-{record.operation}-{stamp}-{os.getpid()}"
    json_path, markdown = write_pair(base, data, "report.md.j2", secrets)
    append_audit(
        folder,
        {
            "time": record.finished_at,
            "environment": record.environment,
            "operation": record.operation,
            "success": record.success,
            "exit_code": record.exit_code,
            "pre_revision": record.pre_revision,
            "post_revision": record.post_revision,
            "user": record.user,
            "host": record.host,
            "commit": record.commit,
            "report": json_path.name,
            "error": data["error"],
        },
    )
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a", encoding="utf-8") as handle:
            handle.write(markdown + "\n")
    prune_reports(env, keep=json_path)
    return json_path


def list_reports(env: Environment) -> list[Path]:
    """This environment's JSON reports, newest first: by the names write_report gives, so
    the reports of ``prod-eu`` are never taken for those of ``prod``."""
    import re

    folder = env.report_dir
    if not folder.exists():
        return []
    name = re.compile(re.escape(env.name) + r"-[a-z_]+-\d{8}T\d{6,}Z-\d+\.json")
    found = [p for p in folder.glob(f"{env.name}-*.json") if name.fullmatch(p.name)]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def load_report(path: Path) -> dict[str, Any]:
    """One report; a version 1 report's null revisions stay null, which now means unknown."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or "operation" not in data:
        raise ValueError("not a run report")
    return data


def readable_reports(
    env: Environment, strict: bool = False
) -> Iterator[tuple[Path, dict[str, Any]]]:
    """This environment's reports, newest first; a damaged one is skipped with a warning,
    or, when ``strict`` (rollback must not reach past it), refused."""
    from safe_migrations.core.errors import ConfigError

    for path in list_reports(env):
        try:
            yield path, load_report(path)
        except (OSError, ValueError) as exc:
            if strict:
                raise ConfigError(
                    f"The newest report {path} is damaged ({exc}); rollback will not guess "
                    "past it. Check `invoke status`, then move the database explicitly with "
                    "`invoke downgrade --revision REV`."
                ) from None
            print(f"warning: skipping the damaged report {path}: {exc}", file=sys.stderr)


def last_report(
    env: Environment,
    operations: tuple[str, ...] | None = None,
    real_only: bool = True,
    strict: bool = False,
) -> tuple[Path, dict[str, Any]] | None:
    """The newest report (of the given operations, not a dry run), or None."""
    for path, data in readable_reports(env, strict):
        if operations and data.get("operation") not in operations:
            continue
        if real_only and data.get("dry_run"):
            continue
        return path, data
    return None


def prune_reports(env: Environment, keep: Path) -> None:
    """Reports past ``reports.retention_days`` go; the audit log stays forever."""
    limit = datetime.now(UTC) - timedelta(days=env.settings.reports.retention_days)
    for path in list_reports(env):
        if path == keep:
            continue
        if datetime.fromtimestamp(path.stat().st_mtime, UTC) < limit:
            path.unlink(missing_ok=True)
            path.with_suffix(".md").unlink(missing_ok=True)


FORMATS = {"md": "report.md.j2", "html": "report.html.j2", "issue": "issue_body.md.j2"}


def find_report(env: Environment, path: str | None, failed_only: bool = False) -> dict[str, Any]:
    """A report by path, or the newest one (the newest failed one for an issue body)."""
    from safe_migrations.core.errors import ConfigError

    if path:
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"No report at {path}; `invoke report --env E` shows the last one.")
        try:
            return load_report(file)
        except ValueError:
            raise ConfigError(f"{path} is not a JSON report.") from None
    for _file, data in readable_reports(env):
        if not failed_only or not data.get("success"):
            return data
    kind = "failed run's report" if failed_only else "report"
    raise ConfigError(f"There is no {kind} for {env.name} in {env.report_dir}.")


def no_report_issue_body(environment: str) -> str:
    """The issue body when a job failed before the migration wrote any report."""
    url = run_url()
    run = f"\nRun: {url}\n" if url else ""
    return (
        f"## Database migration failed: {environment}\n{run}\n"
        "The job failed before the migration wrote a report (for example a missing "
        "secret, a failed install or a blocking health check), so the database was not "
        "changed by this run. See the run log and the health artifact.\n"
    )


def show(report_data: dict[str, Any], fmt: str, secrets: list[str | None]) -> str:
    """The report as json, md, html or an issue body; redacted once more on the way out."""
    from safe_migrations.core.errors import UsageError

    if fmt == "json":
        text = json.dumps(report_data, indent=2)
    elif fmt in FORMATS:
        text = render(report_data, FORMATS[fmt])
    else:
        raise UsageError(f"Unknown report format '{fmt}'; use md, json or html.")
    return redact(text, secrets)
