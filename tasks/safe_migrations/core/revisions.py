"""What a user may type where a revision is taken: whatever Alembic accepts.

An id or a unique prefix, ``head``/``base``, a branch label (``label@head``), and
relative steps: ``-2``/``+1`` from the database's current revision, ``head-1``,
``ae10+2``. Each resolves to one revision id (None is base) before anything runs,
so the confirmation shows, and the run moves to, exactly that revision.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from safe_migrations.core.errors import ConfigError

if TYPE_CHECKING:
    from alembic.script import ScriptDirectory

# [label@][anchor](+|-)N, as Alembic writes relative revisions.
_RELATIVE = re.compile(r"^(?:(?P<label>[^@\s]+)@)?(?P<anchor>[^@+\-\s]*)(?P<step>[+-]\d+)$")

CurrentReader = Callable[[], str | None]


def is_relative_to_current(spec: str) -> bool:
    """``-2`` or ``+1``: resolving it needs the database's current revision."""
    found = _RELATIVE.match(spec.strip())
    return bool(found and not found.group("anchor") and not found.group("label"))


def resolve_revision(
    scripts: ScriptDirectory, target: str, current: str | None | CurrentReader = None
) -> str | None:
    """A revision as typed to one id; None means base. ``current`` (a value, or a
    function that reads it) is used only by steps relative to the current revision."""
    spec = target.strip()
    if spec == "base":
        return None
    relative = _RELATIVE.match(spec)
    if relative is None:
        return _absolute(scripts, spec)
    label, anchor, step = relative.group("label"), relative.group("anchor"), relative.group("step")
    if label or anchor:
        start = _absolute(scripts, f"{label}@{anchor or 'head'}" if label else anchor)
    else:
        start = current() if callable(current) else current
    found = _walk(scripts, start, int(step), spec)
    if found is None:
        raise ConfigError(
            f"Revision '{target}' goes down to base, which drops every table; "
            "a downgrade to base is only ever typed out: --revision base."
        )
    return found


def _absolute(scripts: ScriptDirectory, spec: str) -> str | None:
    from alembic.script.revision import MultipleHeads
    from alembic.util import CommandError

    if spec == "base":
        return None
    try:
        if spec in ("head", "heads"):
            found = scripts.get_current_head()
            if found is None:
                raise ConfigError("There are no revisions yet; create one with `invoke generate`.")
            return found
        script = scripts.get_revision(spec)
    except CommandError as exc:
        if isinstance(exc.__cause__, MultipleHeads):  # Alembic chains the typed cause
            raise ConfigError(
                f"The scripts have several heads ({', '.join(scripts.get_heads())}); "
                "merge them with `alembic merge heads` first."
            ) from None
        starting = sorted(
            s.revision for s in scripts.walk_revisions() if s.revision.startswith(spec)
        )
        if len(starting) > 1:
            raise ConfigError(
                f"Revision '{spec}' is ambiguous ({', '.join(starting[:5])} start with it); "
                "give more of its id."
            ) from None
        raise ConfigError(unknown(scripts, spec)) from None
    if script is None:
        return None
    if isinstance(script, tuple):
        raise ConfigError(f"Revision '{spec}' is ambiguous; give more of its id.")
    return script.revision


def _walk(scripts: ScriptDirectory, start: str | None, step: int, spec: str) -> str | None:
    """``step`` revisions up (+) or down (-) from ``start``; a branch or merge point on the
    way is ambiguous, as it is for Alembic."""
    at = start
    for done in range(abs(step)):
        if step < 0:
            if at is None:
                raise ConfigError(
                    f"Revision '{spec}' is {abs(step)} step(s) down, but only {done} "
                    "revision(s) lie below; `invoke status` shows the history."
                )
            down = scripts.get_revision(at).down_revision
            if isinstance(down, tuple | list):
                raise ConfigError(
                    f"Revision '{spec}' passes {at}, which merges {', '.join(down)}; "
                    "name the revision to go to instead."
                )
            at = down
        else:
            above = (
                list(scripts.get_bases())
                if at is None
                else sorted(scripts.get_revision(at).nextrev)
            )
            if len(above) != 1:
                raise ConfigError(
                    f"Revision '{spec}' is {step} step(s) up, but "
                    + (
                        f"only {done} revision(s) lie above"
                        if not above
                        else f"{at or 'base'} branches into {', '.join(above)}"
                    )
                    + "; `invoke status` shows the history."
                )
            at = above[0]
    return at


def unknown(scripts: ScriptDirectory, spec: str) -> str:
    """The sentence for a revision that does not exist, naming the nearest ones."""
    ids = [s.revision for s in scripts.walk_revisions()]
    nearest = [r for r in ids if r.startswith(spec[:2])] if spec else []
    nearest = difflib.get_close_matches(spec, ids, n=5, cutoff=0.3) or nearest[:5] or ids[:5]
    return (
        f"Unknown revision '{spec}'; nearest: {', '.join(nearest) or 'none (no revisions yet)'}. "
        "`invoke status` lists every revision."
    )
