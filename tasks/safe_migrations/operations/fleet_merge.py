"""The shards' fleet summaries merged into one, and every way the merge can be wrong.

A workflow downloads what each shard wrote; a shard that died before writing (exit 3
before its first member) writes nothing, a re-run can leave two, and a file can be
damaged or forged. The merge never turns any of that into a success with fewer
members: each summary is checked against ``schemas/fleet-summary-v1.schema.json``, every
shard ``I/K`` must be there exactly once, and each problem is a sentence in the merged
summary (``problems``), which then fails (exit code at least 1).
"""

from __future__ import annotations

import json
from collections import Counter
from functools import cache
from pathlib import Path
from typing import Any

from safe_migrations.core.config import Environment
from safe_migrations.core.errors import EXIT_FAILED

SCHEMA = Path(__file__).parent.parent / "schemas" / "fleet-summary-v1.schema.json"


@cache
def _validator() -> Any:
    from jsonschema import Draft202012Validator

    return Draft202012Validator(json.loads(SCHEMA.read_text(encoding="utf-8")))


def damage(data: Any) -> str | None:
    """What is wrong with a summary, in a few words, or None when it follows the schema."""
    errors = sorted(_validator().iter_errors(data), key=lambda e: list(e.absolute_path))
    if not errors:
        return None
    first = errors[0]
    where = ".".join(str(p) for p in first.absolute_path) or "(top level)"
    return f"{where}: {first.message[:120]}"


def _read(env: Environment, path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """A summary file named as this environment's upgrade summary: its data, or why not."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return None, f"{path.name} is not readable JSON ({type(exc).__name__})"
    why = damage(data)
    if why is None and (data["environment"] != env.name or data["operation"] != "upgrade"):
        why = f"it says environment {data['environment']!r}, operation {data['operation']!r}"
    if why is not None:
        return None, f"{path.name} is damaged ({why})"
    return data, None


def _shard(data: dict[str, Any]) -> tuple[int, int]:
    index, total = str(data["shard"]).split("/")
    return int(index), int(total)


def merge_summaries(env: Environment, folder: Path) -> dict[str, Any] | None:
    """One summary from the shards' under ``folder`` (as a workflow downloads them):
    every member once, the worst exit code, and ``problems`` naming each missing,
    duplicated or damaged shard summary. None when there is no summary at all."""
    problems: list[str] = []
    found: list[tuple[float, Path, dict[str, Any]]] = []
    for path in sorted(folder.rglob(f"{env.name}-fleet-upgrade*.json")):
        data, problem = _read(env, path)
        if problem is not None:
            problems.append(problem + "; that shard's outcome is unknown")
        elif data is not None:
            found.append((path.stat().st_mtime, path, data))
    found.sort(key=lambda item: item[0], reverse=True)  # newest first
    sharded = [item for item in found if item[2]["shard"]]
    if sharded:
        totals = sorted({_shard(data)[1] for _m, _p, data in sharded})
        total = _shard(sharded[0][2])[1]
        if len(totals) > 1:
            splits = ", ".join(f"K={k}" for k in totals)
            problems.append(
                f"the summaries come from different splits ({splits}); "
                "pass --input a folder holding one run's shards"
            )
        parts = []
        for index in range(1, total + 1):
            mine = [item for item in sharded if _shard(item[2]) == (index, total)]
            if not mine:
                problems.append(
                    f"shard {index}/{total} wrote no summary: it stopped before its first "
                    "member finished or its reports were not downloaded (see its log); its "
                    "members' outcome is unknown"
                )
            elif len(mine) > 1:
                names = ", ".join(p.name for _m, p, _d in mine)
                problems.append(
                    f"shard {index}/{total} has {len(mine)} summaries ({names}); pass --input "
                    "a folder holding one run's shards"
                )
            if mine:
                parts.append(mine[0][2])
        shards = [f"{i}/{total}" for i in range(1, total + 1)]
    else:
        parts = [found[0][2]] if found else []
        shards = ["all"] if found else []
    if not parts and not problems:
        return None
    return _merged(env, parts, shards, problems)


def _merged(
    env: Environment, parts: list[dict[str, Any]], shards: list[str], problems: list[str]
) -> dict[str, Any]:
    from safe_migrations.operations.fleet import worst

    parts = sorted(parts, key=lambda p: p["started_at"])  # as the shards ran
    members = sorted((m for part in parts for m in part["members"]), key=lambda m: m["member"])
    codes = [int(p["exit_code"]) for p in parts] + ([EXIT_FAILED] if problems else [])
    first = parts[0] if parts else {}
    return {
        "environment": env.name,
        "operation": "upgrade",
        "jobs": first.get("jobs", 1),
        "keep_going": first.get("keep_going", False),
        "schema_version": first.get("schema_version", 1),
        "shard": None,
        "shards": shards,
        "started_at": min((p["started_at"] for p in parts), default=None),
        "finished_at": max((str(p["finished_at"]) for p in parts), default=None),
        "duration": max((p["duration"] for p in parts), default=0),
        "exit_code": worst(codes),
        "interrupted": any(p["interrupted"] for p in parts),
        "members": members,
        "counts": dict(Counter(member["outcome"] for member in members)),
        "problems": problems,
    }
