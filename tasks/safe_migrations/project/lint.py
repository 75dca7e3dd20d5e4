"""`invoke lint`: each revision's PostgreSQL SQL (Alembic offline mode) checked by squawk.

One revision at a time, so each finding names its revision file and the line of
SQL. A revision may allow a rule with a marker comment in its own file::

    # squawk: allow renaming-column -- clients read the view, not the table

Allowed findings are listed, never hidden; a marker without a reason allows nothing.
An existing history is accepted as it stands with a baseline (``invoke lint
--baseline``, ``lint-baseline.yml`` in the migrations folder, see baseline.py): its
findings are listed as accepted, and only new ones fail. Nothing rendered is a
failure, never a pass.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from safe_migrations.core.config import Environment
from safe_migrations.core.errors import ConfigError, NothingRenderedError, ToolError, UsageError
from safe_migrations.core.results import StepResult, timed
from safe_migrations.core.revisions import resolve_revision
from safe_migrations.project.alembic_api import (
    PROJECT_ROOT,
    Project,
    Revision,
    render_sql,
    upgrade_path,
)
from safe_migrations.project.baseline import Baseline, fingerprint, load_baseline

# squawk's settings: the project's own (squawk.toml in its migrations folder), else
# this package's defaults (a link to this repository's migrations/squawk.toml).
DEFAULT_SQUAWK_CONFIG = Path(__file__).parent / "scaffold" / "squawk.toml"
_MARKER = re.compile(r"#\s*squawk:\s*allow\s+([a-z0-9-]+)(?:\s*(?:--|:)\s*(\S.*))?", re.I)


@dataclass(frozen=True)
class Finding:
    revision: str
    path: str
    rule: str
    message: str
    line: int
    statement: str
    allowed: bool = False
    reason: str | None = None
    fingerprint: str = ""
    baselined: bool = False
    warning: bool = False  # said, never failing: our own MySQL check

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LintResult:
    findings: list[Finding] = field(default_factory=list)
    unrendered: dict[str, str] = field(default_factory=dict)
    checked: list[str] = field(default_factory=list)
    note: str | None = None  # what was not checked, and why

    @property
    def blocking(self) -> list[Finding]:
        return [f for f in self.findings if not (f.allowed or f.baselined or f.warning)]

    @property
    def allowed(self) -> list[Finding]:
        return [f for f in self.findings if f.allowed]

    @property
    def baselined(self) -> list[Finding]:
        return [f for f in self.findings if f.baselined]

    @property
    def nothing_checked(self) -> bool:
        """Revisions were asked for and none could be rendered: no pass, a failure."""
        return bool(self.unrendered) and not self.checked

    def nothing_rendered(self) -> NothingRenderedError:
        revision, error = next(iter(self.unrendered.items()))
        return NothingRenderedError.first("revision", revision, error)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": not self.blocking and not self.nothing_checked,
            "checked": self.checked,
            "findings": [f.to_dict() for f in self.findings],
            "unrendered": self.unrendered,
            "note": self.note,
        }

    def render(self) -> str:
        lines = [self.note] if self.note else []
        for revision in self.checked + list(self.unrendered):
            own = [f for f in self.findings if f.revision == revision]
            if revision in self.unrendered:
                lines.append(
                    f"{revision}: not checked, cannot be rendered offline: "
                    f"{self.unrendered[revision]}"
                )
                continue
            if not own:
                lines.append(f"{revision}: clean")
                continue
            lines.append(f"{revision} ({own[0].path}):")
            for f in own:
                state = (
                    "warning"
                    if f.warning
                    else f"allowed: {f.reason}"
                    if f.allowed
                    else f"accepted in the baseline: {f.reason or 'no reason given yet'}"
                    if f.baselined
                    else "NOT ALLOWED"
                )
                lines.append(f"  {f.rule} [{state}] line {f.line}: {f.message}")
                lines.append(f"    {f.statement}")
        lines.append(
            f"{len(self.checked)} revision(s) checked, {len(self.blocking)} finding(s) "
            f"not allowed, {len(self.allowed)} allowed, {len(self.baselined)} baselined, "
            f"{len(self.unrendered)} not renderable"
        )
        return "\n".join(lines)


def allow_markers(path: Path) -> dict[str, str | None]:
    """Rules a revision file allows, with their reasons (None: marker without a reason)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return {}
    return {m.group(1).lower(): m.group(2) for m in _MARKER.finditer(text)}


