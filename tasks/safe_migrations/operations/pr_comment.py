"""``invoke pr-comment``: the one comment a pull request gets about its new revisions.

Rendered from what the pull-request workflow's jobs wrote into one folder: the lint of
the new revisions (``lint.json``), the check with the stairway (``check.json``), the
rehearsal on a database built from the base branch (``rehearsal.json``) and, where the
repository allows it, the rehearsal on staging's latest backup (``staging.json``, or
``staging-skipped.txt`` saying why there is none). A hidden marker lets the workflow
find the comment again and update it on every push. Every text a user controls is
escaped as in the issue bodies; the comment stays under GitHub's 65,536 characters.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safe_migrations.core.errors import ConfigError

MARKER = "<!-- safe-migrations:pr-comment -->"
LIMIT = 65_536  # GitHub's limit for a comment's body
FILES = ("lint.json", "check.json", "rehearsal.json", "staging.json")


@dataclass
class Inputs:
    """What the jobs produced; a missing file is a job that did not get that far."""

    lint: dict[str, Any] | None = None
    check: dict[str, Any] | None = None
    rehearsal: dict[str, Any] | None = None
    staging: dict[str, Any] | None = None
    staging_skipped: str | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return (
            not self.problems
            and all(part is not None for part in (self.lint, self.check, self.rehearsal))
            and bool((self.lint or {}).get("ok"))
            and bool((self.check or {}).get("ok"))
            and bool((self.rehearsal or {}).get("success"))
            and (self.staging is None or bool(self.staging.get("success")))
        )


def read_inputs(folder: Path) -> Inputs:
    if not folder.is_dir():
        raise ConfigError(f"--input {folder} is not a folder; point it at the jobs' reports.")
    found = Inputs()
    for name in FILES:
        path = folder / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            found.problems.append(f"{name} is not JSON (the job that wrote it failed early)")
            continue
        setattr(found, name.removesuffix(".json"), data if isinstance(data, dict) else None)
    skipped = folder / "staging-skipped.txt"
    if skipped.is_file():
        found.staging_skipped = skipped.read_text(encoding="utf-8").strip()
    return found


def revisions(inputs: Inputs) -> list[dict[str, Any]]:
    """One row per new revision: its lint findings, rewrites, locks, duration, verdict."""
    findings: dict[str, list[dict[str, Any]]] = {}
    for finding in (inputs.lint or {}).get("findings") or []:
        findings.setdefault(finding["revision"], []).append(finding)
    rehearsed = {r["revision"]: r for r in (inputs.rehearsal or {}).get("revisions") or []}
    order = list(dict.fromkeys([*(inputs.lint or {}).get("checked", []), *rehearsed]))
    rows = []
    for revision in order:
        rehearsal = rehearsed.get(revision, {})
        own = findings.get(revision, [])
        blocking = [f for f in own if not f.get("allowed") and not f.get("baselined")]
        rows.append(
            {
                "revision": revision,
                "message": rehearsal.get("message", ""),
                "findings": own,
                "blocking": blocking,
                "rehearsal": rehearsal,
                "ok": not [f for f in blocking if not f.get("warning")]
                and rehearsal.get("status") not in ("failed", "over limit"),
            }
        )
    return rows


def render(inputs: Inputs, run_url: str | None = None) -> str:
    """The comment's body, truncated with a note when it would pass GitHub's limit."""
    from safe_migrations.pipeline.report import jinja_environment

    body = (
        jinja_environment(False)
        .get_template("pr_comment.md.j2")
        .render(inputs=inputs, rows=revisions(inputs), marker=MARKER, run_url=run_url)
    )
    if len(body) <= LIMIT:
        return body
    kept = LIMIT - 1000  # room for the note, whatever its numbers
    return body[:kept] + (
        f"\n\n… truncated: {len(body) - kept:,} more characters; the full reports are in "
        "the workflow run's artifacts.\n"
    )
