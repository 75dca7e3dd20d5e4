"""Text a user controls (revision messages, names, errors) made safe for where it lands.

Markdown reports, issue bodies and step summaries are rendered by GitHub: a
message must not ping people, inject headings or HTML, or close a code fence.
Terminals interpret escape sequences: a message must not move the cursor,
recolour or hide the confirmation prompt.
"""

from __future__ import annotations

import re

# C0 controls but tab and newline, DEL, C1 controls, and the bidirectional overrides
# that make text read differently from what it is.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])")
_MARKDOWN = re.compile(r"([\\`*_{}\[\]()#+!|~>-])")
ZERO_WIDTH_SPACE = "\u200b"


def terminal(text: str) -> str:
    """Printable text: escape sequences and other control characters removed."""
    return _CONTROL.sub("", _ANSI.sub("", text))


def markdown_inline(text: object) -> str:
    """One line of plain text in Markdown: no HTML, no formatting, no mention, no new line."""
    value = terminal(str(text)).replace("\r", "").replace("\n", " ").replace("\t", " ")
    value = value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    value = _MARKDOWN.sub(r"\\\1", value)
    return value.replace("@", "@" + ZERO_WIDTH_SPACE)


def _fence_for(text: str, minimum: int) -> str:
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    return "`" * max(minimum, longest + 1)


def markdown_code(text: object) -> str:
    """An inline code span that no backtick inside can close."""
    value = terminal(str(text)).replace("\n", " ")
    fence = _fence_for(value, 1)
    padding = " " if value.startswith("`") or value.endswith("`") else ""
    return f"{fence}{padding}{value}{padding}{fence}"


def markdown_block(text: object) -> str:
    """A fenced code block that no line inside can close (mentions and HTML stay inert)."""
    value = terminal(str(text)).rstrip("\n")
    fence = _fence_for(value, 3)
    return f"{fence}text\n{value}\n{fence}"
