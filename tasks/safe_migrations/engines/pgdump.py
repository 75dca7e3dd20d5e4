"""PostgreSQL dumps: ``pg_dump`` with the password in the child's environment, never its
argv; a custom-format dump streamed (encrypted on the way when configured), hashed and
read back by ``pg_restore --list`` while it is written, so it is never read twice."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from safe_migrations.core.errors import BackupError
from safe_migrations.core.leftovers import remove_path
from safe_migrations.engines.libpq import keepalive_options, pg_environment
from safe_migrations.stores.backupfiles import (
    CHUNK,
    FileSink,
    Progress,
    Stored,
    child_environment,
    size_of,
)

if TYPE_CHECKING:
    from safe_migrations.core.config import Environment


def find_binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise BackupError(
            f"{name} is not on PATH; install the PostgreSQL client "
            "(Debian: apt-get install postgresql-client) or add its folder to PATH."
        )
    return found


def dump_postgres(
    env: Environment,
    target: Path,
    tables_total: int,
    progress: Progress,
    sink: Any = None,
    snapshot: str | None = None,
) -> Stored | None:
    """Run pg_dump with a timeout; a partial file (or upload) is removed on any failure.

    A custom-format dump streams from pg_dump's stdout into ``target`` (through the
    encryptor with ``backup.encrypt_to``: never in clear on disk), hashed on the way
    and fed to ``pg_restore --list`` at the same time (the verification), so the
    archive is never read a second time; returns what was stored. The directory
    format is written by pg_dump itself (None: verify and hash it afterwards).

    Kept long: pg_dump, its stderr reader, the stream's writer and the clean-up share
    one try/finally, so no failure leaves a partial file, an open upload or a running
    child.
    """
    settings = env.settings.backup
    streamed = settings.format == "custom"  # (and encrypted when configured)
    keepalives = " ".join(
        f"{k}={v}" for k, v in keepalive_options(env.settings.database.network_timeout).items()
    )
    argv = [
        find_binary("pg_dump"),
        "--no-password",
        f"--dbname={keepalives}",  # no host, user or password here: those come from env
        "--verbose",
        f"--format={settings.format}",
        f"--compress={settings.compression}",
    ]
    if snapshot:  # the rows an exported snapshot sees (backup.prove fingerprints them)
        argv.append(f"--snapshot={snapshot}")
    if not streamed:
        argv.append(f"--file={target}")
    if settings.format == "directory" and settings.jobs > 1:
        argv.append(f"--jobs={settings.jobs}")
    process = subprocess.Popen(
        argv,
        env=pg_environment(env.url),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE if streamed else subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
    )
    errors: list[str] = []
    done = [0]
    stored = Stored() if streamed else None
    encryptor = None
    if stored is not None:
        assert process.stdout is not None
        try:
            sink = sink or FileSink(target)
        except BaseException:
            process.kill()
            process.wait()
            raise
        encryptor = threading.Thread(
            target=_store_dump,
            args=(cast(Any, process.stdout).buffer, sink, settings.encrypt_to, stored),
            daemon=True,
        )
        encryptor.start()

    def read_stderr() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            if "dumping contents of table" in line:
                done[0] += 1
            elif "error" in line.lower() or "fatal" in line.lower():
                errors.append(line.strip())

    def show_progress() -> None:
        megabytes = (sink.written if sink is not None else size_of(target)) / 1024 / 1024
        progress.show(f"backup: {done[0]}/{tables_total} tables, {megabytes:,.1f} MB written")

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    deadline = time.monotonic() + settings.timeout
    try:
        # pg_dump's stderr closes as it exits: waiting on its reader wakes at once, where
        # Popen.wait(timeout) polls with sleeps of up to 50 ms.
        while reader.is_alive() or process.poll() is None:
            if time.monotonic() > deadline:
                process.kill()
                process.wait()
                raise BackupError(
                    f"pg_dump did not finish within backup.timeout={settings.timeout:g}s; "
                    "the partial backup was removed. Raise the timeout or use the directory "
                    "format with more jobs."
                )
            show_progress()
            if reader.is_alive():
                reader.join(timeout=0.2)
            else:  # stderr closed before the exit: rare, and polled
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=0.2)
        if encryptor is not None:
            encryptor.join()
        show_progress()
        if process.returncode != 0:
            detail = errors[0] if errors else f"exit code {process.returncode}"
            raise BackupError(f"pg_dump failed: {detail}")
        if stored is not None and stored.error is not None:
            raise stored.error
        if sink is not None:
            sink.commit()  # only now: pg_dump ended cleanly and the stream read back
        return stored
    except BaseException:
        if process.poll() is None:
            process.kill()
            process.wait()
        if encryptor is not None:
            encryptor.join(timeout=30)
        if sink is not None:
            sink.abort()
        else:
            remove_path(target)
        raise
    finally:
        progress.done()


class _Tee:
    """pg_dump's output, also fed to ``pg_restore --list`` until that has read enough."""

    def __init__(self, source: Any, lister: subprocess.Popen[bytes]) -> None:
        self.source = source
        self.lister = lister

    def read(self, size: int = -1) -> bytes:
        data = self.source.read(size if size and size > 0 else CHUNK)
        if data and self.lister.stdin is not None:
            try:
                self.lister.stdin.write(data)
            except (BrokenPipeError, ValueError):
                self.lister.stdin = None  # it has read the table of contents it needs
        return data


