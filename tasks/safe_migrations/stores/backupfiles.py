"""What every backup shares, whichever engine dumps it and whichever store keeps it:
names, what a manifest holds, the private folder (swept of what killed runs left), the
file sink and its stream chunks, the progress line, the child environment. Below the
backup step, the engines' dumps and the stores, so none of them imports another.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from safe_migrations.core.config import Environment
from safe_migrations.core.errors import BackupError
from safe_migrations.core.files import private_folder
from safe_migrations.core.leftovers import remove_path, sweep

CHUNK = 1024 * 1024
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
    proof: dict[str, Any] | None = None  # restored and compared (pipeline/backup_proof.py)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def write_manifest(info: BackupInfo, masked_url: str) -> None:
    data = info.to_dict() | {"database": masked_url}
    manifest = Path(info.manifest)
    fd = os.open(manifest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2)


def restrict(path: Path) -> None:
    if path.is_dir():
        os.chmod(path, 0o700)
        for file in path.rglob("*"):
            os.chmod(file, 0o700 if file.is_dir() else 0o600)
    else:
        os.chmod(path, 0o600)


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


def backup_name(env: Environment, revision: str | None, now: datetime, suffix: str) -> str:
    """``<env>-<UTC time to the millisecond>-<revision><suffix>``; the engine gives the suffix."""
    stamp = now.strftime("%Y%m%dT%H%M%S") + f"{now.microsecond // 1000:03d}Z"
    return f"{env.name}-{stamp}-{revision or 'base'}{suffix}"


# What a PostgreSQL client child inherits from us: how to find programs, locale and
# time zone, and the user's TLS and service settings. Nothing else: no DB_PASSWORD,
# DATABASE_URL or cloud credential reaches pg_dump, pg_restore or a script they run.
CHILD_VARIABLES = ("PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TMPDIR")
CHILD_PREFIXES = ("LC_", "PGSSL", "PGSERVICEFILE", "PGSYSCONFDIR", "PGGSS", "PGKRB")


def child_environment() -> dict[str, str]:
    """The variables a client child needs that are not about which database to reach."""
    return {
        k: v for k, v in os.environ.items() if k in CHILD_VARIABLES or k.startswith(CHILD_PREFIXES)
    }


def prepare_folder(folder: Path) -> None:
    """The folder made private and writable, and what killed runs left in it removed
    (leftovers.py: half-written dumps, decrypted copies, downloads)."""
    try:
        private_folder(folder)  # made 0700; an existing folder (or symlink) is left as it is
    except OSError as exc:
        raise BackupError(
            f"Cannot create the backup folder {folder}: {exc.strerror}; "
            "choose a writable backup.folder."
        ) from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise BackupError(
            f"The backup folder {folder} is not writable; fix its permissions "
            "or choose another backup.folder."
        )
    sweep(folder)


class Progress:
    """One self-rewriting line on a terminal; silent otherwise."""

    def __init__(self, enabled: bool | None = None, stream: Any = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self._started: Callable[[], object] | None = None

    def when_started(self, callback: Callable[[], object]) -> None:
        """Call ``callback`` once, at the first progress of the dump (its process
        running): work that would slow the way to it can start there."""
        self._started = callback

    def show(self, text: str) -> None:
        if self._started is not None:
            started, self._started = self._started, None
            started()
        if self.enabled:
            self.stream.write("\r\033[K" + text)
            self.stream.flush()

    def done(self) -> None:
        if self.enabled:
            self.stream.write("\r\033[K")
            self.stream.flush()


@dataclass
class Stored:
    """What an encrypted backup stored, learnt on the way: checksum, size, tables."""

    sha256: str = ""
    size: int = 0
    tables: int = 0
    error: BaseException | None = None


class FileSink:
    """A dump's destination on local disk: a new private file (0600), fsynced when the
    stream ends; ``abort`` removes it. The store's twin is ``s3bucket.ObjectSink``."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.written = 0
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self._handle = os.fdopen(fd, "wb")

    def write(self, data: bytes) -> int:
        self._handle.write(data)
        self.written += len(data)
        return len(data)

    def flush(self) -> None:
        self._handle.flush()

    def finish(self) -> None:
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()

    def commit(self) -> None:
        """Nothing left to do: the file was complete when the stream ended."""

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self._handle.close()
        remove_path(Path(self.path))


def is_backup_name(env: Environment, name: str) -> bool:
    """A name this tool gives the environment's backups."""
    pattern = rf"{re.escape(env.name)}-\d{{8}}T\d{{9}}Z-[\w.-]+\.(dump|dir|sqlite3|sql\.gz)(\.age)?"
    return re.fullmatch(pattern, name) is not None


def sha256_of(path: Path) -> str:
    """Checksum of a file, or of a directory's files in name order."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        with open(file, "rb") as handle:
            while chunk := handle.read(1024 * 1024):
                digest.update(chunk)
    return digest.hexdigest()


def size_of(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size if path.exists() else 0


def warn(text: str) -> None:
    """A warning on stderr: the backup it concerns is good, the run goes on."""
    from safe_migrations.core.escaping import terminal

    print(terminal(text), file=sys.stderr)
