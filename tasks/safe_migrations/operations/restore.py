"""`invoke restore`: only the environment's own verified backups, put back all or nothing.

A backup is the environment's own when it is a file this tool made in the
environment's backup folder and its manifest names this environment and the same
engine, host, port and database. Anything else needs ``--foreign``.

PostgreSQL archives are replayed on our own connection, in one transaction, from
``pg_restore --file=-`` (which reads the archive and connects nowhere): no psql,
so nothing inside an archive can run as a client command. In the same transaction,
every object of the archive's schemas that the archive does not hold is dropped
first (tables, views, sequences, types, domains, functions), so the database is
exactly the backup again; extensions are left alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from safe_migrations.core.config import Environment
from safe_migrations.core.errors import BackupError, ConfigError
from safe_migrations.core.leftovers import DECRYPTED_PREFIX, claimed, sweep
from safe_migrations.engines import engine_for
from safe_migrations.pipeline.backup import (
    MANIFEST_SUFFIX,
    archive_of,
    database_identity,
    is_own_backup,
    list_backups,
    sha256_of,
)
from safe_migrations.stores.encryption import SUFFIX


def find_backup(env: Environment, spec: str, foreign: bool = False) -> dict[str, Any]:
    """``latest`` or a path (archive or manifest) -> its manifest, with ``path`` (the
    archive, by location), ``own`` and, for another's backup, ``foreign_reason``."""
    from safe_migrations.stores.s3 import is_remote

    if is_remote(env):
        return find_remote_backup(env, spec)
    if spec == "latest":
        backups = list_backups(env)
        if not backups:
            raise ConfigError(
                f"There is no backup for {env.name} in {env.backup_dir}; "
                "take one with `invoke backup`."
            )
        data = dict(backups[0])
        archive = Path(data["path"])
    else:
        given = Path(spec).absolute()
        archive = archive_of(given) if given.name.endswith(MANIFEST_SUFFIX) else given
        if not archive.exists():
            raise ConfigError(
                f"No backup at {spec}; pass a path that `invoke backup` printed, or 'latest'."
            )
        manifest = Path(str(archive) + MANIFEST_SUFFIX)
        data = _read_manifest(manifest) or {}
        data["manifest"] = str(manifest) if manifest.is_file() else None
        data["path"] = str(archive)  # by location, never the manifest's own claim
    reason = foreign_reason(env, archive, data)
    data["own"], data["foreign_reason"] = reason is None, reason
    if reason and not foreign:
        raise ConfigError(
            f"{archive} is not one of {env.name}'s own backups ({reason}); restore runs only "
            "the environment's own backups. To restore it anyway pass --foreign (on a "
            "terminal you will be shown what it holds and asked to type the environment's name)."
        )
    return data


def find_remote_backup(env: Environment, spec: str) -> dict[str, Any]:
    """``latest``, or an object (s3:// URL, key or name) under the environment's prefix,
    with its manifest object; ``path`` is where it will be downloaded to."""
    from safe_migrations.stores.s3 import MANIFEST_SUFFIX as SUFFIX_
    from safe_migrations.stores.s3 import check_provenance, remote_manifests, store_for

    store = store_for(env)
    if spec == "latest":
        found = remote_manifests(env, store)
        if not found:
            raise ConfigError(
                f"There is no backup for {env.name} in s3://{store.bucket}/{store.prefix}; "
                "take one with `invoke backup`."
            )
        data = dict(found[0])
    else:
        name = store.name_of(spec)
        if name is None:
            raise ConfigError(
                f"{spec} is not under s3://{store.bucket}/{store.prefix}, where {env.name}'s "
                "backups are; restore runs only the environment's own backups (download "
                "another object and pass the file with --foreign)."
            )
        name = name.removesuffix(SUFFIX_)
        data = store.get_json(store.key(name + SUFFIX_)) or {}
        data["manifest"] = store.url(store.key(name + SUFFIX_)) if data else None
        data["name"] = name
    data["remote"] = store.url(store.key(data["name"]))
    data["path"] = str(env.backup_dir / data["name"])
    reason = foreign_reason(env, Path(data["path"]), data)
    if reason:
        raise ConfigError(f"{data['remote']} is not one of {env.name}'s own backups ({reason}).")
    check_provenance(env, store, data)
    data["own"], data["foreign_reason"] = True, None
    return data


