"""engine/backlog.py: at most `limit` attempts of a target kind at once, the rest in order."""

from __future__ import annotations

from pathlib import Path

from jobwire.config import Settings
from jobwire.engine.backlog import LaunchBacklog, Waiting
from jobwire.engine.metrics import Metrics
from jobwire.model import HttpTarget as HttpSpec
from jobwire.model import Job
from jobwire.targets.http import HttpTarget
from tests.support.fake_context import FakeContext


def items(n: int) -> list[Waiting]:
    job = Job(name="j", target=HttpSpec(url="http://127.0.0.1:9/"))
    return [(FakeContext(job).run, job, False, None) for _ in range(n)]


def test_beyond_the_limit_runs_wait_in_order_and_take_freed_places(tmp_path: Path) -> None:
    metrics = Metrics()
    backlog = LaunchBacklog(metrics, {"http": HttpTarget(Settings(data_dir=tmp_path))}, cap=2)
    a, b, c, d = items(4)
    assert [backlog.admit("http", x) for x in (a, b, c, d)] == [True, True, False, False]
    assert backlog.summary()["http"] | {"waiting_since": None} == {
        "limit": 2,
        "running": 2,
        "waiting": 2,
        "in_memory": 2,
        "in_store": 0,
        "read_error": None,
        "waiting_since": None,
        "most_waiting": 2,
    }
    assert metrics.launch_backlog.labels("http")._value.get() == 2
    assert backlog.done("http") is c  # a's place goes to c, then d's turn
    assert backlog.done("http") is d
    assert backlog.waiting == 0
    assert backlog.done("http") is None  # a place is freed: running 2 → 1
    assert backlog.summary()["http"]["running"] == 1
    assert backlog.admit("http", items(1)[0]) is True


def test_kinds_without_a_limit_are_not_counted(tmp_path: Path) -> None:
    backlog = LaunchBacklog(Metrics(), {}, cap=None)
    assert all(backlog.admit("local", x) for x in items(500))
    assert backlog.done("local") is None
    assert backlog.summary() == {}
