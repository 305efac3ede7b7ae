"""Webhook forgery and replay against `jobwire serve` (issue 7 #1).

The signature covers `<delivery id>.<timestamp>.<raw body>`: a captured delivery cannot be replayed
under a fresh delivery id (403), nor under its own (409, a recorded duplicate — also after a
restart, since the run key is derived from the signed id). Every tampered part is refused, and no
refused delivery makes a run.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from jobwire.signing import DELIVERY_HEADER, SIGNATURE_HEADER, sign
from tests.support.server import Server

SECRET = b"hook-secret-for-forgery-tests"
JOBS = """
jobs:
  - name: hook
    triggers: [{webhook: {secret_env: FORGERY_HOOK_SECRET}}]
    target: {type: local, command: ["true"]}
"""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(JOBS)
    srv = Server(tmp_path / "data", jobs, FORGERY_HOOK_SECRET=SECRET.decode()).start()
    yield srv
    srv.stop()


def post(srv: Server, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(
        f"{srv.url}/api/v1/jobs/hook/webhook",
        content=body,
        headers={"content-type": "application/json", **headers},
        timeout=10,
    )


def signed(body: bytes, delivery: str, ts: int | None = None, secret: bytes = SECRET) -> dict[str, str]:
    t = int(time.time()) if ts is None else ts
    return {SIGNATURE_HEADER: sign(secret, body, t, delivery=delivery), DELIVERY_HEADER: delivery}


def run_count(srv: Server) -> int:
    with srv.client() as c:
        return len(c.get("/runs", params={"job": "hook", "limit": 200}).json()["items"])


def test_a_captured_delivery_cannot_be_replayed(server: Server) -> None:
    body = json.dumps({"ref": "main"}).encode()
    captured = signed(body, "delivery-1")
    assert post(server, body, captured).status_code == 201
    # same signature and body, a fresh delivery id: the signature no longer matches
    fresh = {**captured, DELIVERY_HEADER: "delivery-2"}
    r = post(server, body, fresh)
    assert r.status_code == 403, r.text
    assert "mismatch" in r.json()["error"]["message"]
    # the very same delivery: a recorded duplicate
    assert post(server, body, captured).status_code == 409
    assert run_count(server) == 1
    # ... also after a restart (the run key is durable, the in-memory guard is gone)
    server.stop()
    server.start()
    assert post(server, body, captured).status_code == 409
    assert post(server, body, fresh).status_code == 403
    assert run_count(server) == 1


def test_every_tampered_part_is_refused(server: Server) -> None:
    body = b'{"ref": "main"}'
    now = int(time.time())
    good = signed(body, "d-good", now)
    old_scheme = hmac.new(SECRET, f"{now}.".encode() + body, hashlib.sha256).hexdigest()
    cases: dict[str, tuple[bytes, dict[str, str]]] = {
        "tampered body": (b'{"ref": "evil"}', good),
        "tampered timestamp": (body, {**good, SIGNATURE_HEADER: good[SIGNATURE_HEADER].replace(f"t={now}", f"t={now + 1}")}),
        "tampered delivery": (body, {**good, DELIVERY_HEADER: "d-other"}),
        "stale": (body, signed(body, "d-stale", now - 3600)),
        "future": (body, signed(body, "d-future", now + 3600)),
        "wrong secret": (body, signed(body, "d-wrong", now, b"not-the-secret")),
        "missing signature": (body, {DELIVERY_HEADER: "d-nosig"}),
        "missing delivery": (body, {SIGNATURE_HEADER: good[SIGNATURE_HEADER]}),
        "malformed signature": (body, {SIGNATURE_HEADER: "t=abc,v1=zz", DELIVERY_HEADER: "d-malformed"}),
        "malformed delivery": (body, {**signed(body, "d-ok", now), DELIVERY_HEADER: "d.with.dots"}),
        "old scheme (timestamp.body)": (body, {SIGNATURE_HEADER: f"t={now},v1={old_scheme}", DELIVERY_HEADER: "d-old"}),
    }
    for what, (b, h) in cases.items():
        r = post(server, b, h)
        assert r.status_code == 403, f"{what}: {r.status_code} {r.text}"
        assert r.json()["error"]["reason"] == "Forbidden", what
    assert "delivery id" in post(server, *cases["old scheme (timestamp.body)"]).json()["error"]["message"]
    assert run_count(server) == 0
    assert post(server, body, good).status_code == 201
    assert run_count(server) == 1


def test_rotation_two_signatures_accepted(server: Server) -> None:
    body = b"{}"
    t = int(time.time())
    header = sign(b"the-old-secret", body, t, SECRET, delivery="d-rot")
    assert post(server, body, {SIGNATURE_HEADER: header, DELIVERY_HEADER: "d-rot"}).status_code == 201


def test_unsigned_body_is_refused_before_it_is_read(server: Server) -> None:
    """The headers are enough to refuse: the server answers 403 while the body is still unsent."""
    import socket

    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(
            b"POST /api/v1/jobs/hook/webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 900000\r\n" + DELIVERY_HEADER.encode() + b": d-big\r\n\r\n" + b"{" * 1024
        )
        answer = s.recv(65536)
    assert answer.startswith(b"HTTP/1.1 403"), answer[:200]


# ---------------------------------------------------------------- in process: engine and sink


async def test_engine_refuses_a_replay_under_a_fresh_id_also_after_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jobwire.config import Settings
    from jobwire.engine import Conflict, Engine, Forbidden
    from jobwire.model import Job
    from jobwire.store import RunQuery

    monkeypatch.setenv("FORGERY_HOOK_SECRET", SECRET.decode())
    definition = Job.model_validate(
        {
            "name": "hook",
            "triggers": [{"webhook": {"secret_env": "FORGERY_HOOK_SECRET"}}],
            "target": {"type": "local", "command": ["true"]},
        }
    )
    body = b'{"ref": "main"}'
    captured = signed(body, "delivery-1")
    fresh = {**captured, DELIVERY_HEADER: "delivery-2"}

    async def runs(engine: Engine) -> int:
        await engine.committer.flush()
        return len((await engine.store.list_runs(RunQuery(job="hook"))).items)

    engine = Engine(Settings(data_dir=tmp_path / "data"))
    await engine.start()
    try:
        await engine.put_job(definition)
        assert (await engine.webhook("hook", None, body, captured)).run is not None
        with pytest.raises(Forbidden, match="mismatch"):
            await engine.webhook("hook", None, body, fresh)
        with pytest.raises(Conflict, match="already received"):
            await engine.webhook("hook", None, body, captured)
        assert await runs(engine) == 1
    finally:
        await engine.stop()

    engine = Engine(Settings(data_dir=tmp_path / "data"))  # same data dir, empty in-memory guard
    await engine.start()
    try:
        with pytest.raises(Conflict, match="already received"):
            await engine.webhook("hook", None, body, captured)
        with pytest.raises(Forbidden, match="mismatch"):
            await engine.webhook("hook", None, body, fresh)
        assert await runs(engine) == 1
    finally:
        await engine.stop()


async def test_the_outgoing_sink_signs_the_way_jobwire_verifies() -> None:
    from pydantic import SecretStr

    from jobwire.config import WebhookSinkSpec
    from jobwire.model import StatusBlock, StatusDocument, utcnow
    from jobwire.signing import SignatureError, verify
    from jobwire.sinks import WebhookSink

    doc = StatusDocument(
        name="nightly",
        action="finished",
        status=StatusBlock(succeeded=1, startTime=utcnow(), completionTime=utcnow()),
        environment="prod",
        error=None,
        run_id="r0123456789abcdef",
        event_id="ev-1",
        job="nightly",
        attempt=1,
        time=utcnow(),
    )
    sink = WebhookSink(WebhookSinkSpec(url="http://127.0.0.1:1/hook", secret=SecretStr(SECRET.decode())))
    await sink.start()
    try:
        body = doc.model_dump_json().encode()
        headers = sink.headers(body, doc)
    finally:
        await sink.close()
    delivery = headers[DELIVERY_HEADER]
    digest = hashlib.sha256(body).hexdigest()[:16]  # one id per document (issue 12)
    assert delivery == f"r0123456789abcdef:1:finished:{digest}"
    verify(SECRET, body, headers[SIGNATURE_HEADER], time.time(), 300, delivery=delivery)
    with pytest.raises(SignatureError, match="mismatch"):  # the delivery id is part of what is signed
        verify(SECRET, body, headers[SIGNATURE_HEADER], time.time(), 300, delivery=f"r0123456789abcdef:2:finished:{digest}")
