"""`invoke restore`: only the environment's own verified backups, put back all or nothing.

A backup is the environment's own when it is a file this tool made in the
environment's backup folder and its manifest names this environment and the same
engine, host, port and database (``stores/base.py``). Anything else needs ``--foreign``.
The store finds it and hands over a local copy; the checksum is checked, an encrypted
backup decrypted into a private folder, and the engine puts the database back
(``engines/pgrestore.py``, ``mysqldump.py``, ``sqlitecopy.py``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from safe_migrations.core.config import Environment
from safe_migrations.core.errors import BackupError
from safe_migrations.core.leftovers import DECRYPTED_PREFIX, claimed, sweep
from safe_migrations.engines import engine_for
from safe_migrations.stores.backupfiles import sha256_of
from safe_migrations.stores.encryption import SUFFIX


def find_backup(env: Environment, spec: str, foreign: bool = False) -> dict[str, Any]:
    """``latest`` or a path/name -> its manifest, from the environment's store."""
    from safe_migrations.stores import store_for

    return store_for(env).find(spec, foreign)


def local_copy(env: Environment, backup: dict[str, Any]) -> AbstractContextManager[dict[str, Any]]:
    """The backup as a local file: itself, or a store's object downloaded into the backup
    folder (0600) for the restore and removed afterwards."""
    from safe_migrations.stores import store_for

    return store_for(env).local_copy(backup)


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
