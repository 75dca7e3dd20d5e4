"""Backups in an S3-compatible store (``backup.storage.type: s3``), through boto3.

Credentials come from the AWS SDK's standard chain (environment, profile, instance
or OIDC role), never from the environment file. A dump streams into a multipart
upload that is completed only once pg_dump exited cleanly and ``pg_restore --list``
read the stream back; any failure aborts it, so no complete-looking object and no
open upload is left. Each dump has a manifest object beside it and tags with its
checksum; restore downloads it into the backup folder, checks it and removes it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safe_migrations.core.config import Environment
from safe_migrations.core.errors import BackupError, ConfigError
from safe_migrations.core.results import StepResult
from safe_migrations.stores.backupfiles import (
    MANIFEST_SUFFIX,
    BackupInfo,
    Progress,
    backup_name,
    prepare_folder,
    warn,
    write_manifest,
)
from safe_migrations.stores.base import BackupStore, foreign_reason
from safe_migrations.stores.s3bucket import ObjectSink, PendingSink, Store, bucket_for

if TYPE_CHECKING:
    from datetime import datetime

    from safe_migrations.engines.base import Engine


def abort_stale_uploads(env: Environment, store: Store) -> list[str]:
    """Abort the uploads of this environment's backups that a killed run left open (a
    SIGKILL aborts nothing): begun longer ago than ``backup.timeout``, past which a live
    run has stopped its dump and aborted its own upload. Returns their keys."""
    from safe_migrations.stores.backupfiles import is_backup_name

    aborted = []
    for key, upload in store.stale_uploads(env.settings.backup.timeout):
        name = key[len(store.prefix) :]
        if "/" not in name and is_backup_name(env, name):
            store.client.abort_multipart_upload(Bucket=store.bucket, Key=key, UploadId=upload)
            aborted.append(key)
    return aborted


def check_provenance(env: Environment, store: Store, backup: dict[str, Any]) -> None:
    """Before a download: the object's sha256 tag and the manifest copy this tool keeps in
    the backup folder (when this machine has it) both agree with the manifest object, so
    a dump and a manifest put under the prefix by someone else are not restored."""
    from botocore.exceptions import BotoCoreError, ClientError

    name, claimed = backup["name"], str(backup.get("sha256") or "")
    try:
        tagged = store.tags(store.key(name)).get("sha256", "")
    except (BotoCoreError, ClientError) as exc:
        raise BackupError(f"Reading the tags of {backup['remote']} failed: {exc}") from None
    if tagged != claimed:
        raise BackupError(
            f"{backup['remote']} carries the sha256 tag {tagged[:12] or '(none)'}..., not its "
            f"manifest's {claimed[:12]}...: the object or its manifest was replaced in the "
            "store; it will not be restored."
        )
    local = env.backup_dir / "remote" / (name + MANIFEST_SUFFIX)
    if local.is_file():
        try:
            kept = json.loads(local.read_text(encoding="utf-8")).get("sha256")
        except (OSError, ValueError):
            kept = None
        if kept != claimed:
            raise BackupError(
                f"{backup['remote']}'s manifest says sha256 {claimed[:12]}..., but the copy "
                f"this tool kept when it stored the backup ({local}) says {str(kept)[:12]}...: "
                "the manifest was replaced in the store; it will not be restored."
            )


MANIFEST_READERS = 8  # a store's round trip is the cost of a read: they go together


def remote_manifests(env: Environment, store: Store) -> list[dict[str, Any]]:
    """Manifests of this environment's backups in the store, newest first. They are read
    MANIFEST_READERS at a time (boto3's client is thread-safe): one after the other, a
    listing of backups or a prune after each backup waited one round trip per backup."""
    from concurrent.futures import ThreadPoolExecutor

    from safe_migrations.stores.backupfiles import is_backup_name

    archives = [
        name[: -len(MANIFEST_SUFFIX)] for name in store.names() if name.endswith(MANIFEST_SUFFIX)
    ]
    archives = [archive for archive in archives if is_backup_name(env, archive)]

    def read(archive: str) -> dict[str, Any] | None:
        return store.get_json(store.key(archive + MANIFEST_SUFFIX))

    with ThreadPoolExecutor(min(MANIFEST_READERS, len(archives)) or 1, "s3-manifests") as pool:
        read_back = list(pool.map(read, archives))
    found = []
    for archive, data in zip(archives, read_back, strict=True):
        if data is not None and data.get("environment") == env.name:
            data["manifest"] = store.url(store.key(archive + MANIFEST_SUFFIX))
            data["path"] = store.url(store.key(archive))  # by location, never its claim
            data["name"] = archive
            found.append(data)
    return sorted(found, key=lambda d: str(d.get("created_at")), reverse=True)


@contextmanager
def downloaded(env: Environment, backup: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """A remote backup as a private file in the backup folder, removed afterwards."""
    store = bucket_for(env)
    name = backup["name"]
    local = env.backup_dir / name
    from safe_migrations.core.leftovers import claimed
    from safe_migrations.stores.backupfiles import prepare_folder

    prepare_folder(env.backup_dir)  # sweeps a killed restore's download
    with claimed(local):
        try:
            store.download(store.key(name), local)
        except FileExistsError:
            raise BackupError(
                f"{local} is in the way of the download; remove it and restore again."
            ) from None
        except Exception as exc:
            raise BackupError(f"Downloading {backup['path']} failed: {exc}") from None
        try:
            yield backup | {"path": str(local), "remote": backup["path"]}
        finally:
            local.unlink(missing_ok=True)


class S3Store(BackupStore):
    """The environment's prefix in a bucket; a dump streams into a multipart upload."""

    kind = "s3"

    def __init__(self, env: Environment) -> None:
        super().__init__(env)
        self._bucket: Store | None = None

    @property
    def bucket(self) -> Store:
        """The client, built on first use: credentials are looked up only when needed."""
        if self._bucket is None:
            self._bucket = bucket_for(self.env)
        return self._bucket

    @property
    def where(self) -> str:
        storage = self.env.settings.backup.storage
        return f"s3://{storage.bucket}/{storage.prefix}"

    @property
    def prune_errors(self) -> tuple[type[BaseException], ...]:  # type: ignore[override]
        from botocore.exceptions import BotoCoreError, ClientError

        return (BotoCoreError, ClientError)

    def save(
        self,
        engine: Engine,
        revision: str | None,
        progress: Progress,
        created: datetime,
        snapshot: str | None = None,
    ) -> BackupInfo:
        """The dump streamed into the store (encrypted on the way when configured), verified
        before the upload is completed; the manifest goes beside it, a copy into the backup
        folder (what the workflow keeps as an artifact).

        Kept long: the upload, its manifest and the local copy of the manifest each fail
        differently, and each failure's sentence says exactly what is left in the store."""
        import time
        from concurrent.futures import ThreadPoolExecutor
        from dataclasses import replace

        from botocore.exceptions import BotoCoreError, ClientError

        env = self.env
        engine.check_streamed_backup()
        encrypted = env.settings.backup.encrypt_to is not None
        name = backup_name(env, revision, created, engine.backup_suffix(env)) + (
            ".age" if encrypted else ""
        )
        started = time.perf_counter()

        def begin() -> ObjectSink:  # beside the dump's start
            abort_stale_uploads(env, self.bucket)
            return ObjectSink(self.bucket, name)

        try:
            with ThreadPoolExecutor(1, thread_name_prefix="s3-begin") as pool:
                sink = PendingSink(pool.submit(begin))
                total = engine.count_tables(env) if progress.enabled else 0  # the line's /N
                stored = engine.dump_to(env, sink, name, total, progress, snapshot)
            store = self.bucket
        except (BotoCoreError, ClientError) as exc:
            raise BackupError(
                f"Storing the backup in {self.where} failed: {exc}; "
                "the upload was aborted, so nothing was left in the store."
            ) from None
        info = BackupInfo(
            path=sink.path,
            manifest=sink.path + MANIFEST_SUFFIX,
            environment=env.name,
            format=engine.backup_format(env),
            revision=revision,
            size=stored.size,
            sha256=stored.sha256,
            created_at=created.isoformat(),
            duration=round(time.perf_counter() - started, 4),
            verify_seconds=0.0,  # read back on the way, while it was uploaded
            tables=stored.tables,
            target=engine.identity(env),
            encrypted_to=env.settings.backup.encrypt_to,
        )
        try:
            store.tag(
                sink.key,
                {"sha256": stored.sha256, "environment": env.name, "revision": revision or "base"},
            )
            store.put_json(
                sink.key + MANIFEST_SUFFIX, info.to_dict() | {"database": env.masked_url}
            )
        except (BotoCoreError, ClientError) as exc:
            raise BackupError(
                f"The backup was stored as {sink.path}, but writing its manifest failed: {exc}; "
                + _unlisted_removed(store, sink.key)
            ) from None
        try:
            copy = env.backup_dir / "remote"
            prepare_folder(copy)
            kept = replace(info, manifest=str(copy / (name + MANIFEST_SUFFIX)))
            write_manifest(kept, env.masked_url)
        except (OSError, BackupError) as exc:
            warn(
                f"warning: the backup is stored and verified in {sink.path}, but the local copy "
                f"of its manifest could not be written ({getattr(exc, 'strerror', None) or exc}); "
                "the workflow's artifact will lack it. Free space in the backup folder."
            )
        return info

    def manifests(self) -> list[dict[str, Any]]:
        return remote_manifests(self.env, self.bucket)

    remote = True

    def record_proof(self, backup: dict[str, Any], proof: dict[str, Any]) -> None:
        """The manifest object again, with the proof; and this machine's copy of it."""
        from safe_migrations.core.files import write_atomic

        key = self.bucket.key(backup["name"]) + MANIFEST_SUFFIX
        data = (self.bucket.get_json(key) or {}) | {"proof": proof}
        self.bucket.put_json(key, data)
        copy = self.env.backup_dir / "remote" / (backup["name"] + MANIFEST_SUFFIX)
        if copy.is_file():
            write_atomic(copy, json.dumps(data, indent=2))

    def copies(self) -> list[dict[str, Any]]:
        """The manifests' copies that this machine's backups left in ``<folder>/remote``."""
        from safe_migrations.stores.local import read_manifest

        folder = self.env.backup_dir / "remote"
        found = [read_manifest(path) for path in folder.glob(f"{self.env.name}-*{MANIFEST_SUFFIX}")]
        own = [d for d in found if d is not None and d.get("environment") == self.env.name]
        return sorted(own, key=lambda d: str(d.get("created_at")), reverse=True)

    def delete(self, backup: dict[str, Any]) -> None:
        """The object, its manifest object and the manifest's copy in the backup folder."""
        key = self.bucket.key(backup["name"])
        self.bucket.delete(key)
        self.bucket.delete(key + MANIFEST_SUFFIX)
        (self.env.backup_dir / "remote" / (backup["name"] + MANIFEST_SUFFIX)).unlink(
            missing_ok=True
        )

    def find(self, spec: str, foreign: bool = False) -> dict[str, Any]:
        """``latest``, or an object (s3:// URL, key or name) under the environment's prefix,
        with its manifest object; ``path`` is where it will be downloaded to. Another's
        backup is never restored from the store (download it and pass the file)."""
        env, store = self.env, self.bucket
        if spec == "latest":
            found = remote_manifests(env, store)
            if not found:
                raise ConfigError(
                    f"There is no backup for {env.name} in {self.where}; "
                    "take one with `invoke backup`."
                )
            data = dict(found[0])
        else:
            name = store.name_of(spec)
            if name is None:
                raise ConfigError(
                    f"{spec} is not under {self.where}, where {env.name}'s "
                    "backups are; restore runs only the environment's own backups (download "
                    "another object and pass the file with --foreign)."
                )
            name = name.removesuffix(MANIFEST_SUFFIX)
            data = store.get_json(store.key(name + MANIFEST_SUFFIX)) or {}
            data["manifest"] = store.url(store.key(name + MANIFEST_SUFFIX)) if data else None
            data["name"] = name
        data["remote"] = store.url(store.key(data["name"]))
        data["path"] = str(env.backup_dir / data["name"])
        reason = foreign_reason(env, Path(data["path"]), data)
        if reason:
            raise ConfigError(
                f"{data['remote']} is not one of {env.name}'s own backups ({reason})."
            )
        check_provenance(env, store, data)
        data["own"], data["foreign_reason"] = True, None
        return data

    @contextmanager
    def local_copy(self, backup: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Downloaded into the backup folder (0600) for the restore, removed afterwards."""
        if not backup.get("remote"):  # a file passed with --foreign
            yield backup
            return
        with downloaded(self.env, backup) as local:
            yield local

    def health(self, db_size: int | None, backing_up: bool) -> list[StepResult]:
        """Credentials present, the bucket reachable and writable (a small probe object,
        written and removed) before the backup step relies on it."""
        if not backing_up:
            return []
        from botocore.exceptions import BotoCoreError, ClientError

        from safe_migrations.core.errors import ToolError, first_line
        from safe_migrations.core.results import timed

        with timed() as clock:
            try:
                self.bucket.probe()
                ok, message = True, f"{self.where} takes writes"
            except ToolError as exc:
                ok, message = False, exc.message
            except (BotoCoreError, ClientError) as exc:
                ok, message = False, f"cannot write to {self.where}: {first_line(exc)}"
        return [StepResult("backup_store", ok, message, duration=clock.seconds)]


def _unlisted_removed(store: Store, key: str) -> str:
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
