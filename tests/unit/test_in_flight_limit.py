"""The http target sizes its pools by the open-file limit (`in_flight_limit`): it raises the soft
limit to what 1,000 calls per pool need where the hard limit allows, and otherwise takes fewer, with
a warning that says what to do."""

from __future__ import annotations

import resource

import pytest
import structlog

from jobwire.targets import http
from jobwire.targets.http import MAX_IN_FLIGHT, RESERVED_FILES, in_flight_limit

WANT = 2 * MAX_IN_FLIGHT + RESERVED_FILES


def limits(monkeypatch: pytest.MonkeyPatch, soft: int, hard: int) -> list[tuple[int, int]]:
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(http.resource, "getrlimit", lambda _: (soft, hard))

    def setrlimit(_: int, value: tuple[int, int]) -> None:
        if value[0] > hard:
            raise ValueError("not allowed to raise maximum limit")
        calls.append(value)

    monkeypatch.setattr(http.resource, "setrlimit", setrlimit)
    return calls


def test_a_low_soft_limit_under_a_high_hard_one_is_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = limits(monkeypatch, 1024, 524288)
    with structlog.testing.capture_logs() as logs:
        assert in_flight_limit() == MAX_IN_FLIGHT
    assert calls == [(WANT, 524288)]
    assert not logs


def test_a_hard_limit_too_low_means_fewer_calls_in_flight_and_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = limits(monkeypatch, 1024, 2048)
    with structlog.testing.capture_logs() as logs:
        n = in_flight_limit()
    assert calls == [(2048, 2048)]
    assert n == (2048 - RESERVED_FILES) // 2
    (warning,) = logs
    assert warning["log_level"] == "warning" and "ulimit -n" in warning["fix"]


def test_a_high_enough_limit_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = limits(monkeypatch, 65536, 65536)
    assert in_flight_limit() == MAX_IN_FLIGHT and calls == []
    calls = limits(monkeypatch, resource.RLIM_INFINITY, resource.RLIM_INFINITY)
    assert in_flight_limit() == MAX_IN_FLIGHT and calls == []
