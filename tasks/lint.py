"""`invoke lint`: each revision's PostgreSQL SQL (Alembic offline mode) checked by squawk.

One revision at a time, so each finding names its revision file and the line of
SQL. A revision may allow a rule with a marker comment in its own file::

    # squawk: allow renaming-column -- clients read the view, not the table

Allowed findings are listed, never hidden; a marker without a reason allows nothing.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from safe_migrations.alembic_api import PROJECT_ROOT, Project, Revision, render_sql, upgrade_path
from safe_migrations.config import Environment
from safe_migrations.errors import ConfigError, ToolError
from safe_migrations.results import StepResult, timed

SQUAWK_CONFIG = PROJECT_ROOT / "migrations" / "squawk.toml"
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LintResult:
    findings: list[Finding] = field(default_factory=list)
    unrendered: dict[str, str] = field(default_factory=dict)
    checked: list[str] = field(default_factory=list)

    @property
    def blocking(self) -> list[Finding]:
        return [f for f in self.findings if not f.allowed]

    @property
    def allowed(self) -> list[Finding]:
        return [f for f in self.findings if f.allowed]

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": not self.blocking,
            "checked": self.checked,
            "findings": [f.to_dict() for f in self.findings],
            "unrendered": self.unrendered,
        }

    def render(self) -> str:
        lines = []
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
                state = f"allowed: {f.reason}" if f.allowed else "NOT ALLOWED"
                lines.append(f"  {f.rule} [{state}] line {f.line}: {f.message}")
                lines.append(f"    {f.statement}")
        lines.append(
            f"{len(self.checked)} revision(s) checked, {len(self.blocking)} finding(s) "
            f"not allowed, {len(self.allowed)} allowed, "
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
    lines = sql.splitlines()
    start = max(0, min(line - 1, len(lines) - 1))
    text = []
    for current in lines[start:]:
        text.append(current.strip())
        if current.rstrip().endswith(";"):
            break
    return " ".join(t for t in text if t)[:300]


def squawk(sql: str, path: str, config: Path = SQUAWK_CONFIG) -> list[dict[str, Any]]:
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


def lint_revisions(project: Project, path: list[Revision]) -> LintResult:
    """Render each revision for PostgreSQL and check it; findings carry allow markers."""
    cfg = project.config(dialect_name="postgresql")
    outcome = LintResult()
    for item in render_sql(cfg, project.scripts(), path):
        if item.error or item.sql is None:
            outcome.unrendered[item.revision] = item.error or "no SQL"
            continue
        outcome.checked.append(item.revision)
        file = Path(item.path) if Path(item.path).is_absolute() else PROJECT_ROOT / item.path
        markers = allow_markers(file)
        for raw in squawk(item.sql, item.path):
            rule = raw.get("rule_name", "unknown")
            reason = markers.get(rule)
            outcome.findings.append(
                Finding(
                    revision=item.revision,
                    path=item.path,
                    rule=rule,
                    message=raw.get("message", ""),
                    line=int(raw.get("line", 0)) + 1,
                    statement=_statement_at(item.sql, int(raw.get("line", 0)) + 1),
                    allowed=bool(reason),
                    reason=reason,
                )
            )
    return outcome


def selected_revisions(
    env: Environment, project: Project, range_: str, all_: bool
) -> list[Revision]:
    """What `invoke lint` checks: ``--all``, ``--range A:B``, or (default) the pending ones."""
    from safe_migrations.alembic_api import resolve_revision, upgrade_path
    from safe_migrations.errors import UsageError
    from safe_migrations.status import read_current

    if range_ and all_:
        raise UsageError("--range and --all contradict each other; pass one of them.")
    scripts = project.scripts()
    if all_:
        start, end = None, "head"
    elif range_:
        start, end = parse_range(range_)
    else:
        start, end = read_current(env), "head"
    return upgrade_path(
        scripts, resolve_revision(scripts, start) if start else None, resolve_revision(scripts, end)
    )


def parse_range(spec: str) -> tuple[str | None, str]:
    """``A:B`` (A exclusive, like Alembic) -> (A or None for base, B)."""
    if ":" not in spec:
        raise ConfigError(f"--range must look like A:B (for example base:head), not '{spec}'.")
    start, end = spec.split(":", 1)
    return (None if start in ("", "base") else start), (end or "head")


def lint_pending(project: Project, current: str | None, target: str | None) -> StepResult:
    """Lint the revisions between ``current`` and ``target`` as one check result."""
    with timed() as clock:
        pending = upgrade_path(project.scripts(), current, target)
        result = lint_revisions(project, pending)
    blocking = result.blocking
    message = (
        f"{len(result.checked)} pending revision(s) linted, no finding that is not allowed"
        if not blocking
        else "; ".join(f"{f.revision}: {f.rule} ({f.message})" for f in blocking)
    )
    if result.allowed:
        message += f"; allowed: {', '.join(f'{f.revision} {f.rule}' for f in result.allowed)}"
    if result.unrendered:
        message += f"; not renderable: {', '.join(result.unrendered)}"
    return StepResult(
        "lint", not blocking, message, duration=clock.seconds, details=result.to_dict()
    )