@contextlib.contextmanager
def local_copy(env: Environment, backup: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The backup as a local file: itself, or a store's object downloaded into the backup
    folder (0600) for the restore and removed afterwards."""
    if not backup.get("remote"):
        yield backup
        return
    from safe_migrations.stores.s3 import downloaded

    with downloaded(env, backup) as local:
        yield local


def _read_manifest(manifest: Path) -> dict[str, Any] | None:
    if manifest.is_symlink() or not manifest.is_file():
        return None
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def foreign_reason(env: Environment, archive: Path, manifest: dict[str, Any]) -> str | None:
    """Why a backup is not this environment's own, or None when it is."""
    if not is_own_backup(env, archive):
        return f"it is not a backup this tool made in {env.backup_dir}"
    if not manifest.get("manifest"):
        return "it has no readable manifest"
    if manifest.get("environment") != env.name:
        return f"its manifest names the environment {manifest.get('environment')!r}"
    target = manifest.get("target")
    if not isinstance(target, dict):
        return "its manifest names no database (taken by an older version)"
    if target != database_identity(env):
        where = ", ".join(f"{k} {v}" for k, v in target.items() if k != "engine")
        return f"it was taken of another database ({where})"
    return None


def verify_checksum(backup: dict[str, Any]) -> None:
    path = Path(backup["path"])
    if not path.exists():
        raise BackupError(f"The backup {path} is missing.")
    expected = backup.get("sha256")
    if not expected:
        raise BackupError(f"The backup {path.name} has no checksum to verify it against.")
    actual = sha256_of(path)
    if actual != expected:
        raise BackupError(
            f"The backup {path.name} does not match its manifest's sha256 "
            f"(expected {str(expected)[:12]}..., found {actual[:12]}...); "
            "it was changed or damaged and will not be restored."
        )


def describe_backup(env: Environment, backup: dict[str, Any]) -> str:
    """What a (foreign) archive holds, shown before asking to restore it."""
    path = Path(backup["path"])
    lines = [f"backup:   {path}", f"manifest: {backup.get('manifest') or '(none)'}"]
    if backup.get("foreign_reason"):
        lines.append(f"foreign:  {backup['foreign_reason']}")
    with readable_archive(env, backup) as plain:
        lines += engine_for(env.dialect).backup_contents(env, plain)
    return "\n".join(lines)


@contextlib.contextmanager
def readable_archive(env: Environment, backup: dict[str, Any]) -> Iterator[Path]:
    """The archive in clear: itself, or (encrypted, ``.age``) decrypted with the identity
    in SAFE_MIGRATIONS_AGE_IDENTITY into a private folder inside the backup folder,
    removed afterwards."""
    path = Path(backup["path"])
    if not path.name.endswith(SUFFIX):
        yield path
        return
    from safe_migrations.stores.encryption import decrypt_file, identities

    keys = identities()
    sweep(path.parent)  # a killed restore's plaintext goes before any new one is made
    folder = path.parent / f"{DECRYPTED_PREFIX}{uuid.uuid4().hex[:12]}"
    with claimed(folder):
        os.mkdir(folder, 0o700)
        try:
            plain = folder / path.name[: -len(SUFFIX)]
            decrypt_file(path, plain, keys)
            yield plain
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def restore_backup(env: Environment, backup: dict[str, Any]) -> None:
    """Checksum first (own backups always have one), then put the database back."""
    if backup.get("own") or backup.get("sha256"):
        verify_checksum(backup)
    with readable_archive(env, backup) as path:
        engine_for(env.dialect).restore(env, path)
