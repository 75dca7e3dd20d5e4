"""The interface every backup store implements, and what every store's backups share.

A store keeps one environment's backups: it saves a dump the engine makes (written as
a stream, verified before it counts), lists the environment's own manifests, deletes a
backup with its manifest, finds one by ``latest`` or by name, and hands a restore a
local, readable copy. Retention, "own backups only" and the manifest's contents are
written once, above the stores (``pipeline/backup.py``) or here; each store module
(``local.py``, ``s3.py``) holds only where the bytes go.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from safe_migrations.core.config import Environment
    from safe_migrations.core.results import StepResult
    from safe_migrations.engines.base import Engine
    from safe_migrations.stores.backupfiles import BackupInfo, Progress


class BackupStore:
    """One environment's backups in one place; one instance per run."""

    kind: ClassVar[str] = "base"
    # What a failed prune raises: the new backup is good, so it is a warning.
    prune_errors: ClassVar[tuple[type[BaseException], ...]] = (OSError,)

    def __init__(self, env: Environment) -> None:
        self.env = env

    @property
    def where(self) -> str:
        """Where the backups are, for messages."""
        raise NotImplementedError

    def save(
        self,
        engine: Engine,
        revision: str | None,
        progress: Progress,
        created: datetime,
        snapshot: str | None = None,
    ) -> BackupInfo:
        """The engine's dump stored, verified and described by its manifest; with
        ``snapshot``, of the rows that exported snapshot sees (where the store takes one)."""
        raise NotImplementedError

    def manifests(self) -> list[dict[str, Any]]:
        """The environment's own backups' manifests, newest first; each with ``path``
        (by location, never the manifest's claim) and ``manifest``."""
        raise NotImplementedError

    def record_proof(self, backup: dict[str, Any], proof: dict[str, Any]) -> None:
        """Add a restore's proof to the manifest of ``backup`` (as ``find`` returns it)."""
        raise NotImplementedError

    # Whether manifests() reaches over the network (an offline reader uses copies()).
    remote: ClassVar[bool] = False

    def copies(self) -> list[dict[str, Any]]:
        """The manifests on this machine's disk, read without contacting anything."""
        return self.manifests()

    def delete(self, backup: dict[str, Any]) -> None:
        """A backup and its manifest (one that ``manifests`` listed)."""
        raise NotImplementedError

    def find(self, spec: str, foreign: bool = False) -> dict[str, Any]:
        """``latest`` or a name/path -> its manifest, with ``own`` and ``foreign_reason``."""
        raise NotImplementedError

    def local_copy(self, backup: dict[str, Any]) -> AbstractContextManager[dict[str, Any]]:
        """The backup as a local file for a restore (itself, or a download removed after)."""
        raise NotImplementedError

    def health(self, db_size: int | None, backing_up: bool) -> list[StepResult]:
        """What health checks before the backup step relies on the store."""
        raise NotImplementedError


def foreign_reason(env: Environment, archive: Path, manifest: dict[str, Any]) -> str | None:
    """Why a backup is not this environment's own, or None when it is: a name this tool
    gives, in the environment's folder, whose manifest names this environment and the
    same engine, host, port and database."""
    from safe_migrations.engines import engine_for
    from safe_migrations.stores.backupfiles import is_own_backup

    if not is_own_backup(env, archive):
        return f"it is not a backup this tool made in {env.backup_dir}"
    if not manifest.get("manifest"):
        return "it has no readable manifest"
    if manifest.get("environment") != env.name:
        return f"its manifest names the environment {manifest.get('environment')!r}"
    target = manifest.get("target")
    if not isinstance(target, dict):
        return "its manifest names no database (taken by an older version)"
    if target != engine_for(env.dialect).identity(env):
        where = ", ".join(f"{k} {v}" for k, v in target.items() if k != "engine")
        return f"it was taken of another database ({where})"
    return None
