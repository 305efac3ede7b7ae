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


__all__ = ["MASK", "mask_strings", "mask_url", "secret_name"]
