"""An http attempt armed ahead of its due time (`HttpTarget.arm`): checked, connected and built
before, one write at the due time (`fire`), its answer read by `execute`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from jobwire.config import Settings
from jobwire.model import HttpTarget as HttpSpec
from jobwire.model import Job, RunState
from jobwire.targets.http import HttpTarget
from tests.support.fake_context import FakeContext, RecordingServer


@pytest.fixture
async def server() -> AsyncIterator[RecordingServer]:
    s = await RecordingServer().start()
    yield s
    await s.stop()


@pytest.fixture
async def target(tmp_path: Path) -> AsyncIterator[HttpTarget]:
    t = HttpTarget(Settings(data_dir=tmp_path))
    await t.start()
    yield t
    await t.close()


def job(url: str, name: str = "call") -> Job:
    return Job(name=name, target=HttpSpec(url=url, allow_private=True))


def places(target: HttpTarget) -> int:
    return target._pool_for(True)[1]._value


async def test_armed_nothing_is_sent_until_it_is_fired(target: HttpTarget, server: RecordingServer) -> None:
    ctx = FakeContext(job(server.url("/armed")), {})
    armed = await target.arm(ctx)
    assert armed is not None
    assert places(target) == target.in_flight - 1, "its place in the pool is taken when armed"
    # another call goes out meanwhile (its own connection): the armed one has written nothing
    other = await target.execute(FakeContext(job(server.url("/other"), "other"), {}))
    assert other.state == RunState.succeeded
    assert [r.path for r in server.requests] == ["/other"]
    armed.fire()
    outcome = await target.execute(ctx)
    assert outcome.state == RunState.succeeded and outcome.http_status == 200
    assert [r.path for r in server.requests] == ["/other", "/armed"]
    assert server.requests[1].headers["idempotency-key"] == ctx.run.id
    assert ctx.started_calls == [(None, None)]
    assert ctx.text == "ok"
    assert places(target) == target.in_flight, "its place is given back after the answer"


async def test_a_connection_closed_before_the_due_time_is_not_written_on(
    target: HttpTarget, server: RecordingServer
) -> None:
    ctx = FakeContext(job(server.url("/armed")), {})
    armed = await target.arm(ctx)
    assert armed is not None
    target._shots[ctx.run.id].conn.close()  # as when the server closes an idle connection
    armed.fire()
    outcome = await target.execute(ctx)
    assert outcome.state == RunState.succeeded, "called on a new connection instead"
    assert [r.headers["idempotency-key"] for r in server.requests] == [ctx.run.id]
    assert places(target) == target.in_flight


async def test_disarmed_its_place_and_connection_are_given_back(
    target: HttpTarget, server: RecordingServer
) -> None:
    ctx = FakeContext(job(server.url("/armed")), {})
    armed = await target.arm(ctx)
    assert armed is not None
    armed.disarm()
    armed.disarm()  # twice changes nothing
    assert places(target) == target.in_flight
    assert target.http1.idle == 1, "the connection is kept for the next call"
    assert not target._shots
    assert server.requests == []
    outcome = await target.execute(ctx)  # not fired: the attempt is made the usual way
    assert outcome.state == RunState.succeeded and len(server.requests) == 1


async def test_only_a_first_attempt_with_a_prebuilt_request_is_armed(
    target: HttpTarget, server: RecordingServer
) -> None:
    templated = Job(
        name="t",
        target=HttpSpec(url=server.url("/{{ params.x }}"), allow_private=True),
        parameters=[{"name": "x", "default": "a"}],
    )
    assert await target.arm(FakeContext(templated, {"x": "a"})) is None
    retry = FakeContext(job(server.url("/ok")), {})
    retry.run.attempt = 2
    assert await target.arm(retry) is None
    refused = FakeContext(Job(name="g", target=HttpSpec(url=server.url("/ok"))), {})
    assert await target.arm(refused) is None, "a guarded destination refused is reported by execute"
    assert places(target) == target.in_flight and target._pool_for(False)[1]._value == target.in_flight
