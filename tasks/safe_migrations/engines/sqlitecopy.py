"""SQLite backups and restores: an online copy through the ``sqlite3`` backup API, checked
with ``PRAGMA integrity_check``; encrypted, the copy is made in memory and only the
ciphertext reaches the disk."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from safe_migrations.core.database import sqlite_path
from safe_migrations.core.errors import BackupError, ConfigError
from safe_migrations.core.leftovers import remove_path
from safe_migrations.stores.backupfiles import Progress, Stored

if TYPE_CHECKING:
    from safe_migrations.core.config import Environment


def backup_sqlite(env: Environment, target: Path, progress: Progress) -> int:
    """Online copy with the backup API, then ``PRAGMA integrity_check`` on the copy."""
    import sqlite3

    source_path = sqlite_path(env.url)
    if source_path is None or not Path(source_path).exists():
        raise BackupError(f"There is no SQLite database at {source_path} to back up yet.")
    source = sqlite3.connect(source_path)
    copy = sqlite3.connect(target)
    try:
        source.backup(
            copy,
            pages=256,
            progress=lambda _s, left, total: progress.show(f"backup: {total - left}/{total} pages"),
        )
        result = copy.execute("PRAGMA integrity_check").fetchone()[0]
        if result != "ok":
            raise BackupError(f"The SQLite copy {target.name} failed its integrity check: {result}")
        return copy.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
    except sqlite3.Error as exc:
        remove_path(target)
        raise BackupError(f"Cannot back up {source_path}: {exc}") from None
    finally:
        copy.close()
        source.close()
        progress.done()


def backup_sqlite_encrypted(env: Environment, target: Path, progress: Progress) -> Stored:
    """The backup API into memory, checked, serialised and encrypted into ``target``."""
    import io
    import sqlite3

    from safe_migrations.stores.encryption import HashingWriter, encrypt_stream, parse_recipient

    assert env.settings.backup.encrypt_to is not None
    recipient = parse_recipient(env.settings.backup.encrypt_to, "backup.encrypt_to")
    source_path = sqlite_path(env.url)
    if source_path is None or not Path(source_path).exists():
        raise BackupError(f"There is no SQLite database at {source_path} to back up yet.")
    source, copy = sqlite3.connect(source_path), sqlite3.connect(":memory:")
    try:
        source.backup(copy)
        result = copy.execute("PRAGMA integrity_check").fetchone()[0]
        if result != "ok":
            raise BackupError(f"The SQLite copy failed its integrity check: {result}")
        tables = copy.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()
        data = copy.serialize()
    except sqlite3.Error as exc:
        raise BackupError(f"Cannot back up {source_path}: {exc}") from None
    finally:
        copy.close()
        source.close()
        progress.done()
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        writer = HashingWriter(handle)
        encrypt_stream(io.BytesIO(data), writer, recipient)
        handle.flush()
        os.fsync(handle.fileno())
    return Stored(writer.digest.hexdigest(), writer.size, tables[0])


def restore_sqlite(env: Environment, path: Path) -> None:
    import sqlite3

    target = sqlite_path(env.url)
    if target is None:
        raise ConfigError("An in-memory SQLite database cannot be restored.")
    source = sqlite3.connect(path)
    destination = sqlite3.connect(target)
    try:
        source.backup(destination)
    finally:
        destination.close()
        source.close()


def table_names(path: Path) -> list[str]:
    """The tables a copy holds, read-only (what restore shows before it asks)."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
