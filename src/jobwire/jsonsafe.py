"""Is a JSON value storable? Strings must encode as UTF-8 (JSON allows a lone surrogate such as
`"\\ud800"`, which no UTF-8 store, log or broker takes), and nesting is bounded.

One bad value in a request must be refused alone, at the edge, naming its field — never reach the
group commit, where it would fail the whole batch of other callers' writes with it.
"""

from __future__ import annotations

from typing import Any

MAX_DEPTH = 64
"""Deepest nesting of objects and arrays accepted in a payload or parameters."""


def _bad_text(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def unstorable(value: Any, path: str = "") -> tuple[str, str] | None:
    """(path, what is wrong) of the first value that cannot be stored, or None."""
    if value is None or (type(value) is dict and not value):  # a trigger without a body
        return None
    stack: list[tuple[Any, str, int]] = [(value, path, 0)]
    while stack:
        v, p, depth = stack.pop()
        if isinstance(v, str):
            if _bad_text(v):
                return p or "body", "contains a lone surrogate (not valid Unicode text)"
        elif isinstance(v, dict | list):
            if depth >= MAX_DEPTH:
                return p or "body", f"nested more than {MAX_DEPTH} levels deep"
            if isinstance(v, dict):
                for k, item in v.items():
                    key = str(k)
                    sub = f"{p}.{key}" if p else key
                    if _bad_text(key):
                        return p or "body", "has a key with a lone surrogate (not valid Unicode text)"
                    stack.append((item, sub, depth + 1))
            else:
                for i, item in enumerate(v):
                    stack.append((item, f"{p}[{i}]", depth + 1))
    return None


__all__ = ["MAX_DEPTH", "unstorable"]
