"""The http target against a real HTTP server on a free local port."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from jobwire import netguard
from jobwire.config import Settings
from jobwire.model import HttpTarget as HttpSpec
from jobwire.model import Job, Parameter, ParamType, RunState
from jobwire.targets.http import BODY_LOG_CAP, MAX_IN_FLIGHT, USER_AGENT, HttpTarget
from tests.support.fake_context import FakeContext, RecordingServer, wait_until

PARAMS = [
    Parameter(name="count", type=ParamType.integer),
    Parameter(name="ratio", type=ParamType.number, default=0.5),
    Parameter(name="flag", type=ParamType.boolean, default=False),
    Parameter(name="name", default="x"),
    Parameter(name="extra", type=ParamType.json, default={}),
]


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


def job(url: str, **kw: Any) -> Job:
    kw.setdefault("allow_private", True)
    return Job(name="call", target=HttpSpec(url=url, **kw), parameters=PARAMS)


async def run(target: HttpTarget, j: Job, params: dict[str, Any] | None = None) -> tuple[Any, FakeContext]:
    ctx = FakeContext(j, params if params is not None else {"count": 1})
    outcome = await target.execute(ctx)
    return outcome, ctx


async def test_success_logs_body_and_sends_the_standard_headers(
    target: HttpTarget, server: RecordingServer
) -> None:
    outcome, ctx = await run(target, job(server.url("/ok")))
    assert outcome.state == RunState.succeeded
    assert outcome.http_status == 200
    assert ctx.text == "ok"
    (req,) = server.requests
    assert req.method == "POST"
    assert req.headers["idempotency-key"] == ctx.target_name == ctx.run.id
    assert req.headers["user-agent"] == USER_AGENT
    assert ctx.started_calls == [(None, None)]


async def test_json_body_is_typed_from_params(target: HttpTarget, server: RecordingServer) -> None:
    payload = {
        "count": "{{count}}",
        "ratio": "{{ratio}}",
        "flag": "{{flag}}",
        "extra": "{{extra}}",
        "greeting": "hello {{name}} #{{count}}",
        "fixed": [1, "two", {"three": 3}],
    }
    j = job(server.url("/echo"), payload=payload, headers={"X-Name": "n-{{name}}"})
    outcome, _ = await run(
        target, j, {"count": 7, "ratio": 1.5, "flag": True, "name": "ann", "extra": {"a": [1]}}
    )
    assert outcome.state == RunState.succeeded
    (req,) = server.requests
    assert req.headers["content-type"] == "application/json"
    assert req.headers["x-name"] == "n-ann"
    assert req.json() == {
        "count": 7,
        "ratio": 1.5,
        "flag": True,
        "extra": {"a": [1]},
        "greeting": "hello ann #7",
        "fixed": [1, "two", {"three": 3}],
    }


@pytest.mark.parametrize("method", ["GET", "HEAD", "DELETE"])
async def test_no_body_for_get_head_delete(target: HttpTarget, server: RecordingServer, method: str) -> None:
    outcome, _ = await run(target, job(server.url("/ok"), method=method, payload={"count": "{{count}}"}))
    assert outcome.state == RunState.succeeded
    (req,) = server.requests
    assert req.method == method
    assert req.body == b""
    assert "content-type" not in req.headers


async def test_url_params_are_percent_encoded(target: HttpTarget, server: RecordingServer) -> None:
    outcome, _ = await run(target, job(server.url("/echo") + "?q={{name}}"), {"count": 1, "name": "a&b=/c?#"})
    assert outcome.state == RunState.succeeded
    (req,) = server.requests
    assert req.path == "/echo"
    assert req.query == {"q": ["a&b=/c?#"]}


async def test_bad_status_fails_with_the_body_as_message(target: HttpTarget, server: RecordingServer) -> None:
    long = "e" * 500
    outcome, ctx = await run(target, job(server.url(f"/status/500?body={long}")))
    assert outcome.state == RunState.failed
    assert outcome.http_status == 500
    assert outcome.retryable is True
    assert outcome.error is not None
    assert outcome.error.reason == "HTTPStatus"
    assert outcome.error.code == 500
    assert outcome.error.message == "e" * 200
    assert ctx.text == long


@pytest.mark.parametrize(
    ("status", "retryable"), [(429, True), (408, True), (503, True), (404, False), (400, False), (302, False)]
)
async def test_retryable_statuses(
    target: HttpTarget, server: RecordingServer, status: int, retryable: bool
) -> None:
    outcome, _ = await run(target, job(server.url(f"/status/{status}")))
    assert outcome.state == RunState.failed
    assert outcome.http_status == status
    assert outcome.retryable is retryable


async def test_accept_status_codes_and_classes(target: HttpTarget, server: RecordingServer) -> None:
    outcome, _ = await run(target, job(server.url("/status/404"), accept_status=["2xx", 404]))
    assert outcome.state == RunState.succeeded
    outcome, _ = await run(target, job(server.url("/status/302"), accept_status=["3xx"]))
    assert outcome.state == RunState.succeeded
    outcome, _ = await run(target, job(server.url("/status/201"), accept_status=[200]))
    assert outcome.state == RunState.failed


async def test_timeout_is_total_and_gives_timed_out(target: HttpTarget, server: RecordingServer) -> None:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    outcome, ctx = await run(target, job(server.url("/hang"), timeout=timedelta(milliseconds=300)))
    assert loop.time() - t0 < 5
    assert outcome.state == RunState.timed_out
    assert outcome.error is not None and outcome.error.reason == "Timeout"
    assert len(ctx.started_calls) == 1


async def test_response_body_log_is_capped(target: HttpTarget, server: RecordingServer) -> None:
    outcome, ctx = await run(target, job(server.url(f"/big?size={BODY_LOG_CAP * 3}")))
    assert outcome.state == RunState.succeeded
    assert len(ctx.log_data) == BODY_LOG_CAP


async def test_connection_refused_is_retryable(target: HttpTarget, server: RecordingServer) -> None:
    url = server.url("/ok")
    await server.stop()
    outcome, _ = await run(target, job(url))
    assert outcome.state == RunState.failed
    assert outcome.retryable is True
    assert outcome.error is not None and outcome.error.reason == "ConnectError"


async def test_missing_placeholder_value_is_not_retryable(
    target: HttpTarget, server: RecordingServer
) -> None:
    j = Job(
        name="call", target=HttpSpec(url=server.url("/ok"), allow_private=True, payload={"x": "{{nope}}"})
    )
    outcome, ctx = await run(target, j, {})
    assert outcome.state == RunState.failed
    assert outcome.retryable is False
    assert server.requests == []
    assert ctx.started_calls == []


# ---------------------------------------------------------------------------- SSRF


async def test_loopback_refused_by_default(target: HttpTarget, server: RecordingServer) -> None:
    outcome, ctx = await run(target, job(server.url("/ok"), allow_private=False))
    assert outcome.state == RunState.failed
    assert outcome.retryable is False
    assert outcome.error is not None
    assert outcome.error.reason == "DestinationRefused"
    assert "127.0.0.1" in outcome.error.message
    assert "allow_private" in outcome.error.message
    assert "JOBWIRE_HTTP_ALLOW_PRIVATE" in outcome.error.message
    assert server.requests == []
    assert ctx.started_calls == []


async def test_localhost_name_refused(target: HttpTarget, server: RecordingServer) -> None:
    url = f"http://localhost:{server.port}/ok"
    outcome, _ = await run(target, job(url, allow_private=False))
    assert outcome.error is not None and outcome.error.reason == "DestinationRefused"
    assert server.requests == []


async def test_loopback_allowed_by_setting(tmp_path: Path, server: RecordingServer) -> None:
    t = HttpTarget(Settings(data_dir=tmp_path, http_allow_private=True))
    await t.start()
    try:
        outcome, _ = await run(t, job(server.url("/ok"), allow_private=False))
    finally:
        await t.close()
    assert outcome.state == RunState.succeeded


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]:9/",
        "http://[::ffff:127.0.0.1]:9/",
        "http://10.0.0.1/",
        "http://0.0.0.0:9/",
        "http://[fe80::1]/",
    ],
)
async def test_private_destinations_refused(target: HttpTarget, url: str) -> None:
    outcome, _ = await run(target, job(url, allow_private=False, timeout=timedelta(seconds=5)))
    assert outcome.state == RunState.failed
    assert outcome.retryable is False
    assert outcome.error is not None and outcome.error.reason == "DestinationRefused", outcome.error


async def test_redirects_are_not_followed(target: HttpTarget, server: RecordingServer) -> None:
    outcome, _ = await run(target, job(server.url("/status/307")))
    assert outcome.state == RunState.failed
    assert outcome.http_status == 307
    assert len(server.requests) == 1


async def test_params_and_headers_never_logged(
    target: HttpTarget, server: RecordingServer, capsys: pytest.CaptureFixture[str]
) -> None:
    j = job(server.url("/ok"), headers={"Authorization": "Bearer {{name}}"})
    outcome, _ = await run(target, j, {"count": 1, "name": "sekrit-value"})
    assert outcome.state == RunState.succeeded
    assert server.requests[0].headers["authorization"] == "Bearer sekrit-value"
    out = capsys.readouterr()
    assert "sekrit-value" not in out.out + out.err
    assert json.dumps("sekrit-value") not in out.out + out.err


# ---------------------------------------------------------------------------- requests without a client


async def test_default_headers_and_a_job_header_replacing_one(
    target: HttpTarget, server: RecordingServer
) -> None:
    outcome, _ = await run(target, job(server.url("/ok")))
    assert outcome.state == RunState.succeeded
    outcome, _ = await run(
        target, job(server.url("/ok"), headers={"accept": "application/json", "Idempotency-Key": "mine"})
    )
    assert outcome.state == RunState.succeeded
    first, second = server.requests
    assert first.headers["accept"] == "*/*"
    assert first.headers["accept-encoding"] == "gzip, deflate"
    assert first.headers["host"] == f"127.0.0.1:{server.port}"
    assert second.headers["accept"] == "application/json"
    assert second.headers["idempotency-key"] != "mine"  # jobwire's own header wins


async def test_url_credentials_become_basic_auth(target: HttpTarget, server: RecordingServer) -> None:
    url = server.url("/ok").replace("http://", "http://ann:p%40ss@")
    outcome, _ = await run(target, job(url))
    assert outcome.state == RunState.succeeded
    (req,) = server.requests
    assert req.headers["authorization"] == "Basic " + base64.b64encode(b"ann:p@ss").decode()


async def test_cookies_are_not_kept_between_calls(target: HttpTarget) -> None:
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        seen.append(head)
        writer.write(b"HTTP/1.1 200 OK\r\nSet-Cookie: session=s3cr3t; Path=/\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    try:
        for _ in range(2):
            outcome, _ = await run(target, job(f"http://127.0.0.1:{port}/"))
            assert outcome.state == RunState.succeeded
    finally:
        srv.close()
        await srv.wait_closed()
    assert len(seen) == 2
    assert b"cookie" not in seen[1].lower()


class CountingServer(RecordingServer):
    """A RecordingServer that counts the connections it accepted and has open."""

    connections = 0
    open = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        try:
            await super()._handle(reader, writer)
        finally:
            self.open -= 1


async def test_calls_share_keep_alive_connections(target: HttpTarget) -> None:
    s = await CountingServer().start()
    try:
        for _ in range(5):
            outcome, _ = await run(target, job(s.url("/ok")))
            assert outcome.state == RunState.succeeded
        assert s.connections == 1
        outcomes = await asyncio.gather(*(run(target, job(s.url("/ok"))) for _ in range(3 * MAX_IN_FLIGHT)))
        assert {o.state for o, _ in outcomes} == {RunState.succeeded}
        assert len(s.requests) == 5 + 3 * MAX_IN_FLIGHT
        assert s.connections <= MAX_IN_FLIGHT
    finally:
        await s.stop()


async def test_a_timed_out_call_does_not_leave_its_connection_behind(target: HttpTarget) -> None:
    s = await CountingServer().start()
    try:
        outcome, _ = await run(target, job(s.url("/hang"), timeout=timedelta(milliseconds=200)))
        assert outcome.state == RunState.timed_out
        await wait_until(lambda: s.disconnects == 1, what="the hung connection to be closed")
        outcome, _ = await run(target, job(s.url("/ok")))
        assert outcome.state == RunState.succeeded
        assert s.connections == 2
        assert target.http1.idle == 1  # only the idle /ok one
    finally:
        await s.stop()


async def test_a_body_over_the_log_cap_does_not_leave_its_connection_behind(target: HttpTarget) -> None:
    s = await CountingServer().start()
    try:
        outcome, _ = await run(target, job(s.url(f"/big?size={BODY_LOG_CAP * 3}")))
        assert outcome.state == RunState.succeeded
        outcome, _ = await run(target, job(s.url("/ok")))
        assert outcome.state == RunState.succeeded
        assert s.connections == 2  # the unread rest of the body made the first one unusable
    finally:
        await s.stop()


async def test_name_rebound_to_loopback_after_the_precheck_is_refused(
    target: HttpTarget, server: RecordingServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pre-check resolves a public address (and remembers it); at connect time the name
    resolves to loopback: the connection is refused, nothing reaches the server."""
    answers = [["93.184.215.14"]]

    async def resolver(host: str, port: int) -> list[str]:
        return answers.pop(0) if answers else ["127.0.0.1"]

    netguard.forget_checked()
    monkeypatch.setattr(netguard, "getaddrinfo", resolver)
    try:
        outcome, ctx = await run(target, job(f"http://rebind.test:{server.port}/ok", allow_private=False))
    finally:
        netguard.forget_checked()
    assert outcome.state == RunState.failed
    assert outcome.retryable is False
    assert outcome.error is not None and outcome.error.reason == "DestinationRefused"
    assert "127.0.0.1 (resolved from rebind.test)" in outcome.error.message
    assert len(ctx.started_calls) == 1  # the pre-check passed
    assert server.requests == []


