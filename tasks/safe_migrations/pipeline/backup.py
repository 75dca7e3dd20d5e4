"""The backup step: the engine's dump kept by the environment's store, verified, with a
manifest (size, sha256); then the store pruned by the environment's retention, written
once here for every store: never the new backup nor one that the newest reports name.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safe_migrations.core.config import Environment
from safe_migrations.stores.backupfiles import BackupInfo, Progress, warn

if TYPE_CHECKING:
    from safe_migrations.engines.base import Engine
    from safe_migrations.stores.base import BackupStore


def take_backup(
    env: Environment,
    revision: str | None,
    progress: Progress | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> BackupInfo:
    """Back up, verify, checksum, write the manifest, prune; returns what was made."""
    from safe_migrations.engines import engine_for
    from safe_migrations.stores import store_for

    store = store_for(env)
    created = now()
    engine = engine_for(env.dialect)
    if env.settings.backup.prove == "restore":
        info = _proven(env, store, engine, revision, progress or Progress(), created)
    else:
        info = store.save(engine, revision, progress or Progress(), created)
    try:
        prune(env, store, keep=Path(info.path).name, now=created)
    except store.prune_errors as exc:
        warn(
            f"warning: the backup is stored and verified in {info.path}, but pruning the older "
            f"ones in {store.where} failed ({exc}); they were kept and the next backup prunes "
            "them."
        )
    return info


def _proven(
    env: Environment,
    store: BackupStore,
    engine: Engine,
    revision: str | None,
    progress: Progress,
    created: datetime,
) -> BackupInfo:
    """The dump of an exported snapshot whose tables were fingerprinted, restored into a
    scratch database and compared (pipeline/backup_proof.py); removed when it differs."""
    from dataclasses import replace

    from safe_migrations.pipeline.backup_proof import ProofError, prove

    if env.settings.backup.encrypt_to:  # the proof decrypts it: refuse before the dump
        from safe_migrations.core.errors import ConfigError
        from safe_migrations.stores.encryption import IDENTITY_VARIABLE, identities

        try:
            identities()
        except ConfigError:
            raise ConfigError(
                f"backup.prove: restore decrypts the encrypted backup to restore it; set "
                f"{IDENTITY_VARIABLE} (the age identity) for this run, or remove the proof."
            ) from None
    with engine.exported_snapshot(env) as (snapshot, connection):
        saved: list[BackupInfo] = []

        def save() -> BackupInfo:
            saved.append(store.save(engine, revision, progress, created, snapshot=snapshot))
            return saved[0]

        checksum = engine.checksum_for(connection)
        try:
            expected, info = engine.fingerprints_beside(connection, save, checksum)
        except BaseException:
            if saved:  # dumped, but its source's fingerprints failed: nothing to prove
                store.delete(store.find(saved[0].path))
            raise
    backup = store.find(info.path)  # as a restore would find it (a store's: downloaded)
    try:
        with store.local_copy(backup) as local:
            proof = prove(env, engine, local, expected, checksum=checksum)
    except ProofError:
        store.delete(backup)
        raise
    store.record_proof(backup, proof)
    return replace(info, proof=proof)


def all_backups(env: Environment) -> list[dict[str, Any]]:
    """The environment's backups, newest first: the folder's, or the store's."""
    from safe_migrations.stores import store_for

    return store_for(env).manifests()


def prune(env: Environment, store: BackupStore, keep: str, now: datetime) -> list[str]:
    """Drop backups beyond ``keep`` newest or older than ``keep_days``; never ``keep``
    nor one that the newest reports name, and only the environment's own (what the store
    lists). Returns where the removed ones were."""
    removed = []
    protected = protected_backups(env) | {keep}
    for data in expired(store.manifests(), env, protected, now):
        store.delete(data)
        removed.append(str(data["path"]))
    return removed


def render_backups(found: list[dict[str, Any]]) -> str:
    """One line per backup: time, revision, size, checksum, encrypted or not, where."""
    if not found:
        return "no backups"
    lines = []
    for data in found:
        lines.append(
            f"{str(data.get('created_at', '?'))[:19]}  {str(data.get('revision') or 'base'):<12} "
            f"{int(data.get('size') or 0):>14,} B  sha256 {str(data.get('sha256', ''))[:12]}  "
            f"{'encrypted' if data.get('encrypted_to') else 'clear    '}  {data['path']}"
        )
    return "\n".join(lines)


def protected_backups(env: Environment) -> set[str]:
    """Backups that reports still point to: the newest report's and the newest run's
    (what `invoke rollback --restore` would restore)."""
    from safe_migrations.operations.rollback import RUN_OPERATIONS
    from safe_migrations.pipeline.report import last_report

    names = set()
    for found in (last_report(env), last_report(env, RUN_OPERATIONS)):
        backup = (found[1].get("backup") or {}) if found else {}
        if isinstance(backup, dict) and backup.get("path"):
            names.add(Path(str(backup["path"])).name)
    return names


def expired(
    backups: list[dict[str, Any]], env: Environment, protected: set[str], now: datetime
) -> list[dict[str, Any]]:
    """Backups (newest first) beyond ``keep`` or older than ``keep_days``, never a
    protected name."""
    settings = env.settings.backup
    gone = []
    for index, data in enumerate(backups):
        if Path(str(data["path"])).name in protected:
            continue
        too_many = settings.keep is not None and index >= settings.keep
        try:
            created = datetime.fromisoformat(str(data.get("created_at")))
        except ValueError:
            continue
        too_old = settings.keep_days is not None and created < now - timedelta(
            days=settings.keep_days
        )
        if too_many or too_old:
            gone.append(data)
    return gone
