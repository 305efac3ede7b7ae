"""Concurrency slots and retry backoff: pure logic, property-tested."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from jobwire.engine.policies import Decision, Slots, backoff_delay
from jobwire.model import Job, Retry

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def job(policy: str, max_running: int | None = None) -> Job:
    return Job.model_validate(
        {"name": "j", "target": {"type": "local", "command": ["true"]},
         "concurrency": {"policy": policy, "max_running": max_running}}
    )


@given(
    attempt=st.integers(2, 30),
    backoff=st.floats(0.001, 100),
    mult=st.floats(1, 5),
    cap=st.floats(0.001, 1000),
    jitter=st.floats(0, 1),
    r=st.floats(0, 1),
)
def test_backoff_stays_within_jittered_cap(attempt: int, backoff: float, mult: float, cap: float, jitter: float, r: float) -> None:
    retry = Retry(backoff=backoff, multiplier=mult, max_backoff=cap, jitter=jitter, max_attempts=2)
    d = backoff_delay(retry, attempt, lambda: r)
    base = min(retry.backoff.total_seconds() * mult ** (attempt - 2), retry.max_backoff.total_seconds())
    assert 0 <= d <= base * (1 + jitter) + 1e-9
    assert d >= base * (1 - jitter) - 1e-9


def test_backoff_grows_then_caps() -> None:
    retry = Retry(backoff=1, multiplier=2, max_backoff=5, jitter=0, max_attempts=10)
    assert [backoff_delay(retry, n) for n in range(2, 7)] == [1, 2, 4, 5, 5]


def test_allow_without_limit_always_starts() -> None:
    s, j = Slots(), job("allow")
    for i in range(100):
        assert s.decide(j, None) == (Decision.start, [])
        s.occupy("j", None, f"r{i}", T0)


@given(st.lists(st.sampled_from(["submit", "finish"]), max_size=60), st.integers(1, 4),
       st.sampled_from(["forbid", "queue", "replace", "allow"]))
def test_limit_is_never_exceeded(ops: list[str], limit: int, policy: str) -> None:
    """Whatever the sequence of arrivals and ends, no more than `limit` runs hold a slot."""
    s, j = Slots(), job(policy, limit)
    active: list[str] = []
    waiting: list[str] = []
    for n, op in enumerate(ops):
        if op == "submit":
            decision, victims = s.decide(j, None)
            rid = f"r{n}"
            if decision == Decision.skip:
                assert policy == "forbid" and len(active) >= limit
                continue
            if decision == Decision.queue:
                s.enqueue("j", None, rid)
                waiting.append(rid)
                continue
            for v in victims:  # replace: the oldest make room
                s.release("j", None, v)
                active.remove(v)
            s.occupy("j", None, rid, T0 + timedelta(seconds=n))
            active.append(rid)
        elif active:
            done = active.pop(0)
            s.release("j", None, done)
            while (nxt := s.next_waiting(j, None)) is not None:
                assert nxt == waiting.pop(0)  # FIFO
                s.occupy("j", None, nxt, T0 + timedelta(seconds=n))
                active.append(nxt)
        assert len(active) <= limit


def test_keys_are_independent() -> None:
    s, j = Slots(), job("forbid")
    s.occupy("j", "a", "r1", T0)
    assert s.decide(j, "a")[0] == Decision.skip
    assert s.decide(j, "b")[0] == Decision.start
