"""The lint baseline: an existing history's findings, accepted once, so that only new
ones fail (``invoke lint --baseline`` writes it; every lint reads it).

``lint-baseline.yml`` lives in the migrations folder beside the revisions it speaks
of. Each entry names the revision, its file's sha256, the rule and a fingerprint of
the statement; a finding is accepted only while all four still match, so editing a
baselined revision makes its findings new again. Old revision files are never edited.

An entry whose rule and fingerprint are ``*`` accepts every finding of its revision
while the file is unchanged: ``safe-migrations init`` writes one for each revision a
project had when it adopted the tool ("shipped before adoption"), so neither lint nor
the zero-downtime refusals hold a team to rules its shipped history never followed
(strong_migrations' ``start_after``).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from safe_migrations.core.errors import ConfigError

if TYPE_CHECKING:
    from safe_migrations.project.alembic_api import Project


class LintFinding(Protocol):
    """What the baseline needs of a lint finding (lint.Finding; lint imports this module,
    so it is described here, not imported)."""

    @property
    def revision(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def rule(self) -> str: ...
    @property
    def statement(self) -> str: ...
    @property
    def fingerprint(self) -> str: ...
    @property
    def allowed(self) -> bool: ...


BASELINE_FILE = "lint-baseline.yml"
WHOLE = "*"  # an entry's rule and fingerprint: every finding of the revision
HEADER = """\
# Findings of `invoke lint` accepted as history: written by `invoke lint --baseline`.
# Lint lists these as accepted and fails only on findings that are not here. An entry
# holds while its revision file is unchanged (file_sha256); edit the file and its
# findings are new again. Fill in each reason: why the team accepted it.
"""


def fingerprint(statement: str) -> str:
    """The statement's identity, whatever its whitespace and letter case."""
    normal = re.sub(r"\s+", " ", statement).strip().lower()
    return hashlib.sha256(normal.encode("utf-8")).hexdigest()[:16]


def file_sha256(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return ""


@dataclass(frozen=True)
class Accepted:
    revision: str
    file: str
    file_sha256: str
    rule: str
    fingerprint: str
    statement: str
    reason: str = ""


@dataclass(frozen=True)
class Baseline:
    path: Path | None = None
    entries: tuple[Accepted, ...] = ()

    def find(self, revision: str, file: Path, rule: str, mark: str | None) -> Accepted | None:
        """The entry that accepts this finding, if the revision file is still the same
        (``mark`` None: any statement of the revision breaking that rule, as the refusals
        judge operations, not statements)."""
        candidates = [
            e
            for e in self.entries
            if e.revision == revision
            and (e.rule == WHOLE or (e.rule == rule and (mark is None or e.fingerprint == mark)))
        ]
        if not candidates:
            return None
        digest = file_sha256(file)
        return next((e for e in candidates if e.file_sha256 == digest), None)


def baseline_path(project: Project) -> Path:
    return Path(project.scripts().dir) / BASELINE_FILE


def load_baseline(project: Project) -> Baseline:
    """The project's baseline; none is an empty one. A damaged file is one sentence."""
    import yaml

    from safe_migrations.core.config import read_yaml

    path = baseline_path(project)
    if not path.is_file():
        return Baseline(path)
    try:
        data = read_yaml(path)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path} cannot be read ({type(exc).__name__}); {_FIX}") from None
    entries = data.get("accepted") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ConfigError(f"{path} has no list under 'accepted'; {_FIX}")
    fields = set(Accepted.__dataclass_fields__)
    accepted = []
    for number, entry in enumerate(entries, 1):
        wanted = fields - {"reason", "statement"}
        if not isinstance(entry, dict) or not wanted <= set(entry) or set(entry) - fields:
            raise ConfigError(
                f"{path}: entry {number} must have {', '.join(sorted(wanted))} "
                f"(and may have reason, statement); {_FIX}"
            )
        accepted.append(Accepted(**{k: "" if v is None else str(v) for k, v in entry.items()}))
    return Baseline(path, tuple(accepted))


_FIX = "fix it, or write it anew with `invoke lint --baseline`"


HISTORY_HEADER = """\
# The history this project had when it adopted safe-migrations (`safe-migrations init`):
# each revision below is accepted whole (rule '*') by lint and by the zero-downtime
# refusals while its file is unchanged (file_sha256); edit one and it is judged again.
# `invoke lint --baseline` keeps these entries and adds squawk's findings one by one.
"""


def history_baseline(project: Project, root: Path, reason: str) -> str:
    """The baseline text that accepts every revision the project has now, each while its
    file is unchanged (``init``: the history shipped before adoption)."""
    import yaml

    entries = []
    for script in reversed(list(project.scripts().walk_revisions())):
        file = Path(script.path)
        entry = Accepted(
            revision=script.revision,
            file=os.path.relpath(file, root),
            file_sha256=file_sha256(file),
            rule=WHOLE,
            fingerprint=WHOLE,
            statement="",
            reason=reason,
        )
        entries.append(asdict(entry))
    return HISTORY_HEADER + yaml.safe_dump(
        {"version": 1, "accepted": entries}, sort_keys=False, allow_unicode=True, width=100
    )


def write_baseline(
    project: Project, findings: Iterable[LintFinding], root: Path
) -> tuple[Path, int]:
    """Accept every finding that no marker allows, keeping the reasons already written
    for the same revision, rule and statement. Returns (file, entries)."""
    import yaml

    path = baseline_path(project)
    old = load_baseline(project) if path.is_file() else Baseline(path)
    reasons = {(e.revision, e.rule, e.fingerprint): e.reason for e in old.entries}
    entries = [asdict(e) for e in old.entries if e.rule == WHOLE]  # init's: kept
    for finding in findings:
        if finding.allowed:
            continue
        file = Path(finding.path) if Path(finding.path).is_absolute() else root / finding.path
        key = (finding.revision, finding.rule, finding.fingerprint)
        entry = Accepted(
            revision=finding.revision,
            file=finding.path,
            file_sha256=file_sha256(file),
            rule=finding.rule,
            fingerprint=finding.fingerprint,
            statement=finding.statement,
            reason=reasons.get(key, ""),
        )
        entries.append(asdict(entry))
    text = HEADER + yaml.safe_dump(
        {"version": 1, "accepted": entries}, sort_keys=False, allow_unicode=True, width=100
    )
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    temporary.replace(path)
    return path, len(entries)