def squawk_binary() -> str:
    found = shutil.which("squawk") or shutil.which("squawk", path=str(Path(sys.executable).parent))
    if found is None:
        raise ToolError(
            "squawk is not installed; install it with `pip install squawk-cli` "
            "(it comes with the project's dependencies)."
        )
    return found


def _statement_at(sql: str, line: int) -> str:
    """The whole statement that starts at ``line``, on one line."""
    lines = sql.splitlines()
    start = max(0, min(line - 1, len(lines) - 1))
    text = []
    for current in lines[start:]:
        text.append(current.strip())
        if current.rstrip().endswith(";"):
            break
    return " ".join(t for t in text if t)


def squawk_config(project: Project) -> Path:
    own = Path(project.scripts().dir) / "squawk.toml"
    return own if own.is_file() else DEFAULT_SQUAWK_CONFIG


def squawk(sql: str, path: str, config: Path = DEFAULT_SQUAWK_CONFIG) -> list[dict[str, Any]]:
    """squawk's JSON findings for one piece of SQL, given through stdin."""
    result = subprocess.run(
        [squawk_binary(), "--config", str(config), "--reporter", "json", "--stdin-filepath", path],
        input=sql,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if result.returncode not in (0, 1):
        raise ToolError(f"squawk failed on {path}: {result.stderr.strip() or result.stdout}")
    try:
        return json.loads(result.stdout or "[]")
    except ValueError:
        raise ToolError(f"squawk printed no JSON for {path}: {result.stdout[:200]}") from None


SQUAWK_DIALECT = "postgresql"  # squawk parses PostgreSQL's SQL, whatever the engine
MYSQL_NOTE = (
    "squawk's rules are PostgreSQL's and do not apply to MySQL/MariaDB: not run. Checked "
    "instead: revisions with several DDL statements (MySQL commits each on its own)."
)
_DDL = re.compile(r"\s*(CREATE|ALTER|DROP|RENAME|TRUNCATE)\b", re.I)


def lint_mysql(project: Project, path: list[Revision], dialect: str) -> LintResult:
    """Each revision rendered offline for ``dialect`` (MySQL's): a warning for each one
    with more than one DDL statement, since a failure after the first leaves it partly
    applied."""
    outcome = LintResult(note=MYSQL_NOTE)
    for item in render_sql(project.config(), project.scripts(), path, dialect):
        if item.error or item.sql is None:
            outcome.unrendered[item.revision] = item.error or "no SQL"
            continue
        outcome.checked.append(item.revision)
        statements = (
            " ".join(line for line in chunk.splitlines() if not line.lstrip().startswith("--"))
            for chunk in item.sql.split(";\n")
        )
        ddl = [
            " ".join(statement.split())
            for statement in statements
            if _DDL.match(statement) and "alembic_version" not in statement
        ]
        if len(ddl) > 1:
            outcome.findings.append(
                Finding(
                    revision=item.revision,
                    path=item.path,
                    rule="several-ddl-statements",
                    message=f"{len(ddl)} DDL statements: MySQL commits each on its own, so a "
                    "failure after the first leaves the revision partly applied (the run then "
                    "blocks until `invoke resolve`); one statement per revision where you can",
                    line=0,
                    statement="; ".join(ddl)[:300],
                    fingerprint=fingerprint(ddl[0]),
                    warning=True,
                )
            )
    return outcome


def lint_revisions(
    project: Project, path: list[Revision], baseline: Baseline | None = None
) -> LintResult:
    """Render each revision for PostgreSQL and check it with squawk; findings carry allow
    markers and whether the baseline (the project's own, unless one is given) accepts
    them."""
    cfg = project.config()
    config = squawk_config(project)
    accepted = load_baseline(project) if baseline is None else baseline
    outcome = LintResult()
    for item in render_sql(cfg, project.scripts(), path, SQUAWK_DIALECT):
        if item.error or item.sql is None:
            outcome.unrendered[item.revision] = item.error or "no SQL"
            continue
        outcome.checked.append(item.revision)
        file = Path(item.path) if Path(item.path).is_absolute() else PROJECT_ROOT / item.path
        markers = allow_markers(file)
        for raw in squawk(item.sql, item.path, config):
            rule = raw.get("rule_name", "unknown")
            line = int(raw.get("line", 0)) + 1
            statement = _statement_at(item.sql, line)
            mark = fingerprint(statement)
            reason = markers.get(rule)
            kept = accepted.find(item.revision, file, rule, mark) if not reason else None
            outcome.findings.append(
                Finding(
                    revision=item.revision,
                    path=item.path,
                    rule=rule,
                    message=raw.get("message", ""),
                    line=line,
                    statement=statement[:300],
                    allowed=bool(reason),
                    reason=reason if reason else kept.reason if kept else None,
                    fingerprint=mark,
                    baselined=kept is not None,
                )
            )
    return outcome


def selected_revisions(
    env: Environment, project: Project, range_: str = "", all_: bool = False, since: str = ""
) -> list[Revision]:
    """What `invoke lint` checks: ``--all``, ``--range A:B``, ``--since REV`` (the revisions
    after REV), or (default) the pending ones."""
    from safe_migrations.pipeline.status import read_current

    if sum(map(bool, (range_, all_, since))) > 1:
        raise UsageError("--range, --since and --all contradict each other; pass one of them.")
    scripts = project.scripts()

    def current() -> str | None:
        return read_current(env)

    if all_:
        start, end = None, "head"
    elif range_:
        start, end = parse_range(range_)
    elif since:
        start, end = since, "head"
    else:
        return upgrade_path(scripts, current(), resolve_revision(scripts, "head"))
    return upgrade_path(
        scripts,
        resolve_revision(scripts, start, current) if start else None,
        resolve_revision(scripts, end, current),
    )


def parse_range(spec: str) -> tuple[str | None, str]:
    """``A:B`` (A exclusive, like Alembic) -> (A or None for base, B)."""
    if ":" not in spec:
        raise ConfigError(f"--range must look like A:B (for example base:head), not '{spec}'.")
    start, end = spec.split(":", 1)
    return (None if start in ("", "base") else start), (end or "head")


def lint_pending(
    project: Project,
    current: str | None,
    target: str | None,
    lint: Callable[[Project, list[Revision], Baseline | None], LintResult] | None = None,
) -> StepResult:
    """Lint the revisions between ``current`` and ``target`` as one check result."""
    with timed() as clock:
        pending = upgrade_path(project.scripts(), current, target)
        result = (lint or lint_revisions)(project, pending, None)  # the engine's, or squawk's
    blocking = result.blocking
    message = (
        f"{len(result.checked)} pending revision(s) linted, no finding that is not allowed"
        if not blocking
        else "; ".join(f"{f.revision}: {f.rule} ({f.message})" for f in blocking)
    )
    if result.allowed:
        message += f"; allowed: {', '.join(f'{f.revision} {f.rule}' for f in result.allowed)}"
    if result.baselined:
        message += f"; baselined: {', '.join(f'{f.revision} {f.rule}' for f in result.baselined)}"
    warned = [f for f in result.findings if f.warning]
    if warned:
        message += f"; warnings: {', '.join(f'{f.revision} {f.rule}' for f in warned)}"
    if result.note:
        message += f"; {result.note}"
    if result.unrendered:
        message += f"; not renderable: {', '.join(result.unrendered)}"
    if result.nothing_checked:  # a warning: a revision that reads rows may be pending
        return StepResult(
            "lint",
            False,
            result.nothing_rendered().message,
            severity="warning",
            duration=clock.seconds,
            details=result.to_dict(),
        )
    return StepResult(
        "lint", not blocking, message, duration=clock.seconds, details=result.to_dict()
    )


def removed_by_rewrite(written: LintResult, rewritten: LintResult) -> LintResult:
    """The rewritten form's findings, noting those of the form as written that the
    rewrite removes (migration.safe_operations runs them without blocking)."""
    kept = {(f.revision, f.rule) for f in rewritten.findings}
    gone = sorted({(f.revision, f.rule) for f in written.findings} - kept)
    if gone:
        said = ", ".join(f"{revision} {rule}" for revision, rule in gone)
        note = f"removed by safe_operations' rewrite (run in their non-blocking form): {said}"
        rewritten.note = f"{rewritten.note}; {note}" if rewritten.note else note
    return rewritten
