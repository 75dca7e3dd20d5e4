"""Keep passwords out of everything the tools print or write."""

from __future__ import annotations

from urllib.parse import unquote

MASK = "***"


def mask_url(url: str) -> str:
    """The URL with its password replaced by ``***``; safe to print or store."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return "<unparseable database URL>"
    return parsed.render_as_string(hide_password=True)


def url_password(url: str) -> str | None:
    """The password a URL carries, or None."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        password = make_url(url).password
    except ArgumentError:
        return None
    return None if password is None else str(password)


def redact(text: str, secrets: list[str | None]) -> str:
    """``text`` with every occurrence of each secret (raw or URL-encoded) masked."""
    from urllib.parse import quote

    for secret in secrets:
        if not secret:
            continue
        for form in {secret, quote(secret, safe=""), unquote(secret)}:
            if form:
                text = text.replace(form, MASK)
    return text
