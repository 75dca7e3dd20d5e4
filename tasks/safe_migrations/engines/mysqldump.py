"""MySQL and MariaDB backups and restores.

Backup: ``mariadb-dump`` (or ``mysqldump`` for a MySQL server) with
``--single-transaction --routines --triggers --events``, gzip-compressed by a thread
on the way into a new 0600 file or the S3 store (encrypted with ``encrypt_to``), hashed
as it is stored, and checked from the stream as it passes: it must end with the dump's
completion marker. The password reaches the child through a
option file read through a pipe (``--defaults-extra-file=/dev/fd/N``): never argv,
MYSQL_PWD or a file on disk.

Restore: the dump is replayed on our own connection, statement by statement (no
``mariadb`` client, so nothing in a dump runs as a client command), first into a
scratch database to prove it replays whole, then into the target; objects the dump
does not hold are dropped after that clean replay. MySQL cannot do this in one
transaction (DDL commits), so a failure midway is recorded (partial.py) and the next
run's health step blocks until a restore completes.

Kept long: dump, read-back and replay share the dump's format (its statements, markers
and the names check in mysqlnames.py); each half depends on what the other writes.
"""

from __future__ import annotations

import contextlib
import gzip
import re
import subprocess
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from safe_migrations.core.config import Environment
from safe_migrations.core.errors import BackupError, first_line
from safe_migrations.pipeline.partial import shorten
from safe_migrations.stores.backupfiles import (
    CHUNK,
    FileSink,
    Progress,
    Stored,
    child_environment,
)

COMPLETION_MARKER = b"-- Dump completed"
TOOL_TABLES = ("safe_migrations_partial", "safe_migrations_rehearsals")  # never dumped nor dropped
# Client commands of the mariadb/mysql client; a dump never holds one (DELIMITER aside).
_CLIENT_COMMAND = re.compile(
    rb"\s*(\\|(USE|CONNECT|SOURCE|SYSTEM|PAGER|TEE|EDIT|QUIT|EXIT)\b)", re.IGNORECASE
)
_CREATE_TABLE = re.compile(rb"^CREATE TABLE `((?:[^`]|``)+)`")


class ScriptError(Exception):
    """A dump holds what mariadb-dump never writes."""


def _option_value(value: str) -> str:
    """A value for a MySQL option file: double-quoted, with the escapes the client reads."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def option_lines(url: str) -> bytes:
    """The [client] section (host, port, user, password, socket) for a MySQL client."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    lines = ["[client]"]
    for key, value in (
        ("host", parsed.host or "localhost"),
        ("port", str(parsed.port or 3306)),
        ("user", parsed.username),
        ("password", parsed.password),
        ("socket", parsed.query.get("unix_socket")),
    ):
        if value:
            lines.append(f"{key}={_option_value(str(value))}")
    return ("\n".join(lines) + "\n").encode("utf-8")


@contextlib.contextmanager
def option_file(url: str) -> Iterator[tuple[str, int]]:
    """[client] host, port, user and password for ``--defaults-extra-file``, handed over
    through a pipe: no file holds the password, so a SIGKILL leaves none behind.
    Yields the path the child opens (``/dev/fd/N``) and the descriptor to pass it."""
    import os

    content = option_lines(url)
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, content)  # far below a pipe's buffer: never blocks
        os.close(write_end)
        write_end = -1
        yield f"/dev/fd/{read_end}", read_end
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)


def dump_program(env: Environment) -> str:
    """mariadb-dump for a MariaDB server, mysqldump for MySQL; the other as a fallback.
    The server is asked only when both are installed and are different programs."""
    import os
    import shutil

    from sqlalchemy import text

    from safe_migrations.core.database import connect

    installed = {shutil.which(name) for name in ("mariadb-dump", "mysqldump")} - {None}
    if len({os.path.realpath(path) for path in installed if path}) == 1:
        return str(next(iter(sorted(p for p in installed if p))))
    with connect(env, role="backup") as connection:
        version = str(connection.execute(text("SELECT VERSION()")).scalar())
    names = (
        ("mariadb-dump", "mysqldump")
        if "mariadb" in version.lower()
        else ("mysqldump", "mariadb-dump")
    )
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    raise BackupError(
        f"{names[0]} is not on PATH; install the client (Debian: apt-get install "
        "mariadb-client) or add its folder to PATH."
    )


