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


def split_script(lines: Iterable[bytes]) -> Iterator[bytes | Copy]:
    """Statements (bytes, ending in ``;``) and Copy blocks, in script order.

    A Copy's ``lines`` must be read before the next item is asked for; whatever is
    left unread is skipped.
    """
    source = iter(lines)
    lexer = _Lexer()
    pending = b""
    for line in source:
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
                copy = Copy(statement, _copy_data(source))
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


def _copy_data(source: Iterator[bytes]) -> Iterator[bytes]:
    """COPY data in blocks of whole lines up to the ``\\.`` line: a block per call of the
    server's COPY, where a call per row made a restore of millions of rows slow."""
    block: list[bytes] = []
    size = 0
    for line in source:
        if line.startswith(b"\\.") and line.rstrip(b"\r\n") == b"\\.":
            if block:
                yield b"".join(block)
            return
        block.append(line)
        size += len(line)
        if size >= COPY_BLOCK:
            yield b"".join(block)
            block, size = [], 0
    raise ScriptError("the script ends inside COPY data")
