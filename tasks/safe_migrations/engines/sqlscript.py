"""Split a ``pg_restore --file=-`` script into SQL statements and COPY data.

Restore replays the script on its own connection instead of piping it into
psql, so nothing inside an archive can run as a client command (``\\!``,
``\\copy ... PROGRAM``, ``\\o``): there is no client to run it. A backslash
outside quotes, comments and COPY data is what psql would have taken as a
meta-command; it means the archive was tampered with, and the whole script is
refused. Only pg_restore's own ``\\restrict``/``\\unrestrict`` lines are skipped.

Works on bytes: every server encoding keeps ASCII bytes ASCII, so quotes,
semicolons and backslashes are found without decoding.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

PSQL_GUARDS = (b"\\restrict ", b"\\unrestrict ")
_NORMAL = re.compile(rb"""['";\\]|\$(?:[A-Za-z_][A-Za-z0-9_]*)?\$|--|/\*""")
_COPY_FROM_STDIN = re.compile(rb"^COPY\s.+\sFROM\s+stdin$", re.IGNORECASE | re.DOTALL)
_IDENTIFIER_BYTE = re.compile(rb"[A-Za-z0-9_$\x80-\xff]")


class ScriptError(ValueError):
    """The script holds something a pg_restore script never does."""


@dataclass
class Copy:
    """A ``COPY ... FROM stdin`` statement and its data, in blocks of whole lines (the
    ``\\.`` line excluded)."""

    sql: bytes
    lines: Iterator[bytes]


class _Lexer:
    """Tracks quotes, dollar quotes and comments across lines; finds statement ends."""

    def __init__(self) -> None:
        self.quote: bytes | None = None  # b"'", b"E'", b'"', a dollar tag, or b"/*"
        self.depth = 0  # nesting of /* */ comments

    @property
    def idle(self) -> bool:
        return self.quote is None

    def split(self, line: bytes) -> tuple[list[bytes], bytes]:
        """(statements completed on this line, the unfinished rest)."""
        done: list[bytes] = []
        start = position = 0
        kept = bytearray()  # the current statement's text on this line, comments removed
        while position < len(line):
            if self.quote is not None:
                position = self._close(line, position)
                continue
            match = _NORMAL.search(line, position)
            if match is None:
                break
            token = match.group()
            if token == b"--":
                kept += line[start : match.start()]
                start = position = len(line)
                kept += b"\n"
                break
            if token == b"\\":
                raise ScriptError(
                    "a psql meta-command outside COPY data: "
                    + line.strip()[:80].decode(errors="replace")
                )
            if token == b";":
                kept += line[start : match.end()]
                done.append(bytes(kept))
                kept.clear()
                start = position = match.end()
                continue
            if token == b"'" and _escape_string(line, match.start()):
                token = b"E'"
            elif token.startswith(b"$") and _after_identifier(line, match.start()):
                position = match.start() + 1  # part of a name like a$b, not a dollar quote
                continue
            self.quote = token
            self.depth = 1 if token == b"/*" else 0
            position = match.end()
        kept += line[start:]
        return done, bytes(kept)

    def _close(self, line: bytes, position: int) -> int:
        """Where the open quote or comment ends on this line (or the line's end)."""
        quote = self.quote
        assert quote is not None
        if quote == b"/*":
            while position < len(line):
                nxt = min(
                    (i for i in (line.find(b"/*", position), line.find(b"*/", position)) if i >= 0),
                    default=-1,
                )
                if nxt < 0:
                    return len(line)
                self.depth += 1 if line.startswith(b"/*", nxt) else -1
                position = nxt + 2
                if self.depth == 0:
                    self.quote = None
                    return position
            return position
        if quote == b"E'":
            while position < len(line):
                char = line[position : position + 1]
                if char == b"\\":
                    position += 2
                elif char == b"'":
                    self.quote = None
                    return position + 1
                else:
                    position += 1
            return position
        closing = b"'" if quote == b"'" else quote  # '' inside '...' reopens at once
        end = line.find(closing, position)
        if end < 0:
            return len(line)
        self.quote = None
        return end + len(closing)


def _escape_string(line: bytes, quote_at: int) -> bool:
    """An E'...' string: backslashes escape there."""
    return (
        quote_at > 0
        and line[quote_at - 1 : quote_at] in (b"E", b"e")
        and (quote_at == 1 or not _IDENTIFIER_BYTE.match(line, quote_at - 2))
    )


def _after_identifier(line: bytes, dollar_at: int) -> bool:
    return dollar_at > 0 and _IDENTIFIER_BYTE.match(line, dollar_at - 1) is not None


def split_script(script: BinaryIO | Iterable[bytes]) -> Iterator[bytes | Copy]:
    """Statements (bytes, ending in ``;``) and Copy blocks, in script order.

    ``script``: a binary stream (read a chunk at a time) or pieces of the script cut
    anywhere. A Copy's ``lines`` must be read before the next item is asked for;
    whatever is left unread is skipped.
    """
    source = _Buffer(script)
    lexer = _Lexer()
    pending = b""
    for line in source.lines():
        if lexer.idle and not pending.strip() and line.lstrip().startswith(b"\\"):
            if line.startswith(PSQL_GUARDS):
                continue
            raise ScriptError(
                "a psql meta-command outside COPY data: "
                + line.strip()[:80].decode(errors="replace")
            )
        done, rest = lexer.split(line)
        for index, part in enumerate(done):
            statement = (pending + part).strip()
            pending = b""
            if _COPY_FROM_STDIN.match(statement.rstrip(b";").strip()):
                if index != len(done) - 1 or rest.strip():
                    raise ScriptError("text after COPY ... FROM stdin on the same line")
                copy = Copy(statement, source.copy_data())
                yield copy
                for _unread in copy.lines:
                    pass
                rest = b""
            else:
                yield statement
        pending += rest
    if pending.strip() or not lexer.idle:
        raise ScriptError("the script ends inside a statement, quote or comment")


COPY_BLOCK = 1 << 16  # bytes of whole data lines per block handed to the server
READ_SIZE = 1 << 16  # bytes asked of a stream per read


class _Buffer:
    """The script's bytes as they arrive: lines for the statements, blocks of whole lines
    for COPY data. COPY data is searched for its end line with ``bytes.find``, never
    a line at a time in Python: a restore of millions of rows spent most of its time
    in a per-line loop (5.3 of 5.9 s of COPY on 7,000,000 pgbench rows)."""

    def __init__(self, script: BinaryIO | Iterable[bytes]) -> None:
        if hasattr(script, "read"):
            stream: Any = script
            read = getattr(stream, "read1", stream.read)
            self._chunks: Iterator[bytes] = iter(lambda: read(READ_SIZE), b"")
        else:
            self._chunks = iter(script)
        self._data = bytearray()
        self._start = 0  # where the unread bytes begin: always the start of a line

    def _more(self) -> bool:
        """Append the next chunk, dropping what was read (False at the script's end).
        Positions after ``_start`` are best kept relative to it across a call."""
        for chunk in self._chunks:
            if chunk:
                del self._data[: self._start]
                self._start = 0
                self._data += chunk
                return True
        return False

    def _take(self, end: int) -> bytes:
        piece = bytes(self._data[self._start : end])
        self._start = end
        return piece

    def lines(self) -> Iterator[bytes]:
        """The next line, with its newline (the last may have none)."""
        seen = 0  # bytes after _start known to hold no newline
        while True:
            end = self._data.find(b"\n", self._start + seen)
            if end >= 0:
                seen = 0
                yield self._take(end + 1)
                continue
            seen = len(self._data) - self._start
            if not self._more():
                if seen:
                    yield self._take(len(self._data))
                return

    def _end_line(self, position: int) -> tuple[int, int] | None:
        """(start, end) of the first complete ``\\.`` line at or after ``position`` (a
        line start), or None when none is buffered yet."""
        data = self._data
        at = position if data.startswith(b"\\.", position) else data.find(b"\n\\.", position)
        while at >= 0:
            if data[at] == 0x0A:  # found as "\n\\.": the line starts after the newline
                at += 1
            end = data.find(b"\n", at)
            if end < 0:
                return None
            if data[at:end].rstrip(b"\r") == b"\\.":
                return at, end + 1
            at = data.find(b"\n\\.", end)
        return None

    def copy_data(self) -> Iterator[bytes]:
        """COPY data up to its ``\\.`` line, in blocks of whole lines: a block per call of
        the server's COPY, where a call per row made a restore of millions of rows slow."""
        clean = 0  # bytes after _start that are whole lines and hold no end line
        while True:
            found = self._end_line(self._start + clean)
            if found is not None:
                at, after = found
                if at > self._start:
                    yield self._take(at)
                self._start = after
                return
            clean = max(0, self._data.rfind(b"\n", self._start) + 1 - self._start)
            if clean >= COPY_BLOCK:
                yield self._take(self._start + clean)
                clean = 0
            if not self._more():
                break
        if self._data[self._start + clean :] != b"\\.":  # an end line without newline
            raise ScriptError("the script ends inside COPY data")
        if clean > 0:
            yield self._take(self._start + clean)
        self._start = len(self._data)
