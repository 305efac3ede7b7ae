"""Credentials inside URLs and text, masked for display: logs, API answers, CLI output.

`https://user:pw@host/x?token=abc&day=1` → `https://user:****@host/x?token=****&day=1`: the password
of the userinfo part, and the value of query parameters whose name looks like a credential. The
stored definition keeps the real value; only what is shown is masked.
"""

from __future__ import annotations

import re

MASK = "****"
SECRET_NAME_PARTS = ("token", "secret", "password", "passwd", "pwd", "auth", "key", "sig", "credential")

_USERINFO = re.compile(r"(?P<pre>[A-Za-z][A-Za-z0-9+.\-]*://[^/\s:@]*:)(?P<pw>[^@\s/]+)(?=@)")
_QUERY = re.compile(r"(?P<pre>[?&;](?P<name>[^=&;#\s]+)=)(?P<value>[^&;#\s]*)")


FIELD_PARTS = ("token", "secret", "password", "passwd", "pwd", "authorization", "api_key", "apikey",
               "credential", "private_key")
"""Names of payload fields whose values are masked for display when no declaration says otherwise
(narrower than `SECRET_NAME_PARTS`: a field called `key` or `author` is ordinary data)."""


def secret_field(name: str) -> bool:
    low = name.lower().replace("-", "_")
    return any(part in low for part in FIELD_PARTS)


def mask_fields(value: object, depth: int = 0) -> object:
    """A copy of a JSON-like value with the values of secret-looking fields masked, at any depth
    (bounded: past 32 levels the rest is kept as it is)."""
    if depth > 32:
        return value
    if isinstance(value, dict):
        return {
            k: MASK if isinstance(k, str) and secret_field(k) and v is not None else mask_fields(v, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [mask_fields(v, depth + 1) for v in value]
    return value


def secret_name(name: str) -> bool:
    low = name.lower()
    return any(part in low for part in SECRET_NAME_PARTS)


def mask_url(text: str) -> str:
    """Mask URL passwords and credential-like query values wherever they sit in `text`."""
    if "://" not in text and "?" not in text:
        return text
    text = _USERINFO.sub(lambda m: m.group("pre") + MASK, text)
    if "?" in text:
        text = _QUERY.sub(_mask_query_value, text)
    return text


def _mask_query_value(m: re.Match[str]) -> str:
    if m.group("value") and secret_name(m.group("name")):
        return m.group("pre") + MASK
    return m.group(0)


def mask_strings(value: object) -> object:
    """`mask_url` applied to every string in a JSON-like value (a copy; other values as they are)."""
    if isinstance(value, str):
        return mask_url(value)
    if isinstance(value, dict):
        return {k: mask_strings(v) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_strings(v) for v in value]
    return value


__all__ = ["MASK", "mask_fields", "mask_strings", "mask_url", "secret_field", "secret_name"]
