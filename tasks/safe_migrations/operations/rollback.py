"""What `invoke rollback` may undo, decided from the environment's newest run alone.

Pure: it reads a report and returns a plan or a refusal. The plan's ``expect``
is checked against the database under the migration lock by the pipeline, so a
database that moved since the report is never touched.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safe_migrations.core.errors import EXIT_FAILED, EXIT_OK, RefusedError
from safe_migrations.pipeline.report import BASE

# Operations whose reports are "runs" for rollback; backups and dry runs are not.
RUN_OPERATIONS = ("upgrade", "migrate", "downgrade", "rollback", "restore")
EXIT_MEANINGS = {2: "a usage or configuration error", 3: "blocked", 4: "another run held the lock"}


@dataclass(frozen=True)
class RollbackPlan:
    """Undo the newest run: move the database from ``expect`` back to ``target``."""

    report: str
    expect: str
    target: str
    direction: str  # "downgrade" undoes an upgrade, "upgrade" undoes a downgrade
    backup: dict[str, Any] | None
    nothing: str | None = None  # set when the newest run changed nothing: why


def plan_rollback(
    environment: str, newest: tuple[Path, dict[str, Any]] | None, from_backup: bool = False
) -> RollbackPlan:
    """The plan for undoing ``newest``, or a RefusedError saying why rollback refuses.

    Kept long: the refusals are checked in the order that decides which sentence the
    user sees; split, that order would be spread over several functions."""
    if newest is None:
        raise RefusedError(
            f"There is no migration report for {environment} to roll back from; "
            "rollback undoes the newest `invoke migrate` or `invoke downgrade`."
        )
    path, run = newest
    operation, code = run.get("operation"), run.get("exit_code")
    pre, post = run.get("pre_revision"), run.get("post_revision")
    explicit = f"move it explicitly with `invoke downgrade --env {environment} --revision REV`"
    if operation in ("rollback", "restore"):
        raise RefusedError(
            f"The newest run on {environment} was a {operation} ({path.name}); rollback undoes "
            f"only a migrate or downgrade and never reaches back to an older run: {explicit}."
        )
    if code not in (EXIT_OK, EXIT_FAILED):
        meaning = EXIT_MEANINGS.get(code, "an unknown outcome") if isinstance(code, int) else "?"
        raise RefusedError(
            f"The newest run on {environment} ({path.name}) exited {code} ({meaning}) and "
            "changed nothing rollback may undo; rollback acts only on a run that exited 0 or 1."
        )
    if pre is None:
        raise RefusedError(
            f"The newest run on {environment} ({path.name}) does not know the revision it "
            f"started from, and rollback never guesses one; {explicit} "
            "(`--revision base` to undo every revision)."
        )
    if post is None:
        raise RefusedError(
            f"The newest run on {environment} ({path.name}) could not read the revision it "
            f"left the database at; check `invoke status --env {environment}`, then {explicit}."
        )
    direction = "upgrade" if operation == "downgrade" else "downgrade"
    plan = RollbackPlan(path.name, post, pre, direction, run.get("backup"))
    if pre == post and not run.get("applied"):
        return RollbackPlan(
            path.name,
            post,
            pre,
            direction,
            None,
            nothing=f"The newest run on {environment} ({path.name}) changed nothing: it left "
            f"the database at {post}, where it started. There is nothing to roll back.",
        )
    if from_backup:
        if not plan.backup:
            raise RefusedError(
                f"The newest run on {environment} ({path.name}) took no backup; "
                "roll back without --restore to downgrade instead."
            )
        return plan
    if pre == BASE:
        raise RefusedError(
            f"Undoing the newest run on {environment} ({path.name}) means going back to base, "
            "which drops every table; rollback never does that. If that is what you want, "
            f"type `invoke downgrade --env {environment} --revision base`."
        )
    return plan
