"""Backups in the environment's backup folder (``backup.storage.type: local``, the
default): files 0600 in a private folder, each beside its manifest; only names this
tool gives, in that folder and no symlink, are listed, pruned or restored."""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safe_migrations.core.errors import BackupError, ConfigError
from safe_migrations.core.leftovers import claimed, remove_path
from safe_migrations.core.results import StepResult, timed
from safe_migrations.stores.backupfiles import (
    MANIFEST_SUFFIX,
    BackupInfo,
    Progress,
    archive_of,
    backup_name,
    is_own_backup,
    prepare_folder,
    restrict,
    sha256_of,
    size_of,
    write_manifest,
)
from safe_migrations.stores.base import BackupStore, foreign_reason

if TYPE_CHECKING:
    from safe_migrations.core.config import Environment
    from safe_migrations.engines.base import Engine

MB = 1024 * 1024


class LocalStore(BackupStore):
    kind = "local"

    @property
    def where(self) -> str:
        return str(self.env.backup_dir)

    def save(
        self,
        engine: Engine,
        revision: str | None,
        progress: Progress,
        created: datetime,
        snapshot: str | None = None,
    ) -> BackupInfo:
        """The engine dumps into a new file (or folder) there, reads it back; then the
        checksum (hashed on the way for a stream) and the manifest beside it."""
        env = self.env
        folder = env.backup_dir
        prepare_folder(folder)
        encrypted = env.settings.backup.encrypt_to is not None
        target = folder / (
            backup_name(env, revision, created, engine.backup_suffix(env))
            + (".age" if encrypted else "")
        )
        started = time.perf_counter()
        try:
            with claimed(target):  # a SIGKILL leaves it to the next run's sweep
                stored, tables, verify_started = engine.dump(
                    env, target, encrypted, progress, snapshot
                )
                restrict(target)
                digest = stored.sha256 if stored else sha256_of(target)
        except OSError as exc:
            remove_path(target)
            raise BackupError(
                f"Writing the backup {target} failed: {exc.strerror or exc}; "
                "check free space and permissions in the backup folder."
            ) from None
        except BackupError:
            remove_path(target)
            raise
        finished = time.perf_counter()
        info = BackupInfo(
            path=str(target),
            manifest=str(target) + MANIFEST_SUFFIX,
            environment=env.name,
            format=engine.backup_format(env),
            revision=revision,
            size=size_of(target),
            sha256=digest,
            created_at=created.isoformat(),
            duration=round(finished - started, 4),
            verify_seconds=round(finished - verify_started, 4),
            tables=tables,
            target=engine.identity(env),
            encrypted_to=env.settings.backup.encrypt_to,
        )
        write_manifest(info, env.masked_url)
        return info

    def manifests(self) -> list[dict[str, Any]]:
        return list_backups(self.env)

    def record_proof(self, backup: dict[str, Any], proof: dict[str, Any]) -> None:
        from safe_migrations.core.files import write_atomic

        manifest = Path(backup["manifest"])
        data = json.loads(manifest.read_text(encoding="utf-8")) | {"proof": proof}
        write_atomic(manifest, json.dumps(data, indent=2))

    def delete(self, backup: dict[str, Any]) -> None:
        remove_path(Path(backup["path"]))
        Path(backup["manifest"]).unlink(missing_ok=True)

    def find(self, spec: str, foreign: bool = False) -> dict[str, Any]:
        """``latest`` or a path (archive or manifest) -> its manifest, with ``path`` (the
        archive, by location), ``own`` and, for another's backup, ``foreign_reason``."""
        env = self.env
        if spec == "latest":  # the newest of this database's own, not merely the newest file
            backups = list_backups(env)
            own = [b for b in backups if foreign_reason(env, Path(b["path"]), b) is None]
            if not own:
                others = (
                    f" (the newest there, {Path(backups[0]['path']).name}: "
                    f"{foreign_reason(env, Path(backups[0]['path']), backups[0])})"
                    if backups
                    else ""
                )
                raise ConfigError(
                    f"There is no backup for {env.name}'s database in {env.backup_dir}{others}; "
                    "take one with `invoke backup`, or pass a file with --foreign."
                )
            data = dict(own[0])
            archive = Path(data["path"])
        else:
            given = Path(spec).absolute()
            archive = archive_of(given) if given.name.endswith(MANIFEST_SUFFIX) else given
            if not archive.exists():
                raise ConfigError(
                    f"No backup at {spec}; pass a path that `invoke backup` printed, or 'latest'."
                )
            manifest = Path(str(archive) + MANIFEST_SUFFIX)
            data = read_manifest(manifest) or {}
            data["manifest"] = str(manifest) if manifest.is_file() else None
            data["path"] = str(archive)  # by location, never the manifest's own claim
        reason = foreign_reason(env, archive, data)
        data["own"], data["foreign_reason"] = reason is None, reason
        if reason and not foreign:
            raise ConfigError(
                f"{archive} is not one of {env.name}'s own backups ({reason}); restore runs "
                "only the environment's own backups. To restore it anyway pass --foreign (on a "
                "terminal you will be shown what it holds and asked to type the environment's "
                "name)."
            )
        return data

    @contextlib.contextmanager
    def local_copy(self, backup: dict[str, Any]) -> Iterator[dict[str, Any]]:
        yield backup

    def health(self, db_size: int | None, backing_up: bool) -> list[StepResult]:
        return [check_disk(self.env, db_size)]


def list_backups(env: Environment) -> list[dict[str, Any]]:
    """Manifests of this environment's backups in its folder, newest first."""
    found = []
    folder = env.backup_dir
    if not folder.is_dir():
        return []
    for manifest in folder.glob(f"{env.name}-*{MANIFEST_SUFFIX}"):
        archive = archive_of(manifest)
        if manifest.is_symlink() or not is_own_backup(env, archive):
            continue
        data = read_manifest(manifest)
        if data is not None and data.get("environment") == env.name:
            data["manifest"], data["path"] = str(manifest), str(archive)
            found.append(data)
    return sorted(found, key=lambda d: str(d.get("created_at")), reverse=True)


def read_manifest(manifest: Path) -> dict[str, Any] | None:
    """A manifest's data; None for a symlink, a missing file or one that is not JSON."""
    if manifest.is_symlink() or not manifest.is_file():
        return None
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def check_disk(env: Environment, db_size: int | None) -> StepResult:
    """Free space where backups go, against the configured minimum and the database size."""
    with timed() as clock:
        folder = env.backup_dir
        existing = folder
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        free = shutil.disk_usage(existing).free
        need = max(env.settings.health.min_free_disk_mb * MB, db_size or 0)
    ok = free >= need
    message = f"{free / MB:,.0f} MB free in {folder}, need {need / MB:,.0f} MB" + (
        "" if ok else " (a backup may not fit)"
    )
    return StepResult(
        "disk",
        ok,
        message,
        severity="warning",
        duration=clock.seconds,
        details={"free_bytes": free, "needed_bytes": need, "database_bytes": db_size},
    )
