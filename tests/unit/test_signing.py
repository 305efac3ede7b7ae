from __future__ import annotations

import hashlib
import hmac
from datetime import timedelta

import pytest

from jobwire.signing import DELIVERY_HEADER, SIGNATURE_HEADER, ReplayGuard, SignatureError, sign, verify

SECRET = b"whsec-test"
BODY = b'{"run_id":"r1","action":"finished"}'
NOW = 1_767_225_600
DELIVERY = "d-42"


def reason(secret: bytes, body: bytes, header: str | None, now: float = NOW, tolerance: float = 300) -> str:
    with pytest.raises(SignatureError) as info:
        verify(secret, body, header, now, tolerance, delivery=DELIVERY)
    return info.value.reason


def test_header_names() -> None:
    assert SIGNATURE_HEADER == "Jobwire-Signature"
    assert DELIVERY_HEADER == "Jobwire-Delivery"


def test_sign_format_matches_the_documented_scheme() -> None:
    expected = hmac.new(SECRET, f"{DELIVERY}.{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert sign(SECRET, BODY, NOW, delivery=DELIVERY) == f"t={NOW},v1={expected}"


def test_round_trip() -> None:
    verify(SECRET, BODY, sign(SECRET, BODY, NOW, delivery=DELIVERY), NOW, 300, delivery=DELIVERY)
    verify(SECRET, BODY, sign(SECRET, BODY, NOW, delivery=DELIVERY), NOW + 299, timedelta(minutes=5), delivery=DELIVERY)


@pytest.mark.parametrize("header", [None, "", "   "])
def test_missing(header: str | None) -> None:
    assert reason(SECRET, BODY, header) == "missing"


@pytest.mark.parametrize(
    "header",
    [
        "garbage",
        "t=abc,v1=" + "0" * 64,
        f"t={NOW}",
        "v1=" + "0" * 64,
        f"t={NOW},v1=xyz",
        f"t={NOW},t={NOW},v1=" + "0" * 64,
        f"t=-{NOW},v1=" + "0" * 64,
    ],
)
def test_malformed(header: str) -> None:
    assert reason(SECRET, BODY, header) == "malformed"


def test_mismatch_on_other_body_secret_or_timestamp() -> None:
    header = sign(SECRET, BODY, NOW, delivery=DELIVERY)
    assert reason(SECRET, BODY + b" ", header) == "mismatch"
    assert reason(b"other", BODY, header) == "mismatch"
    forged = header.replace(f"t={NOW}", f"t={NOW + 1}")
    assert reason(SECRET, BODY, forged) == "mismatch"


def test_the_delivery_id_is_signed() -> None:
    """A captured signature and body replayed under a fresh delivery id do not verify (issue 7 #1)."""
    header = sign(SECRET, BODY, NOW, delivery=DELIVERY)
    with pytest.raises(SignatureError) as info:
        verify(SECRET, BODY, header, NOW, delivery="d-43")
    assert info.value.reason == "mismatch"


def test_old_scheme_is_refused_saying_what_is_signed() -> None:
    old = hmac.new(SECRET, f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()
    with pytest.raises(SignatureError) as info:
        verify(SECRET, BODY, f"t={NOW},v1={old}", NOW, delivery=DELIVERY)
    assert info.value.reason == "mismatch"
    assert "<delivery id>.<timestamp>.<raw body>" in str(info.value)


@pytest.mark.parametrize("delivery", [None, "", "a.b", "x" * 256, "sp ace", "é"])
def test_delivery_id_missing_or_malformed(delivery: str | None) -> None:
    header = sign(SECRET, BODY, NOW, delivery=DELIVERY)
    with pytest.raises(SignatureError) as info:
        verify(SECRET, BODY, header, NOW, delivery=delivery)
    assert info.value.reason in ("missing", "malformed")


def test_stale_in_both_directions() -> None:
    assert reason(SECRET, BODY, sign(SECRET, BODY, NOW - 301, delivery=DELIVERY), NOW, 300) == "stale"
    assert reason(SECRET, BODY, sign(SECRET, BODY, NOW + 301, delivery=DELIVERY), NOW, 300) == "stale"


def test_several_v1_entries_for_rotation() -> None:
    both = sign(b"old", BODY, NOW, b"new", delivery=DELIVERY)
    assert both.count("v1=") == 2
    verify(b"old", BODY, both, NOW, delivery=DELIVERY)
    verify(b"new", BODY, both, NOW, delivery=DELIVERY)
    assert reason(b"third", BODY, both) == "mismatch"


def test_unknown_schemes_ignored() -> None:
    header = sign(SECRET, BODY, NOW, delivery=DELIVERY) + ",v0=deadbeef"
    verify(SECRET, BODY, header, NOW, delivery=DELIVERY)


def test_replay_guard_remembers_within_ttl() -> None:
    guard = ReplayGuard(capacity=10, ttl=60)
    assert guard.seen("d1", 0) is False
    assert guard.seen("d1", 30) is True
    assert guard.seen("d2", 30) is False
    assert guard.seen("d1", 61) is False  # forgotten after ttl: the signature tolerance takes over


def test_replay_guard_capacity_drops_the_oldest() -> None:
    guard = ReplayGuard(capacity=3, ttl=1000)
    for i in range(5):
        assert guard.seen(f"d{i}", i) is False
    assert len(guard) == 3
    assert guard.seen("d4", 10) is True
    assert guard.seen("d0", 10) is False


def test_replay_guard_rejects_bad_capacity() -> None:
    with pytest.raises(ValueError):
        ReplayGuard(capacity=0)
