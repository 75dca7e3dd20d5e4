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


@dataclass(frozen=True)
class Before:
    """The differences from the models before a run, so validation can name those the run
    introduced. On a database without tables they are not made before the run (they are
    the models' every table, missing) but only if validation finds a difference."""

    found: list[str] = field(default_factory=list)
    empty: bool = False

    def resolve(self, connection: Any, metadata: Any, options: dict[str, Any]) -> list[str]:
        if self.empty:
            return differences(connection, metadata, options, as_if_empty=True)
        return self.found


def differences(
    connection: Any,
    metadata: Any,
    options: dict[str, Any] | None = None,
    as_if_empty: bool = False,
) -> list[str]:
    """Alembic's compare with the project's options: one readable line per difference.

    ``as_if_empty``: every table of the database hidden from the compare (Alembic's own
    ``include_name`` hook), which is what the compare finds on a database with no table."""
    from safe_migrations.operations.proof import TOOL_TABLES

    options = dict(options or {})
    theirs = options.pop("include_object", None)
    their_names = options.pop("include_name", None)

    def include_object(obj: Any, name: str | None, kind: str, reflected: bool, other: Any) -> bool:
        if kind == "table" and reflected and name in TOOL_TABLES:
            return False  # ours, never a model's
        return theirs is None or bool(theirs(obj, name, kind, reflected, other))

    def include_name(name: str | None, kind: str, parent: dict[str, Any]) -> bool:
        if as_if_empty and kind == "table":
            return False
        return their_names is None or bool(their_names(name, kind, parent))

    return [
        describe(d) for d in _compare(connection, metadata, options, include_object, include_name)
    ]


def has_tables(connection: Any, options: dict[str, Any] | None = None) -> bool:
    """Whether the compare would look at any table of the database: the schemas and
    names Alembic's compare lists (``include_schemas``, the project's ``include_name``),
    the version table and the tool's own left out, none reflected. Where it would not,
    the compare before a run equals ``differences(..., as_if_empty=True)`` made at any
    later time (comparator plugins that read more than tables aside), so it need not be
    made unless something differs after the run."""
    from sqlalchemy import inspect

    from safe_migrations.operations.proof import TOOL_TABLES

    options = options or {}
    names = options.get("include_name")
    inspector = inspect(connection)
    schemas: set[str | None] = {None}
    if options.get("include_schemas"):
        default = connection.dialect.default_schema_name
        schemas |= set(inspector.get_schema_names()) - {"information_schema", default}
    for schema in schemas:
        if names is not None and not names(schema, "schema", {}):
            continue
        for table in inspector.get_table_names(schema=schema):
            if table in TOOL_TABLES or (schema is None and table == "alembic_version"):
                continue
            if names is None or names(table, "table", {"schema_name": schema}):
                return True
    return False


def _compare(
    connection: Any, metadata: Any, options: dict[str, Any], include_object: Any, include_name: Any
) -> list[Any]:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from safe_migrations.engines import engine_for

    context = MigrationContext.configure(
        connection,
        opts={
            "target_metadata": metadata,
            "include_object": include_object,
            "include_name": include_name,
            **options,
        },
    )
    engine_for(connection.dialect.name).tune_compare(context)
    return list(compare_metadata(context, metadata))


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
        return f"{kind} {diff[2]}.{diff[3]}: {_shown(diff[-2])} -> {_shown(diff[-1])}"
    if kind in ("add_fk", "remove_fk"):
        return f"{kind} {diff[1].parent.name}.{diff[1].name}"
    return str(diff)


def _shown(value: Any) -> str:
    """A compared value as the same text in every run: a server default by its SQL (its
    repr names the object's address), anything else by its repr."""
    arg = getattr(value, "arg", None)
    if arg is not None:
        return repr(str(getattr(arg, "text", arg)))
    return repr(value)


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