# ---------------------------------------------------------------------------- armed ahead of a due time
# `HttpTarget.arm`: checked, connected and built before; one write at the due time (`fire`), its
# answer read by `execute`.


def plain(url: str, name: str = "call") -> Job:
    return Job(name=name, target=HttpSpec(url=url, allow_private=True))


def places(target: HttpTarget) -> int:
    return target._pool_for(True)[1].free


async def test_armed_nothing_is_sent_until_it_is_fired(target: HttpTarget, server: RecordingServer) -> None:
    ctx = FakeContext(plain(server.url("/armed")), {})
    armed = await target.arm(ctx)
    assert armed is not None
    assert places(target) == target.in_flight - 1, "its place in the pool is taken when armed"
    # another call goes out meanwhile (its own connection): the armed one has written nothing
    other = await target.execute(FakeContext(plain(server.url("/other"), "other"), {}))
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
    ctx = FakeContext(plain(server.url("/armed")), {})
    armed = await target.arm(ctx)
    assert armed is not None
    target._shots[ctx.run.id].conn.close()  # as when the server closes an idle connection
    armed.fire()
    outcome = await target.execute(ctx)
    assert outcome.state == RunState.succeeded, "called on a new connection instead"
    assert [r.headers["idempotency-key"] for r in server.requests] == [ctx.run.id]
    assert places(target) == target.in_flight


