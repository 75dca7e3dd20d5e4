"""Keep passwords out of everything the tools print or write."""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import quote, quote_plus, unquote

MASK = "***"


def mask_url(url: str) -> str:
    """The URL with its password replaced by ``***``; safe to print or store."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return "<unparseable database URL>"


def url_password(url: str) -> str | None:
    """The password a URL carries, or None."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        password = make_url(url).password
    except (ArgumentError, ValueError):
        return None
    return None if password is None else str(password)


_URL_PASSWORD = re.compile(r"(?P<head>\b[a-z][a-z0-9+.-]*://[^:/@\s]+:)[^@/\s]+@", re.I)


def secret_forms(secret: str) -> set[str]:
    """The ways a password shows up in text: raw, URL-quoted (several styles, SQLAlchemy
    1.4's quoting only ``:@/`` among them), and each of those JSON-escaped."""
    quoted = {
        secret,
        unquote(secret),
        quote(secret, safe=""),
        quote(secret, safe=" +"),
        quote_plus(secret),
        re.sub(r"[:@/]", lambda m: f"%{ord(m.group(0)):02X}", secret),
    }
    forms = quoted | {json.dumps(form)[1:-1] for form in quoted}
    return {form for form in forms if form}


def redact(text: str, secrets: list[str | None]) -> str:
    """``text`` with each secret in any of its forms, and any URL's password, masked."""
    for secret in secrets:
        if not secret:
            continue
        for form in sorted(secret_forms(secret), key=len, reverse=True):
            text = text.replace(form, MASK)
    return _URL_PASSWORD.sub(lambda m: f"{m.group('head')}{MASK}@", text)


def redact_data(data: Any, secrets: list[str | None]) -> Any:
    """``redact`` applied to every string inside lists and dicts."""
    if isinstance(data, str):
        return redact(data, secrets)
    if isinstance(data, dict):
        return {key: redact_data(value, secrets) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [redact_data(value, secrets) for value in data]
    return data
