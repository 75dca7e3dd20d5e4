"""The README's engine table, rendered from the engines themselves: each engine's
``documented`` answers, one row per question, one column per engine. A test compares
README.md's table with this one; ``python -m safe_migrations.engines.table README.md``
rewrites the README's copy after an engine changes.
"""

from __future__ import annotations

import sys
from pathlib import Path

from safe_migrations.engines.registry import load

# (key, what the row is about); every engine documents every key.
ROWS = (
    ("tasks", "`migrate`, `downgrade`, `--dry-run`, `status`, `heads`, `generate`"),
    ("one_at_a_time", "one migration at a time"),
    ("lock_waits", "lock waits"),
    ("statement_limit", "statement limit"),
    ("failed_revision", "a failed revision"),
    ("health_basics", "health: connection, disk against the database size, version table"),
    ("health_sessions", "health: sessions that would block DDL"),
    ("backup", "backup"),
    ("restore", "restore"),
    ("validate", "validate (revision, models)"),
    ("zero_downtime", "zero-downtime operations (`safe_operations`, `online_ddl`)"),
    ("lint", "`lint`"),
    ("check", "`check`, `check --stairway`"),
    ("rehearse", "`rehearse`"),
    ("fleets", "fleets"),
)
COLUMNS = ("postgresql", "sqlite", "mysql")  # one dialect per engine, in the README's order
START = "<!-- engine-table: generated from the engines by engines/table.py -->"
END = "<!-- /engine-table -->"


def render() -> str:
    """The Markdown table; an engine that leaves a row undocumented raises KeyError."""
    engines = [load(dialect) for dialect in COLUMNS]
    header = "| task or check | " + " | ".join(e.name.replace("/", " / ") for e in engines) + " |"
    lines = [header, "| --- |" + " --- |" * len(engines)]
    for key, label in ROWS:
        lines.append(f"| {label} | " + " | ".join(e.documented[key] for e in engines) + " |")
    return "\n".join(lines)


def in_readme(text: str) -> str:
    """The table between the README's markers."""
    return text.split(START, 1)[1].split(END, 1)[0].strip()


def rewrite(readme: Path) -> None:
    text = readme.read_text(encoding="utf-8")
    before, rest = text.split(START, 1)
    after = rest.split(END, 1)[1]
    readme.write_text(f"{before}{START}\n{render()}\n{END}{after}", encoding="utf-8")


if __name__ == "__main__":
    rewrite(Path(sys.argv[1] if len(sys.argv) > 1 else "README.md"))
