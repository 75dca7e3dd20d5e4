"""Errors the user reads: each carries one sentence and the exit code for it.

One rule for every task: the database cannot be reached, 3; it failed after
connecting, 1; the request is refused (configuration, usage, policy), 2; blocked by a
health check, the user or a missing terminal, 3; another run holds the lock, 4; every
revision applied and the database is at the target, but the schema differs from the
models (drift, which no rollback undoes), 5.
A leaf module: the step modules import it, never the reverse.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_BLOCKED = 3
EXIT_LOCKED = 4
EXIT_DRIFT = 5


class ToolError(Exception):
    """Base class: ``str(error)`` is the sentence shown to the user."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(ToolError):
    """A bad environment file, name, URL, revision or missing secret."""

    exit_code = EXIT_USAGE


class RefusedError(ToolError):
    """A request refused as it stands: policy, nothing to roll back, a target that is not
    below the current revision."""

    exit_code = EXIT_USAGE


class UnreachableError(ToolError):
    """The database cannot be reached: the same exit code as a failed health check."""

    exit_code = EXIT_BLOCKED


class UsageError(ToolError):
    """Flags that cannot be combined, or are refused by the environment's policy."""

    exit_code = EXIT_USAGE


class JournalError(ToolError):
    """``migrate --resume``: the journal cannot prove what a partly applied revision did."""

    exit_code = EXIT_BLOCKED


class BlockedError(ToolError):
    """A blocking health check failed, or the user (or a missing terminal) said no."""

    exit_code = EXIT_BLOCKED


class LockHeldError(ToolError):
    """Another migration run holds the migration lock."""

    exit_code = EXIT_LOCKED


class ValidationError(ToolError):
    """The database after migrating is not what the migration promised."""


class DriftError(ToolError):
    """The migration is complete; the schema differs from the models (not a failure of
    the migration, so the workflow's automatic rollback does not fire for it)."""

    exit_code = EXIT_DRIFT


class NothingRenderedError(ToolError):
    """No revision could be rendered offline, so a lint or dry run checked nothing."""

    @classmethod
    def first(cls, what: str, revision: str, error: str) -> NothingRenderedError:
        return cls(
            f"No {what} could be rendered offline, so nothing was checked; the first "
            f"failure, in {revision}: {error.strip().splitlines()[0] if error.strip() else error}"
        )


class BackupError(ToolError):
    """Taking, verifying or restoring a backup failed."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's text (the driver's own, when wrapped), or its type."""
    cause = getattr(exc, "orig", None) or exc
    text = str(cause).strip()
    return text.splitlines()[0] if text else type(cause).__name__
