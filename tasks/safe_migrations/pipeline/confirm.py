"""The confirm step: show what will happen and ask; never wait on a missing terminal."""

from __future__ import annotations

import sys
from collections.abc import Callable

from safe_migrations.core.config import Environment
from safe_migrations.core.errors import BlockedError
from safe_migrations.core.escaping import terminal
from safe_migrations.project.alembic_api import Revision


def is_interactive() -> bool:
    return sys.stdin is not None and sys.stdin.isatty()


def said_yes(answer: str) -> bool:
    return answer.strip().lower() in {"y", "yes"}


def needs_confirmation(env: Environment, yes: bool) -> bool:
    return not yes and env.settings.policy.confirm != "never"


def refuse_without_terminal(env: Environment, yes: bool, interactive: bool) -> None:
    """Called before any step does work: no terminal and no --yes is a refusal."""
    if needs_confirmation(env, yes) and not interactive:
        raise BlockedError(
            f"The {env.name} environment asks for confirmation and there is no terminal "
            "to ask on; pass --yes to run unattended."
        )


def summary(
    env: Environment, operation: str, current: str | None, target: str | None, path: list[Revision]
) -> str:
    lines = [
        f"environment: {env.name}",
        f"database:    {env.masked_url}",
        f"operation:   {operation} {current or 'base'} -> {target or 'base'}",
        f"revisions ({len(path)}):",
    ]
    lines += [f"  {r.revision}  {r.message}" for r in path]
    return "\n".join(lines)


def confirm(
    env: Environment,
    text: str,
    ask: Callable[[str], str] = input,
    say: Callable[[str], None] = print,
    typed: bool = False,
) -> None:
    """Ask; production (or ``typed``) wants its name typed. Anything else is a refusal.

    The summary holds revision messages: control characters are stripped so that none
    can repaint the terminal or hide what is being confirmed.
    """
    say(terminal(text))
    if typed or env.settings.policy.confirm == "typed":
        answer = ask(f"Type the environment name ({env.name}) to continue: ")
        if answer.strip() != env.name:
            raise BlockedError(f"Cancelled: the typed name did not match '{env.name}'.")
        return
    if not said_yes(ask("Continue? [y/N] ")):
        raise BlockedError("Cancelled by the user; nothing was changed.")
