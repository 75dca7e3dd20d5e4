"""The backup step: a verified backup with a manifest (size, sha256), files 0600,
old backups pruned by the environment's retention.

PostgreSQL goes through ``pg_dump`` with the password in the child's
environment, never its argv; SQLite through the ``sqlite3`` backup API.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from safe_migrations.core.config import Environment
from safe_migrations.core.errors import BackupError
from safe_migrations.core.leftovers import claimed, remove_path
from safe_migrations.stores.backupfiles import (
    Progress,
    backup_name,
    is_backup_name,
    prepare_folder,
    sha256_of,
    size_of,
)

MANIFEST_SUFFIX = ".manifest.json"


@dataclass(frozen=True)
class BackupInfo:
    path: str
    manifest: str
    environment: str
    format: str
    revision: str | None
    size: int
    sha256: str
    created_at: str
    duration: float
    verify_seconds: float
    tables: int
    target: dict[str, Any]  # what was backed up: engine, host, port, database (no user)
    encrypted_to: str | None = None  # the age recipient (a public key), when encrypted

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def database_identity(env: Environment) -> dict[str, Any]:
    """Which database a URL names, without user or password: restore compares these."""
    from safe_migrations.engines import engine_for

    return engine_for(env.dialect).identity(env)


def _restrict(path: Path) -> None:
    if path.is_dir():
        os.chmod(path, 0o700)
        for file in path.rglob("*"):
            os.chmod(file, 0o700 if file.is_dir() else 0o600)
    else:
        os.chmod(path, 0o600)


def write_manifest(info: BackupInfo, masked_url: str) -> None:
    data = info.to_dict() | {"database": masked_url}
    manifest = Path(info.manifest)
    fd = os.open(manifest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2)


def take_backup(
    env: Environment,
    revision: str | None,
    progress: Progress | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> BackupInfo:
    """Back up, verify, checksum, write the manifest, prune; returns what was made."""
    from safe_migrations.stores.s3 import is_remote

    progress = progress or Progress()
    if is_remote(env):
        return take_remote_backup(env, revision, progress, now())
    folder = env.backup_dir
    prepare_folder(folder)
    from safe_migrations.engines import engine_for

    engine = engine_for(env.dialect)
    fmt = engine.backup_format(env)
    created = now()
    encrypted = env.settings.backup.encrypt_to is not None
    target = folder / (
        backup_name(env, revision, created, engine.backup_suffix(env))
        + (".age" if encrypted else "")
    )
    started = time.perf_counter()
    try:
        with claimed(target):  # a SIGKILL leaves it to the next run's sweep
            stored, tables, verify_started = engine.dump(env, target, encrypted, progress)
            _restrict(target)
            digest = stored.sha256 if stored else sha256_of(target)  # custom: hashed on the way
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
        format=fmt,
        revision=revision,
        size=size_of(target),
        sha256=digest,
        created_at=created.isoformat(),
        duration=round(finished - started, 4),
        verify_seconds=round(finished - verify_started, 4),
        tables=tables,
        target=database_identity(env),
        encrypted_to=env.settings.backup.encrypt_to,
    )
    write_manifest(info, env.masked_url)
    prune_backups(env, keep_path=target, now=created)
    return info


def table_count(env: Environment) -> int:
    """Tables the dump will hold: the denominator of the progress line."""
    from safe_migrations.engines import engine_for

    return engine_for(env.dialect).count_tables(env)


def take_remote_backup(
    env: Environment, revision: str | None, progress: Progress, created: datetime
) -> BackupInfo:
    """pg_dump streamed into the store (encrypted on the way when configured), verified
    before the upload is completed; the manifest goes beside it, a copy into the backup
    folder (what the workflow keeps as an artifact); then the store is pruned."""
    from botocore.exceptions import BotoCoreError, ClientError

    from safe_migrations.engines import engine_for
    from safe_migrations.stores.s3 import ObjectSink, abort_stale_uploads, store_for

    engine = engine_for(env.dialect)
    engine.check_streamed_backup()
    store = store_for(env)
    encrypted = env.settings.backup.encrypt_to is not None
    name = backup_name(env, revision, created, engine.backup_suffix(env)) + (
        ".age" if encrypted else ""
    )
    where = f"s3://{store.bucket}/{store.prefix}"
    started = time.perf_counter()
    try:
        abort_stale_uploads(env, store)
        total = table_count(env)
        sink = ObjectSink(store, name)
        stored = engine.dump_to(env, sink, name, total, progress)
    except (BotoCoreError, ClientError) as exc:
        raise BackupError(
            f"Storing the backup in {where} failed: {exc}; "
            "the upload was aborted, so nothing was left in the store."
        ) from None
    info = BackupInfo(
        path=sink.path,
        manifest=sink.path + MANIFEST_SUFFIX,
        environment=env.name,
        format="custom",
        revision=revision,
        size=stored.size,
        sha256=stored.sha256,
        created_at=created.isoformat(),
        duration=round(time.perf_counter() - started, 4),
        verify_seconds=0.0,  # read back on the way, while it was uploaded
        tables=stored.tables,
        target=database_identity(env),
        encrypted_to=env.settings.backup.encrypt_to,
    )
    try:
        store.tag(
            sink.key,
            {"sha256": stored.sha256, "environment": env.name, "revision": revision or "base"},
        )
        store.put_json(sink.key + MANIFEST_SUFFIX, info.to_dict() | {"database": env.masked_url})
    except (BotoCoreError, ClientError) as exc:
        raise BackupError(
            f"The backup was stored as {sink.path}, but writing its manifest failed: {exc}; "
            + _unlisted_removed(store, sink.key)
        ) from None
    try:
        copy = env.backup_dir / "remote"
        prepare_folder(copy)
        write_manifest(replace(info, manifest=str(copy / (name + MANIFEST_SUFFIX))), env.masked_url)
    except (OSError, BackupError) as exc:
        _warn(
            f"warning: the backup is stored and verified in {sink.path}, but the local copy of "
            f"its manifest could not be written ({getattr(exc, 'strerror', None) or exc}); "
            "the workflow's artifact will lack it. Free space in the backup folder."
        )
    try:
        prune_remote(env, store, keep=name, now=created)
    except (BotoCoreError, ClientError) as exc:
        _warn(
            f"warning: the backup is stored and verified in {sink.path}, but pruning the older "
            f"ones in {where} failed ({exc}); they were kept and the next backup prunes them."
        )
    return info


def _unlisted_removed(store: Any, key: str) -> str:
    """Delete a dump whose manifest could not be written (nothing would list or prune it);
    the end of the sentence saying what is left."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        store.delete(key + MANIFEST_SUFFIX)
        store.delete(key)
    except (BotoCoreError, ClientError) as exc:
        return (
            f"deleting the dump again failed too ({exc}), so {store.url(key)} is left without "
            "a manifest: nothing lists or prunes it; delete it by hand."
        )
    return "the dump was deleted again, so nothing was left in the store."


