"""Drift: how the database differs from the project's models, as `alembic check` sees it.

The compare uses what the project's env.py passes to ``context.configure``
(``include_object``, ``include_name``, ``include_schemas``, ``compare_type``,
``compare_server_default``), Alembic's defaults where it passes none; the tool's own
tables are always left out. Differences a team lives with are accepted in a baseline
(``drift-baseline.yml`` beside the revisions, written by ``invoke check --accept-drift``):
they are listed, never failed on; an entry that no longer matches is stale.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safe_migrations.core.errors import ConfigError

BASELINE_FILE = "drift-baseline.yml"
HEADER = """\
# Differences between the models and the database that this project lives with: written
# by `invoke check --accept-drift`. Validation and `invoke check` list them as accepted
# and fail only on differences that are not here. Fill in each reason.
"""


@dataclass(frozen=True)
class Drift:
    """The differences, split by the baseline."""

    new: list[str] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)  # baseline entries that match nothing

    @property
    def found(self) -> list[str]:
        return self.new + self.accepted


def differences(connection: Any, metadata: Any, options: dict[str, Any] | None = None) -> list[str]:
    """Alembic's compare with the project's options: one readable line per difference."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from safe_migrations.operations.proof import TOOL_TABLES

    options = dict(options or {})
    theirs = options.pop("include_object", None)

    def include_object(obj: Any, name: str | None, kind: str, reflected: bool, other: Any) -> bool:
        if kind == "table" and reflected and name in TOOL_TABLES:
            return False  # ours, never a model's
        return theirs is None or bool(theirs(obj, name, kind, reflected, other))

    context = MigrationContext.configure(
        connection,
        opts={"target_metadata": metadata, "include_object": include_object, **options},
    )
    return [describe(diff) for diff in compare_metadata(context, metadata)]


def describe(diff: Any) -> str:
    """'add_column users.nickname' style text for one autogenerate difference."""
    if isinstance(diff, list):  # modify_* diffs come grouped per column
        return "; ".join(describe(d) for d in diff)
    kind = diff[0]
    if kind in ("add_table", "remove_table"):
        return f"{kind} {diff[1].name}"
    if kind in ("add_column", "remove_column"):
        return f"{kind} {diff[2]}.{diff[3].name}"
    if kind in ("add_index", "remove_index", "add_constraint", "remove_constraint"):
        obj = diff[1]
        table = getattr(getattr(obj, "table", None), "name", "?")
        return f"{kind} {table}.{obj.name}"
    if kind.startswith("modify_"):
        return f"{kind} {diff[2]}.{diff[3]}: {diff[-2]!r} -> {diff[-1]!r}"
    if kind in ("add_fk", "remove_fk"):
        return f"{kind} {diff[1].parent.name}.{diff[1].name}"
    return str(diff)


def against_baseline(found: list[str], folder: Path) -> Drift:
    accepted = {entry["difference"] for entry in load_baseline(folder)}
    return Drift(
        new=[d for d in found if d not in accepted],
        accepted=[d for d in found if d in accepted],
        stale=sorted(accepted - set(found)),
    )


def baseline_path(folder: Path) -> Path:
    return folder / BASELINE_FILE


def load_baseline(folder: Path) -> list[dict[str, Any]]:
    """The accepted differences; no file is none. A damaged file is one sentence."""
    import yaml

    from safe_migrations.core.config import read_yaml

    path = baseline_path(folder)
    if not path.is_file():
        return []
    fix = "fix it by hand, or delete it and run `invoke check --accept-drift` again."
    try:
        data = read_yaml(path)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path} cannot be read ({type(exc).__name__}); {fix}") from None
    entries = (data or {}).get("accepted") if isinstance(data, dict) else None
    if entries is None:
        return []
    if not isinstance(entries, list) or not all(
        isinstance(e, dict) and isinstance(e.get("difference"), str) for e in entries
    ):
        raise ConfigError(f"{path}: 'accepted' must be a list of {{difference: ...}}; {fix}")
    return entries


def write_baseline(folder: Path, found: list[str], revision: str | None) -> tuple[Path, int]:
    """Accept every difference found now, keeping the reasons already written."""
    import yaml

    from safe_migrations.core.files import write_atomic

    old = {e["difference"]: e for e in load_baseline(folder)}
    entries = [
        {
            "difference": difference,
            "accepted_at": old.get(difference, {}).get("accepted_at", revision or "base"),
            "reason": old.get(difference, {}).get("reason", ""),
        }
        for difference in found
    ]
    path = baseline_path(folder)
    text = HEADER + yaml.safe_dump({"accepted": entries}, sort_keys=False, allow_unicode=True)
    write_atomic(path, text, mode=0o644)  # a file of the project's, committed with it
    return path, len(entries)
