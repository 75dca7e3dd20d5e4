"""What a killed run leaves in the backup folder, and the next run's sweep of it.

A SIGKILL runs no cleanup: a dump being written stays half written without a
manifest, a decrypted restore stays in clear, a download from the store stays in
the way of the next one. Whatever the tool writes there for a while is *claimed*:
a marker file beside it (``.<name>.inuse``) that the writer holds an exclusive
``flock`` on for as long as it lives. The kernel drops that lock when the process
dies, however it dies, so a later run removes exactly what belongs to dead runs and
never what a live one (a concurrent backup, a restore) is still writing.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

MARKER = ".inuse"
DECRYPTED_PREFIX = ".decrypted-"  # a restore's plaintext: never kept past its run


def _marker(path: Path) -> Path:
    return path.with_name(f".{path.name}{MARKER}")


@contextlib.contextmanager
def claimed(path: Path) -> Iterator[Path]:
    """Hold ``path`` (not yet written, or being written) as this process's until the block
    ends. The marker is locked before it gets its name, so a sweep never sees it free."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".claim.", suffix=".tmp")
    marker = _marker(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.replace(temporary, marker)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.unlink(marker)
        os.close(fd)


def _free(marker: Path) -> bool:
    """True when no live process holds the marker (its claimer died)."""
    try:
        fd = os.open(marker, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # closing drops the lock taken just now
    return True


def remove_path(path: Path) -> None:
    """A file, a link (never its target) or a folder, gone; nothing when it is not there."""
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def abandoned(folder: Path, pattern: str) -> list[Path]:
    """The claimed files matching ``pattern`` in ``folder`` whose claimer died (left in
    place: the caller reads them first, then sweeps)."""
    return sorted(
        path for path in folder.glob(pattern) if _marker(path).exists() and _free(_marker(path))
    )


def sweep(folder: Path) -> list[str]:
    """Remove what dead runs claimed in ``folder``, and any unclaimed decrypted copy;
    returns the names removed."""
    if not folder.is_dir():
        return []
    removed = []
    for marker in sorted(folder.glob(f".*{MARKER}")):
        if not _free(marker):
            continue
        target = folder / marker.name[1 : -len(MARKER)]
        if target.exists() or target.is_symlink():
            remove_path(target)
            removed.append(target.name)
        marker.unlink(missing_ok=True)
    for path in sorted(folder.glob(f"{DECRYPTED_PREFIX}*")):
        if path.is_dir() and not _marker(path).exists():
            remove_path(path)
            removed.append(path.name)
    for stale in folder.glob(".claim.*.tmp"):  # a claimer killed between its two steps
        if _free(stale):
            stale.unlink(missing_ok=True)
    return removed
