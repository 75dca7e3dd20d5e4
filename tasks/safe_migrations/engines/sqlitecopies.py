"""SQLite copies: files in a private folder of this user's under the system's temp,
each owned through ``flock`` on a lock file beside it."""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from safe_migrations.core.errors import UsageError
from safe_migrations.core.files import private_folder
from safe_migrations.engines.scratch import Copy, is_copy_name, new_name

if TYPE_CHECKING:
    from safe_migrations.core.config import Environment


def copies_folder() -> Path:
    """Where SQLite copies live: a folder of this user's own under the system's temp
    (one that someone else made, or a symlink, is refused)."""
    folder = private_folder(
        Path(tempfile.gettempdir()) / f"safe-migrations-rehearsals-{os.getuid()}"
    )
    info = folder.lstat()
    if folder.is_symlink() or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise UsageError(
            f"{folder} is not a private folder of this user's; remove it and rehearse again."
        )
    return folder


@contextlib.contextmanager
def database_copy(env: Environment, server: Environment) -> Iterator[Copy]:
    prefix = env.settings.rehearsal.prefix
    folder = copies_folder()
    stale = _drop_stale_files(folder, prefix)
    name = new_name(prefix)
    lock_path = folder / f"{name}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        target = folder / f"{name}.db"
        try:
            if env.url in ("sqlite://", "sqlite:///:memory:"):
                raise UsageError("An in-memory SQLite database cannot be rehearsed.")
            yield Copy(name, replace(env, url=f"sqlite:///{target}"), str(folder), tuple(stale))
        finally:
            for path in (target, target.with_name(target.name + "-journal"), lock_path):
                path.unlink(missing_ok=True)


def copy_exists(server: Environment, name: str) -> bool:
    return (copies_folder() / f"{name}.db").exists()


@contextlib.contextmanager
def scratch_file(env: Environment, folder: Path) -> Iterator[Environment]:
    """The stairway's empty database: a new file in ``folder``, removed afterwards."""
    import uuid

    target = folder / f"{env.settings.check.scratch_prefix}{uuid.uuid4().hex[:12]}.db"
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield replace(env, url=f"sqlite:///{target}")
    finally:
        target.unlink(missing_ok=True)


def _drop_stale_files(folder: Path, prefix: str) -> list[str]:
    dropped = []
    for lock_path in folder.glob(f"{prefix}*.lock"):
        name = lock_path.stem
        if not is_copy_name(name, prefix):
            continue
        with open(lock_path, "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live rehearsal's copy
            (folder / f"{name}.db").unlink(missing_ok=True)
            lock_path.unlink(missing_ok=True)
        dropped.append(name)
    return dropped
