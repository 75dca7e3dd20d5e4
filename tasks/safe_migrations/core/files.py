"""Private files and folders: created 0700/0600 whatever the umask, written atomically,
never followed through a symlink that someone else planted.

Reports, manifests and the audit log are what rollback and restore trust, so
nobody but the runner's user may write (or read) them.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def private_folder(folder: Path) -> Path:
    """Create ``folder`` (and missing parents) as 0700; an existing folder keeps its mode.

    Only folders made here are chmodded, and only by a handle that is not a
    symlink, so a symlink pointing elsewhere never has its target's mode changed.
    """
    missing = []
    current = folder
    while not current.exists() and not current.is_symlink():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            try:
                os.fchmod(fd, 0o700)  # mkdir's mode is filtered by the umask
            finally:
                os.close(fd)
    return folder


def write_atomic(path: Path, text: str, mode: int = 0o600) -> None:
    """Write a whole file or nothing: temporary file in the same folder, fsync, rename.

    A reader never sees half a file, and a symlink at ``path`` is replaced, not followed.
    """
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def append_line(path: Path, data: bytes) -> None:
    """One ``O_APPEND`` write (concurrent writers never interleave); never through a symlink."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def probe_writable(folder: Path, size: int = 64 * 1024) -> str | None:
    """None when ``folder`` can take a file of ``size`` bytes, else why not (for health)."""
    try:
        private_folder(folder)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".probe.", delete=True) as handle:
            handle.write(b"\0" * size)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        return exc.strerror or str(exc)
    return None