def _database(env: Environment) -> str:
    from sqlalchemy.engine import make_url

    name = make_url(env.url).database
    if not name:
        raise BackupError(f"The {env.name} URL names no database to back up; add /NAME to it.")
    return name


def dump_mysql(
    env: Environment, target: Path, tables_total: int, progress: Progress, sink: Any = None
) -> Stored:
    """The dump into ``target`` (or a store's ``sink``), gzip-compressed by a thread beside
    the dump (zlib works without the interpreter lock), encrypted on the way with
    ``backup.encrypt_to``, hashed as it is stored and checked from the stream itself: it
    must end with the completion marker (never read again). A partial file (or upload)
    is removed on any failure; a sink is committed only when the dump ended cleanly.

    Kept long: the child, the threads beside it and the clean-up share one try/finally,
    so no failure leaves a half-written file, an open upload or a running child."""
    settings = env.settings.backup
    database = _database(env)
    program = dump_program(env)
    sink = sink if sink is not None else FileSink(target)
    stream = _DumpStream(settings.compression or 6)
    stored = Stored()
    errors: list[str] = []
    done = [0]
    dump: subprocess.Popen[bytes] | None = None
    threads: list[threading.Thread] = []
    try:
        with option_file(env.url) as (options, descriptor):
            dump = subprocess.Popen(
                [
                    program,
                    f"--defaults-extra-file={options}",  # must come first
                    "--single-transaction",
                    "--routines",
                    "--triggers",
                    "--events",
                    "--hex-blob",
                    "--no-tablespaces",
                    "--default-character-set=utf8mb4",
                    "--verbose",
                    *(f"--ignore-table={database}.{table}" for table in TOOL_TABLES),
                    "--",
                    database,
                ],
                env=child_environment(),
                pass_fds=(descriptor,),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        child = dump

        def read_stderr() -> None:
            assert child.stderr is not None
            for raw in child.stderr:
                line = raw.decode(errors="replace")
                if "Retrieving table structure" in line:
                    done[0] += 1
                elif "error" in line.lower() or "got errno" in line.lower():
                    errors.append(line.strip())

        threads = [
            *_storing(child, stream, sink, settings.encrypt_to, stored),
            threading.Thread(target=read_stderr, daemon=True),
        ]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + settings.timeout
        while child.poll() is None:
            if time.monotonic() > deadline:
                raise BackupError(
                    f"{Path(program).name} did not finish within backup.timeout="
                    f"{settings.timeout:g}s; the partial backup was removed. Raise the timeout."
                )
            progress.show(
                f"backup: {done[0]}/{tables_total} tables, "
                f"{sink.written / 1024 / 1024:,.1f} MB written"
            )
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=0.2)
        for thread in threads:
            thread.join(timeout=max(1.0, deadline - time.monotonic()))
        if child.returncode != 0:
            detail = errors[0] if errors else f"exit code {child.returncode}"
            raise BackupError(f"{Path(program).name} failed: {detail}")
        if stored.error is not None:
            raise stored.error
        stored.tables = stream.verified(Path(sink.path).name)
        sink.commit()  # only now: the dump ended cleanly and its end was seen
        return stored
    except BaseException:
        if dump is not None and dump.poll() is None:
            dump.kill()
            dump.wait()
        for thread in threads:
            thread.join(timeout=30)
        sink.abort()
        raise
    finally:
        progress.done()


