"""The backup step: a verified backup with a manifest (size, sha256), files 0600,
old backups pruned by the environment's retention.

PostgreSQL goes through ``pg_dump`` with the password in the child's
environment, never its argv; SQLite through the ``sqlite3`` backup API.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

from safe_migrations.core.config import Environment
from safe_migrations.core.database import sqlite_path
from safe_migrations.core.errors import BackupError
from safe_migrations.core.leftovers import claimed, remove_path
from safe_migrations.stores.backupfiles import (
    CHUNK,
    FileSink,
    Progress,
    Stored,
    backup_name,
    child_environment,
    is_backup_name,
    prepare_folder,
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


def pg_environment(url: str) -> dict[str, str]:
    """libpq variables for a child that connects: the password travels here, not in argv."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    child = child_environment()
    values = {
        "PGHOST": parsed.host,
        "PGPORT": parsed.port,
        "PGUSER": parsed.username,
        "PGPASSWORD": parsed.password,
        "PGDATABASE": parsed.database,
    }
    child.update({k: str(v) for k, v in values.items() if v is not None})
    child["PGCONNECT_TIMEOUT"] = "10"
    for key, value in parsed.query.items():
        if key == "sslmode":
            child["PGSSLMODE"] = str(value)
    return child


def find_binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise BackupError(
            f"{name} is not on PATH; install the PostgreSQL client "
            "(Debian: apt-get install postgresql-client) or add its folder to PATH."
        )
    return found


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


def dump_postgres(
    env: Environment,
    target: Path,
    tables_total: int,
    progress: Progress,
    sink: Any = None,
) -> Stored | None:
    """Run pg_dump with a timeout; a partial file (or upload) is removed on any failure.

    A custom-format dump streams from pg_dump's stdout into ``target`` (through the
    encryptor with ``backup.encrypt_to``: never in clear on disk), hashed on the way
    and fed to ``pg_restore --list`` at the same time (the verification), so the
    archive is never read a second time; returns what was stored. The directory
    format is written by pg_dump itself (None: verify and hash it afterwards).
    """
    settings = env.settings.backup
    streamed = settings.format == "custom"  # (and encrypted when configured)
    from safe_migrations.engines.postgresql import keepalive_options

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
        while process.poll() is None:
            if time.monotonic() > deadline:
                process.kill()
                process.wait()
                raise BackupError(
                    f"pg_dump did not finish within backup.timeout={settings.timeout:g}s; "
                    "the partial backup was removed. Raise the timeout or use the directory "
                    "format with more jobs."
                )
            show_progress()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=0.2)
        reader.join(timeout=5)
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

    fmt = engine_for(env.dialect).backup_format(env)
    created = now()
    encrypted = env.settings.backup.encrypt_to is not None
    target = folder / (backup_name(env, revision, created, fmt) + (".age" if encrypted else ""))
    started = time.perf_counter()
    try:
        with claimed(target):  # a SIGKILL leaves it to the next run's sweep
            stored, tables, verify_started = _dump_into(env, target, encrypted, progress)
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


def _dump_into(
    env: Environment, target: Path, encrypted: bool, progress: Progress
) -> tuple[Stored | None, int, float]:
    """The engine's dump into ``target``: what was stored (None when hashed afterwards),
    its table count and when verification began."""
    stored: Stored | None = None
    if env.is_sqlite:
        if encrypted:
            stored = backup_sqlite_encrypted(env, target, progress)
            tables = stored.tables
        else:
            tables = backup_sqlite(env, target, progress)
        verify_started = time.perf_counter()
    elif env.is_mysql:
        from safe_migrations.engines import mysqldump

        stored = mysqldump.dump_mysql(env, target, table_count(env), progress)
        verify_started = time.perf_counter()  # read back inside dump_mysql
        tables = stored.tables
    else:
        stored = dump_postgres(env, target, table_count(env), progress)
        verify_started = time.perf_counter()
        tables = stored.tables if stored else verify_postgres(env, target)
    return stored, tables, verify_started


def table_count(env: Environment) -> int:
    """Tables the dump will hold: the denominator of the progress line."""
    from safe_migrations.core.database import connect
    from safe_migrations.engines import engine_for

    with connect(env, role="backup") as connection:
        return engine_for(env.dialect).table_count(connection)


def take_remote_backup(
    env: Environment, revision: str | None, progress: Progress, created: datetime
) -> BackupInfo:
    """pg_dump streamed into the store (encrypted on the way when configured), verified
    before the upload is completed; the manifest goes beside it, a copy into the backup
    folder (what the workflow keeps as an artifact); then the store is pruned."""
    from botocore.exceptions import BotoCoreError, ClientError

    from safe_migrations.stores.s3 import ObjectSink, abort_stale_uploads, store_for

    if env.is_sqlite:
        raise BackupError(
            "backup.storage s3 takes PostgreSQL dumps; keep SQLite backups local "
            "(backup.storage: local)."
        )
    store = store_for(env)
    encrypted = env.settings.backup.encrypt_to is not None
    name = backup_name(env, revision, created, "custom") + (".age" if encrypted else "")
    where = f"s3://{store.bucket}/{store.prefix}"
    started = time.perf_counter()
    try:
        abort_stale_uploads(env, store)
        total = table_count(env)
        sink = ObjectSink(store, name)
        stored = dump_postgres(env, Path(name), total, progress, sink)
        assert stored is not None
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
