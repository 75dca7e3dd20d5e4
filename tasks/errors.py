"""Errors the user reads: each carries one sentence and the exit code for it."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tasks.upgrade import AppliedRevision

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_BLOCKED = 3
EXIT_LOCKED = 4


class ToolError(Exception):
    """Base class: ``str(error)`` is the sentence shown to the user."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(ToolError):
    """A bad environment file, name, URL, revision or missing secret."""

    exit_code = EXIT_USAGE


class UsageError(ToolError):
    """Flags that cannot be combined, or are refused by the environment's policy."""

    exit_code = EXIT_USAGE


class BlockedError(ToolError):
    """A blocking health check failed, or the user (or a missing terminal) said no."""

    exit_code = EXIT_BLOCKED


class LockHeldError(ToolError):
    """Another migration run holds the migration lock."""

    exit_code = EXIT_LOCKED


class MigrationError(ToolError):
    """A revision failed; the database is at the last revision that completed."""

    def __init__(
        self, message: str, revision: str | None = None, applied: tuple[AppliedRevision, ...] = ()
    ) -> None:
        super().__init__(message)
        self.revision = revision
        self.applied = applied


class ValidationError(ToolError):
    """The database after migrating is not what the migration promised."""


class BackupError(ToolError):
    """Taking, verifying or restoring a backup failed."""