async def test_an_armed_call_the_server_closed_its_connection_on_is_sent_again(
    target: HttpTarget, server: RecordingServer
) -> None:
    """`fire` asks no system call whether the connection is still open: one the server closes as
    the request comes (unanswered, on a kept-alive connection) is `ClosedIdle`, and the request goes
    again, with the same Idempotency-Key, on a new connection."""
    warm = await target.execute(FakeContext(plain(server.url("/drop-kept"), "warm"), {}))
    assert warm.state == RunState.succeeded  # its connection is kept alive for the armed call
    ctx = FakeContext(plain(server.url("/drop-kept")), {})
    armed = await target.arm(ctx)
    assert armed is not None
    armed.prime()()
    outcome = await target.execute(ctx)
    assert outcome.state == RunState.succeeded and outcome.http_status == 200
    keys = [r.headers["idempotency-key"] for r in server.requests]
    assert keys[1:] == [ctx.run.id, ctx.run.id], "dropped on the kept-alive connection, answered on a new one"
    assert places(target) == target.in_flight


async def test_disarmed_its_place_and_connection_are_given_back(
    target: HttpTarget, server: RecordingServer
) -> None:
    ctx = FakeContext(plain(server.url("/armed")), {})
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
    retry = FakeContext(plain(server.url("/ok")), {})
    retry.run.attempt = 2
    assert await target.arm(retry) is None
    refused = FakeContext(Job(name="g", target=HttpSpec(url=server.url("/ok"))), {})
    assert await target.arm(refused) is None, "a guarded destination refused is reported by execute"
    assert places(target) == target.in_flight and target._pool_for(False)[1].free == target.in_flight