def _store_dump(source: Any, sink: Any, recipient_text: str | None, stored: Stored) -> None:
    """Thread body: pg_dump's stdout into ``sink`` (encrypted to ``recipient_text`` when
    given), hashed as it is written and read back by ``pg_restore --list`` on the way.
    The sink is finished here and committed by the caller once pg_dump exited cleanly."""
    import tempfile

    from safe_migrations.stores.encryption import HashingWriter, encrypt_stream, parse_recipient

    try:
        recipient = parse_recipient(recipient_text, "backup.encrypt_to") if recipient_text else None
        with tempfile.TemporaryFile() as listing, tempfile.TemporaryFile() as problems:
            lister = subprocess.Popen(
                [find_binary("pg_restore"), "--list"],
                env=child_environment(),
                stdin=subprocess.PIPE,
                stdout=listing,
                stderr=problems,
            )
            writer = HashingWriter(sink)
            if recipient is not None:
                encrypt_stream(_Tee(source, lister), writer, recipient)
            else:
                shutil.copyfileobj(_Tee(source, lister), writer, CHUNK)
            sink.finish()
            if lister.stdin is not None:
                with contextlib.suppress(BrokenPipeError):
                    lister.stdin.close()
            if lister.wait(timeout=600) != 0:
                problems.seek(0)
                first = (problems.read().decode(errors="replace").strip().splitlines() or [""])[0]
                raise BackupError(f"The backup cannot be read back by pg_restore: {first}")
            listing.seek(0)
            lines = listing.read().decode(errors="replace").splitlines()
        stored.sha256, stored.size = writer.digest.hexdigest(), writer.size
        stored.tables = sum(1 for line in lines if " TABLE DATA " in line)
    except BaseException as exc:  # handed to the main thread, which raises it
        stored.error = exc
        with contextlib.suppress(OSError):
            while source.read(1024 * 1024):  # let pg_dump finish rather than block on a pipe
                pass


def archive_listing(env: Environment, target: Path) -> list[str]:
    """``pg_restore --list`` of an archive: proof that it reads back, and its table of contents."""
    result = subprocess.run(
        [find_binary("pg_restore"), "--list", str(target)],
        env=child_environment(),  # reads a file, never connects: no password
        capture_output=True,
        text=True,
        check=False,
        timeout=env.settings.backup.timeout,
    )
    if result.returncode != 0:
        raise BackupError(
            f"The backup {target.name} cannot be read back by pg_restore: "
            f"{result.stderr.strip().splitlines()[0] if result.stderr else ''}"
        )
    return result.stdout.splitlines()


def verify_postgres(env: Environment, target: Path) -> int:
    """The archive must read back; returns its count of table-data entries."""
    return sum(1 for line in archive_listing(env, target) if " TABLE DATA " in line)
