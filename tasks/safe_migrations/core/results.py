"""Step results as data: the CLI prints them, ``--json`` dumps them, reports render them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

Severity = Literal["info", "warning", "blocking"]


def fields_copied(instance: Any) -> dict[str, Any]:
    """``dataclasses.asdict`` for records of plain values: their dicts, lists and tuples
    copied, the values in them shared (strings and numbers cannot change). asdict
    deep-copies every value: 70 ms for a report of 400 revisions."""
    return {f.name: _copied(getattr(instance, f.name)) for f in fields(instance)}


def _copied(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _copied(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_copied(item) for item in value)
    return value


@dataclass(frozen=True)
class StepResult:
    """One check or step: ``ok`` false with severity ``blocking`` stops a run."""

    name: str
    ok: bool
    message: str
    severity: Severity = "blocking"
    duration: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def blocks(self) -> bool:
        return not self.ok and self.severity == "blocking"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["duration"] = round(self.duration, 4)
        return data


class Stopwatch:
    """Measures a block: ``with timed() as clock: ...; clock.seconds``.

    ``seconds`` is the time so far inside the block and the block's time after it,
    so a result built (or returned) inside the block gets its real duration.
    """

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.end: float | None = None

    @property
    def seconds(self) -> float:
        return (self.end if self.end is not None else time.perf_counter()) - self.start


@contextmanager
def timed() -> Iterator[Stopwatch]:
    clock = Stopwatch()
    try:
        yield clock
    finally:
        clock.end = time.perf_counter()


def render_checks(results: list[StepResult], failed: list[StepResult], as_json: bool) -> str:
    """Checks for `invoke health` and `invoke check`: JSON ({ok, checks}) or one line each."""
    import json

    if as_json:
        return json.dumps({"ok": not failed, "checks": [r.to_dict() for r in results]}, indent=2)
    return format_results(results)


def format_results(results: list[StepResult]) -> str:
    """Human lines, one per result, for the terminal."""
    marks = {True: "ok  ", False: "FAIL"}
    lines = []
    for result in results:
        mark = marks[result.ok] if result.ok or result.severity == "blocking" else "warn"
        lines.append(f"[{mark}] {result.name:<18} {result.message} ({result.duration:.3f}s)")
    return "\n".join(lines)
