"""Kubernetes resource quantities (`500m`, `2`, `1.5Gi`, `512Mi`, `1e3`): parse and validate.

Pure, no I/O. The grammar is the API server's (k8s.io/apimachinery `resource.Quantity`):
a signed decimal number, then either a binary suffix (Ki Mi Gi Ti Pi Ei), a decimal suffix
(n u m k M G T P E, or none) or a decimal exponent (e3, E-2).
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

__all__ = ["QuantityError", "format_quantity", "parse_quantity"]

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
}
_RE = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+))(Ki|Mi|Gi|Ti|Pi|Ei|[eE][+-]?\d+|[numkMGTPE]?)$")
_EXAMPLES = "a Kubernetes quantity such as 500m, 2, 1.5Gi, 512Mi or 10G"


class QuantityError(ValueError):
    pass


def parse_quantity(value: Any) -> Decimal:
    """The quantity's value in base units (cores, bytes). Raises QuantityError for anything the
    API server would refuse, and for negative quantities (no resource request can be negative)."""
    if isinstance(value, bool) or value is None:
        raise QuantityError(f"expected {_EXAMPLES}, got {value!r}")
    if isinstance(value, int | float | Decimal):
        text = str(value)
    elif isinstance(value, str):
        text = value.strip()
    else:
        raise QuantityError(f"expected {_EXAMPLES}, got {type(value).__name__}")
    m = _RE.fullmatch(text)
    if m is None:
        raise QuantityError(f"expected {_EXAMPLES}, got {value!r}")
    number, suffix = m.groups()
    try:
        n = Decimal(number)
        if suffix in _BINARY:
            out = n * _BINARY[suffix]
        elif suffix[:1] in ("e", "E"):
            out = n.scaleb(int(suffix[1:]))
        else:
            out = n * _DECIMAL[suffix]
    except (InvalidOperation, ValueError, OverflowError):
        raise QuantityError(f"expected {_EXAMPLES}, got {value!r}") from None
    if out < 0:
        raise QuantityError(f"must not be negative, got {value!r}")
    return out


def format_quantity(value: Any) -> str:
    """The canonical text of a valid quantity as given (numbers become text: 2 → "2", 0.5 → "0.5")."""
    parse_quantity(value)
    return value.strip() if isinstance(value, str) else str(value)
