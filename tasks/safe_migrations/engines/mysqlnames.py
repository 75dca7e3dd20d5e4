"""Which databases a MySQL statement names: read from its tokens, never grepped.

A restore replays a dump into one database at a time (the scratch proof, then the
target); a statement that names another database (```prod`.`x```, ``USE prod``,
``DROP DATABASE prod``) would reach past it, so restore refuses the whole dump.
mariadb-dump of one database never qualifies a name with a database.

The tokenizer knows MySQL's quoting (backticks, single and double quotes with
backslash escapes), its comments, and its executable comments (``/*!50003 ... */``,
whose body the server runs, so it is read as code). A dotted name is a database's
where MySQL reads it so: three parts (``db.table.column``), or two parts in an
object position (after ``TABLE``, ``INTO``, ``FROM``, ``JOIN``, ``UPDATE``,
``REFERENCES``, a trigger's ``ON``..., and the comma lists that follow them); a
two-part name in an expression is ``table.column``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<line_comment>(?:--(?=\s|$)|\#)[^\n]*)
  | (?P<exec_open>/\*M?!\d*)
  | (?P<comment>/\*.*?\*/)
  | (?P<exec_close>\*/)
  | (?P<backtick>`(?:[^`]|``)*`)
  | (?P<string>'(?:[^'\\]|\\.|'')*')
  | (?P<dquoted>"(?:[^"\\]|\\.|"")*")
  | (?P<word>[A-Za-z0-9_$\x80-\U0010ffff]+)
  | (?P<dot>\.)
  | (?P<star>\*)
  | (?P<comma>,)
  | (?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)

# After these words the next name is an object's (a table, view, routine...).
_OBJECT_WORDS = frozenset(
    {"TABLE", "TABLES", "INTO", "FROM", "JOIN", "UPDATE", "VIEW", "PROCEDURE", "FUNCTION"}
    | {"EVENT", "TRIGGER", "REFERENCES", "CALL", "TO", "RENAME", "INDEX", "TRUNCATE", "HANDLER"}
)
# After these words the next single name is a database itself.
_DATABASE_WORDS = frozenset({"DATABASE", "SCHEMA", "USE"})
# Words that may stand between an object word and its name.
_FILLER = frozenset({"IF", "NOT", "EXISTS", "TO", "AS", "LOW_PRIORITY", "IGNORE", "QUICK"})
# Words after an object name that keep a comma list of objects going.
_LIST_TAIL = frozenset({"READ", "WRITE", "LOCAL", "AS"})


@dataclass(frozen=True)
class _Token:
    kind: str  # name, word, dot, star, comma, string, other
    text: str  # a name unquoted; a word upper-cased


def _tokens(statement: str) -> list[_Token]:
    found: list[_Token] = []
    for match in _TOKEN.finditer(statement):
        kind = match.lastgroup or "other"
        text = match.group()
        if kind in {"space", "line_comment", "comment", "exec_open", "exec_close"}:
            continue  # an executable comment's body is code: its markers alone go
        if kind == "backtick":
            found.append(_Token("name", text[1:-1].replace("``", "`")))
        elif kind == "dquoted":  # an identifier under ANSI_QUOTES, a string otherwise
            found.append(_Token("name", text[1:-1].replace('""', '"')))
        elif kind == "word":
            found.append(_Token("word", text))
        else:
            found.append(_Token(kind, text))
    return found


def _chain(tokens: list[_Token], start: int) -> tuple[list[str], int]:
    """The dotted name starting at ``start`` (its parts) and the index after it."""
    parts: list[str] = []
    i = start
    while i < len(tokens) and tokens[i].kind in {"name", "word", "star"}:
        parts.append(tokens[i].text)
        if i + 1 < len(tokens) and tokens[i + 1].kind == "dot":
            i += 2
            continue
        i += 1
        break
    return parts, i


def databases_named(statement: str) -> set[str]:
    """Every database the statement names, as MySQL would read it."""
    tokens = _tokens(statement)
    named: set[str] = set()
    expect: str | None = None  # "object" or "database": what the next name is
    i = 0
    while i < len(tokens):
        token = tokens[i]
        upper = token.text.upper() if token.kind == "word" else ""
        if upper in _OBJECT_WORDS:
            expect, i = "object", i + 1
            continue
        if upper in _DATABASE_WORDS:
            expect, i = "database", i + 1
            continue
        if expect is not None and upper in _FILLER:
            i += 1
            continue
        if token.kind not in {"name", "word", "star"} or upper == "ON":
            expect, i = None, i + 1
            continue
        parts, after = _chain(tokens, i)
        follower = tokens[after].text.upper() if after < len(tokens) else ""
        after_on = i > 0 and tokens[i - 1].text.upper() == "ON"
        if (
            len(parts) >= 3
            or (expect == "database" and len(parts) == 1)
            or (expect == "object" and len(parts) == 2)
            or (len(parts) == 2 and parts[1] == "*")  # GRANT ... ON db.*
            or (after_on and len(parts) == 2 and follower in {"FOR", "("})  # trigger, index
        ):
            named.add(parts[0])
        in_list, expect, i = expect == "object", None, after
        if in_list:  # an alias or READ/WRITE, then a comma: the list of objects goes on
            while i < len(tokens) and (
                tokens[i].kind == "name"
                or (tokens[i].kind == "word" and tokens[i].text.upper() in _LIST_TAIL)
                or (
                    tokens[i].kind == "word"
                    and i + 1 < len(tokens)
                    and tokens[i + 1].kind == "comma"
                )
            ):
                i += 1
            if i < len(tokens) and tokens[i].kind == "comma":
                expect, i = "object", i + 1
    return named


def other_databases(statement: str, database: str) -> set[str]:
    """The databases the statement names besides ``database`` (exactly as spelled:
    database names are case-sensitive on most servers)."""
    return {name for name in databases_named(statement) if name != database}


def writes_server_file(statement: str) -> bool:
    """``SELECT ... INTO OUTFILE`` writes a file on the database server."""
    words = [t.text.upper() for t in _tokens(statement) if t.kind == "word"]
    return any(
        a == "INTO" and b in {"OUTFILE", "DUMPFILE"} for a, b in zip(words, words[1:], strict=False)
    )