class _DumpStream:
    """The dump's text on its way to the compressor: its end and its tables seen as it
    passes, so the backup is checked without being read a second time."""

    TABLE = b"\nCREATE TABLE "

    def __init__(self, level: int) -> None:
        import zlib

        self.compressor = zlib.compressobj(level, zlib.DEFLATED, 31)  # 31: a gzip stream
        self.tail = b""
        self.tables = 0

    def compressed(self, source: int) -> Iterator[bytes]:
        """The gzip stream of everything read from the descriptor ``source``."""
        import os

        edge = len(self.TABLE) - 1
        while chunk := os.read(source, CHUNK):
            self.tables += chunk.count(self.TABLE)
            self.tables += (self.tail[-edge:] + chunk[:edge]).count(self.TABLE)
            self.tail = (self.tail + chunk[-4096:])[-4096:]
            yield self.compressor.compress(chunk)
        yield self.compressor.flush()

    def verified(self, name: str) -> int:
        """The count of tables, once the stream ended with the dump's completion marker."""
        lines = [line for line in self.tail.splitlines() if line.strip()]
        if not lines or not lines[-1].startswith(COMPLETION_MARKER):
            raise BackupError(
                f"The backup {name} is incomplete: it does not end with the dump's "
                "completion marker ('-- Dump completed')."
            )
        return self.tables


def _storing(
    dump: subprocess.Popen[bytes],
    stream: _DumpStream,
    sink: Any,
    recipient_text: str | None,
    stored: Stored,
) -> list[threading.Thread]:
    """The threads that carry the dump into ``sink``: one compressing (and storing), and
    with ``recipient_text`` a second encrypting what the first hands it through a pipe.
    Each hands its failure to the main thread in ``stored.error``."""
    import os

    from safe_migrations.stores.encryption import HashingWriter, parse_recipient

    assert dump.stdout is not None
    source = dump.stdout.fileno()
    with contextlib.suppress(OSError, AttributeError):  # fewer, larger reads where allowed
        import fcntl

        fcntl.fcntl(source, fcntl.F_SETPIPE_SZ, CHUNK)
    recipient = parse_recipient(recipient_text, "backup.encrypt_to") if recipient_text else None
    writer = HashingWriter(sink)

    def stored_in_sink() -> None:
        sink.finish()
        stored.sha256, stored.size = writer.digest.hexdigest(), writer.size

    if recipient is None:

        def compress() -> None:
            try:
                for piece in stream.compressed(source):
                    writer.write(piece)
                stored_in_sink()
            except BaseException as exc:
                stored.error = exc
                _drain(source)

        return [threading.Thread(target=compress, daemon=True)]
    read_end, write_end = os.pipe()
    plain, packed = os.fdopen(read_end, "rb"), os.fdopen(write_end, "wb")

    def compress_into_pipe() -> None:
        try:
            with packed:
                for piece in stream.compressed(source):
                    packed.write(piece)
        except BaseException as exc:
            stored.error = stored.error or exc
            _drain(source)

    def encrypt() -> None:
        _encrypt(plain, writer, recipient, stored)
        if stored.error is None:
            stored_in_sink()

    return [
        threading.Thread(target=compress_into_pipe, daemon=True),
        threading.Thread(target=encrypt, daemon=True),
    ]


def _drain(source: int) -> None:
    """Read a failed stream to its end: the dump finishes rather than block on a pipe."""
    import os

    with contextlib.suppress(OSError):
        while os.read(source, CHUNK):
            pass


def _encrypt(plain: Any, writer: Any, recipient: Any, stored: Stored) -> None:
    """Thread body: the compressed stream from the pipe, encrypted into ``writer``."""
    from safe_migrations.stores.encryption import encrypt_stream

    try:
        with plain:
            encrypt_stream(plain, writer, recipient)
    except BaseException as exc:
        stored.error = stored.error or exc
        with contextlib.suppress(OSError, ValueError):
            while plain.read(CHUNK):
                pass


