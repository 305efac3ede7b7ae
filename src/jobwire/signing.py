"""HMAC-SHA256 signatures for webhooks, in and out (Stripe / Standard Webhooks style).

    Jobwire-Signature: t=1767225600,v1=5257a869e7ecebeda32affa62cdca3fa51cad7e77a0e56ff536d0ce8e108d8bd
    Jobwire-Delivery:  <unique id of this delivery>

The signed message is `f"{delivery}.{t}."` followed by the raw body (the Standard Webhooks
order: id, timestamp, payload), so a signature covers the exact bytes sent, the time they were sent
and the delivery id. The delivery id is what a receiver dedupes on (jobwire derives the run key from
it), so it must be signed: were it not, a captured body and signature could be replayed with a fresh
id as a new delivery. A receiver rejects a timestamp further than `tolerance` from its own clock
(replay of an old delivery) and dedupes on the authenticated delivery id. Several `v1=` entries may
be present, so a sender can sign with the old and the new secret while a secret is rotated.

A delivery id is 1-255 characters of `A-Z a-z 0-9 _ - : + / =` (no `.`, which separates the parts
of the signed message and would otherwise make two different (id, timestamp) pairs sign alike).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections import OrderedDict
from datetime import timedelta

SIGNATURE_HEADER = "Jobwire-Signature"
DELIVERY_HEADER = "Jobwire-Delivery"

_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
_DELIVERY = re.compile(r"^[A-Za-z0-9_\-:+/=]{1,255}$")
SIGNED_CONTENT = "<delivery id>.<timestamp>.<raw body>"
"""What a sender signs (HMAC-SHA256 with the shared secret, hex digest), for messages and docs."""


class SignatureError(Exception):
    """A signature did not verify. `reason` is one of: missing, malformed, stale, mismatch."""

    def __init__(self, reason: str, detail: str | None = None) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def _digest(secret: bytes, body: bytes, timestamp: int, delivery: str) -> str:
    return hmac.new(secret, f"{delivery}.{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def _legacy_digest(secret: bytes, body: bytes, timestamp: int) -> str:
    """The scheme before the delivery id was signed: only to say so when a sender still uses it."""
    return hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def check_delivery(delivery: str | None) -> str:
    """The delivery id if it is well-formed; SignatureError("missing"/"malformed") otherwise."""
    if delivery is None or not delivery.strip():
        raise SignatureError("missing", f"no {DELIVERY_HEADER} header (a unique id per delivery, signed)")
    if not _DELIVERY.match(delivery):
        raise SignatureError(
            "malformed", f"{DELIVERY_HEADER} must be 1-255 characters of A-Z a-z 0-9 _ - : + / ="
        )
    return delivery


def sign(secret: bytes, body: bytes, timestamp: int, *more_secrets: bytes, delivery: str) -> str:
    """`t=<timestamp>,v1=<hex>` over `<delivery>.<timestamp>.<body>` (one `v1` per secret: pass
    the old one too while rotating)."""
    check_delivery(delivery)
    parts = [f"t={int(timestamp)}"]
    parts += [f"v1={_digest(s, body, int(timestamp), delivery)}" for s in (secret, *more_secrets)]
    return ",".join(parts)


def _seconds(value: float | timedelta) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def parse_header(header: str | None) -> tuple[int, list[str]]:
    """(timestamp, candidate signatures) of a Jobwire-Signature value; SignatureError if it is
    missing or malformed. Cheap: callers check it before reading a body."""
    if header is None or not header.strip():
        raise SignatureError("missing", f"no {SIGNATURE_HEADER} header")
    timestamp: int | None = None
    candidates: list[str] = []
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            raise SignatureError("malformed", "expected comma-separated key=value pairs")
        if key == "t":
            if timestamp is not None or not value.isascii() or not value.isdigit():
                raise SignatureError("malformed", "t must appear once, as a Unix timestamp in seconds")
            timestamp = int(value)
        elif key == "v1":
            if not _HEX64.match(value):
                raise SignatureError("malformed", "v1 must be 64 hexadecimal digits")
            candidates.append(value.lower())
        # other schemes (v0, v2, ...) are ignored, as Stripe does
    if timestamp is None or not candidates:
        raise SignatureError("malformed", "expected t=<timestamp> and at least one v1=<hex signature>")
    return timestamp, candidates


def _matches(expected: str, candidates: list[str]) -> bool:
    matched = False
    for candidate in candidates:  # no early exit: time does not depend on which entry matches
        matched |= hmac.compare_digest(expected.encode(), candidate.encode())
    return matched


def verify(
    secret: bytes,
    body: bytes,
    header: str | None,
    now: float,
    tolerance: float | timedelta = 300,
    *,
    delivery: str | None,
) -> None:
    """Check `header` (the Jobwire-Signature value) for `body` and the `delivery` id (the
    Jobwire-Delivery value); raise SignatureError if it fails.

    Signatures are compared in constant time; any one matching `v1` entry suffices. The
    timestamp is checked after the signature, so "stale" means "authentic but too old/new".
    """
    timestamp, candidates = parse_header(header)
    delivery = check_delivery(delivery)
    if not _matches(_digest(secret, body, timestamp, delivery), candidates):
        if _matches(_legacy_digest(secret, body, timestamp), candidates):
            raise SignatureError(
                "mismatch",
                "signed without the delivery id; jobwire verifies HMAC-SHA256 over "
                f"{SIGNED_CONTENT} (see docs/api.md, webhooks)",
            )
        raise SignatureError("mismatch", f"no v1 signature matches HMAC-SHA256 over {SIGNED_CONTENT}")
    if abs(now - timestamp) > _seconds(tolerance):
        raise SignatureError("stale", f"timestamp {timestamp} is more than {_seconds(tolerance):g}s from now")


class ReplayGuard:
    """Remembers delivery ids for `ttl` seconds (at most `capacity` of them, least recent dropped).

    A first line of defence against a captured delivery being replayed inside the signature's
    tolerance window: the run key derived from the delivery id dedupes durably anyway, so an id
    forgotten here (after a restart, or evicted by capacity) still cannot make a second run.
    Keep `ttl` at least twice the signature tolerance so a delivery is remembered for as long as
    its timestamp would be accepted.
    """

    def __init__(self, capacity: int = 10_000, ttl: float | timedelta = 600) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.ttl = _seconds(ttl)
        self._seen: OrderedDict[str, float] = OrderedDict()

    def seen(self, delivery_id: str, now: float) -> bool:
        """True if `delivery_id` was seen within `ttl`; otherwise remember it and return False."""
        while self._seen:
            oldest, at = next(iter(self._seen.items()))
            if now - at <= self.ttl:
                break
            del self._seen[oldest]
        first = self._seen.get(delivery_id)
        if first is not None and now - first <= self.ttl:
            return True
        self._seen[delivery_id] = now
        self._seen.move_to_end(delivery_id)
        while len(self._seen) > self.capacity:
            self._seen.popitem(last=False)
        return False

    def __len__(self) -> int:
        return len(self._seen)