def _warn(text: str) -> None:
    """A warning on stderr: the backup it concerns is good, the run goes on."""
    from safe_migrations.core.escaping import terminal

    print(terminal(text), file=sys.stderr)


def archive_of(manifest: Path) -> Path:
    """The archive a manifest describes: its own name without the suffix, in its own folder.

    Never the manifest's ``path`` field: a manifest can be forged, its location cannot
    point outside the backup folder.
    """
    return manifest.with_name(manifest.name[: -len(MANIFEST_SUFFIX)])


def is_own_backup(env: Environment, archive: Path) -> bool:
    """A file (or folder) this tool made in the backup folder, itself no symlink.

    The folder may be a symlink the user configured; what is inside it is compared
    by resolved parent, so nothing reaches outside through a planted link.
    """
    return (
        archive.parent.resolve() == env.backup_dir.resolve()
        and not archive.is_symlink()
        and is_backup_name(env, archive.name)
    )


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
        try:
            data = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("environment") == env.name:
            data["manifest"], data["path"] = str(manifest), str(archive)
            found.append(data)
    return sorted(found, key=lambda d: str(d.get("created_at")), reverse=True)


def all_backups(env: Environment) -> list[dict[str, Any]]:
    """The environment's backups, newest first: the folder's, or the store's."""
    from safe_migrations.stores.s3 import is_remote, remote_manifests, store_for

    if is_remote(env):
        return remote_manifests(env, store_for(env))
    return list_backups(env)


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


def prune_backups(env: Environment, keep_path: Path, now: datetime) -> list[str]:
    """Drop backups beyond ``keep`` newest or older than ``keep_days``; never ``keep_path``
    nor one that the newest reports name, and only files this tool made in the folder."""
    removed = []
    protected = protected_backups(env) | {keep_path.name}
    for data in expired(list_backups(env), env, protected, now):
        path = Path(data["path"])
        remove_path(path)
        Path(data["manifest"]).unlink(missing_ok=True)
        removed.append(str(path))
    return removed


def prune_remote(env: Environment, store: Any, keep: str, now: datetime) -> list[str]:
    """The same retention in the store: only objects under the environment's prefix with
    the names this tool gives, never ``keep`` nor one that the newest reports name."""
    from safe_migrations.stores.s3 import remote_manifests

    removed = []
    protected = protected_backups(env) | {keep}
    for data in expired(remote_manifests(env, store), env, protected, now):
        key = store.key(data["name"])
        store.delete(key)
        store.delete(key + MANIFEST_SUFFIX)
        (env.backup_dir / "remote" / (data["name"] + MANIFEST_SUFFIX)).unlink(missing_ok=True)
        removed.append(data["path"])
    return removed