def dump_lines(path: Path) -> Iterator[bytes]:
    """The dump's lines, decompressed; BackupError when it does not decompress."""
    try:
        with gzip.open(path, "rb") as handle:
            yield from handle
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise BackupError(f"The backup {path.name} does not decompress: {exc}") from None


def verify_dump(path: Path) -> int:
    """Read the whole dump back: it decompresses and ends with the completion marker.
    Returns its count of tables."""
    tables, last = 0, b""
    for line in dump_lines(path):
        if line.startswith(b"CREATE TABLE "):
            tables += 1
        if line.strip():
            last = line
    if not last.startswith(COMPLETION_MARKER):
        raise BackupError(
            f"The backup {path.name} is incomplete: it does not end with the dump's "
            "completion marker ('-- Dump completed')."
        )
    return tables


def dump_tables(path: Path) -> list[str]:
    """Names of the tables a dump creates (for a foreign backup's description)."""
    names = []
    for line in dump_lines(path):
        match = _CREATE_TABLE.match(line)
        if match:
            names.append(match.group(1).replace(b"``", b"`").decode())
    return names


def statements(lines: Iterable[bytes]) -> Iterator[str]:
    """The dump's statements, as the client would send them: comment lines skipped,
    DELIMITER honoured. A dump writes every string on one line (newlines escaped), so a
    statement ends where a line ends with the delimiter."""
    delimiter = b";"
    buffer: list[bytes] = []
    for line in lines:
        stripped = line.strip()
        if not buffer:
            if not stripped or stripped.startswith(b"-- ") or stripped == b"--":
                continue
            if stripped[:10].upper() == b"DELIMITER ":
                delimiter = stripped[10:].strip()
                continue
            if _CLIENT_COMMAND.match(stripped):
                raise ScriptError(f"a client command ({stripped[:40].decode(errors='replace')})")
        buffer.append(line)
        if stripped.endswith(delimiter):
            statement = b"".join(buffer).strip()[: -len(delimiter)]
            buffer = []
            if statement.strip():
                yield statement.decode("utf-8")
    if b"".join(buffer).strip():
        raise ScriptError("an unterminated statement at its end")


def checked(statement: str, database: str) -> str:
    """The statement, unless it reaches past ``database``: another database named, or a
    file written on the server. Checked before it runs, so nothing beyond it is touched."""
    from safe_migrations.engines.mysqlnames import other_databases, writes_server_file

    others = other_databases(statement, database)
    if others:
        names = ", ".join(f"`{name}`" for name in sorted(others))
        raise ScriptError(
            f"a statement naming the database {names}, not the one being restored into "
            f"({shorten(statement, 80)})"
        )
    if writes_server_file(statement):
        raise ScriptError(f"a statement writing a file on the server ({shorten(statement, 80)})")
    return statement


def _replay(connection: Any, path: Path, database: str) -> int:
    """Every statement of the dump on a PyMySQL connection whose database is
    ``database``; returns how many ran."""
    count = 0
    with connection.cursor() as cursor:
        for statement in statements(dump_lines(path)):
            cursor.execute(checked(statement, database))
            count += 1
    connection.commit()
    return count


def _raw(env: Environment, database: str | None = None) -> Any:
    from safe_migrations.core.database import make_engine

    target = env
    if database is not None:
        from sqlalchemy.engine import make_url

        url = make_url(env.url).set(database=database).render_as_string(hide_password=False)
        target = replace(env, url=url)
    # Lock waits obey migration.lock_timeout (whole seconds on MySQL): an application
    # holding a table makes the restore fail instead of queueing traffic behind it.
    lock_timeout = env.settings.migration.lock_timeout or None
    return make_engine(target, role="restore", lock_timeout=lock_timeout).raw_connection()


INVENTORY_SQL = """
SELECT 'TABLE', TABLE_NAME, TABLE_TYPE FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s
UNION ALL
SELECT ROUTINE_TYPE, ROUTINE_NAME, '' FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = %s
UNION ALL
SELECT 'EVENT', EVENT_NAME, '' FROM information_schema.EVENTS WHERE EVENT_SCHEMA = %s
"""


def _inventory(cursor: Any, database: str) -> set[tuple[str, str, str]]:
    cursor.execute(INVENTORY_SQL, (database, database, database))
    return {(kind, name, kind_of) for kind, name, kind_of in cursor.fetchall()}


def _quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def restore_mysql(env: Environment, path: Path) -> None:
    """Prove the dump replays whole into a scratch database, then replay it into the
    target and drop what it does not hold.

    Kept long: the scratch replay, the real replay and the record of a partial restore
    share one try block, so every failure leaves a known state on record."""
    from pymysql import MySQLError

    from safe_migrations.pipeline import partial

    verify_dump(path)
    database = _database(env)
    scratch = f"{env.settings.check.scratch_prefix}{uuid.uuid4().hex[:12]}"
    admin = _raw(env)
    try:
        with admin.cursor() as cursor:
            try:
                cursor.execute(
                    "SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME "
                    "FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s",
                    (database,),
                )
                charset, collation = cursor.fetchone()
                cursor.execute(
                    f"CREATE DATABASE {_quote(scratch)} CHARACTER SET {charset} COLLATE {collation}"
                )
            except MySQLError as exc:
                raise BackupError(
                    f"Restoring {path.name} needs a scratch database to prove the dump first, "
                    f"and creating one failed: {first_line(exc)}; GRANT CREATE (and DROP) on "
                    f"`{env.settings.check.scratch_prefix}%`.* to the role. Nothing was changed."
                ) from None
        try:
            proof = _raw(env, scratch)
            try:
                _replay(proof, path, scratch)
                with proof.cursor() as cursor:
                    held = _inventory(cursor, scratch)
            finally:
                proof.close()
        except (MySQLError, ScriptError, UnicodeDecodeError) as exc:
            what = (
                f"it holds {exc}, which mariadb-dump never writes"
                if isinstance(exc, ScriptError)
                else first_line(exc)
            )
            raise BackupError(
                f"Refusing to restore {path.name}: replaying it into a scratch database failed "
                f"({what}). The {env.name} database was not touched."
            ) from None
        finally:
            with admin.cursor() as cursor:
                cursor.execute(f"DROP DATABASE IF EXISTS {_quote(scratch)}")
        partial.record(env, "restore", path.name, [], "restore in progress", None)
        target = _raw(env)
        try:
            _replay(target, path, database)
            with target.cursor() as cursor:
                cursor.execute("SET FOREIGN_KEY_CHECKS = 0")
                for kind, name, kind_of in sorted(_inventory(cursor, database) - held):
                    if name in TOOL_TABLES:
                        continue
                    noun = "VIEW" if kind_of == "VIEW" else kind
                    cursor.execute(f"DROP {noun} IF EXISTS {_quote(name)}")
                cursor.execute("SET FOREIGN_KEY_CHECKS = 1")
            target.commit()
        except (MySQLError, ScriptError, UnicodeDecodeError) as exc:
            partial.note_error(env, "restore", path.name, first_line(exc))
            raise BackupError(
                f"Restoring {path.name} into {env.name} failed midway: {first_line(exc)}. Some "
                "tables may be from the backup and others not; the backup itself is intact. "
                "The next run's health step blocks until `invoke restore` completes."
            ) from None
        finally:
            target.close()
        _close_restores(env)
    finally:
        admin.close()


def _close_restores(env: Environment) -> None:
    """A restore that completed makes every earlier unfinished one moot."""
    from safe_migrations.core.database import connect
    from safe_migrations.pipeline.partial import close, unresolved
    from safe_migrations.pipeline.report import current_user

    with connect(env, role="record") as connection:
        for row in unresolved(connection, kind="restore"):
            close(connection, row["id"], "restored", current_user())
        connection.commit()
