"""The Sink contract: `publish` delivers or raises (the engine retries). Webhook, log, mqtt and s3log sinks."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
import structlog
from pydantic import SecretStr

from jobwire.config import LogSinkSpec, Settings, WebhookSinkSpec
from jobwire.engine.metrics import Metrics
from jobwire.engine.status import StatusHub
from jobwire.model import RunError, StatusBlock, StatusDocument, utcnow
from jobwire.signing import DELIVERY_HEADER, SIGNATURE_HEADER, SignatureError, check_delivery, verify
from jobwire.sinks import (
    SINKS,
    DeliveryError,
    LogSink,
    MqttSink,
    S3LogSink,
    SinkConfigError,
    WebhookSink,
    build_sinks,
)
from jobwire.sinks.webhook import delivery_id
from tests.support.aws import aws_env, moto  # noqa: F401  (fixtures: moto over HTTP, AWS_* set)
from tests.support.fake_context import RecordingServer, wait_until

SECRET = "sink-secret-value"
DELIVERY = re.compile(r"^r0123456789abcdef:\d+:[a-z_]+:[0-9a-f]{16}$")


def doc(action: str = "finished", attempt: int = 1) -> StatusDocument:
    return StatusDocument(
        name="nightly",
        action=action,
        status=StatusBlock(succeeded=1, startTime=utcnow(), completionTime=utcnow()),
        environment="prod",
        error=None,
        run_id="r0123456789abcdef",
        event_id="ev-1",
        job="nightly",
        attempt=attempt,
        time=utcnow(),
    )


@pytest.fixture
async def server() -> AsyncIterator[RecordingServer]:
    s = await RecordingServer().start()
    yield s
    await s.stop()


async def started(spec: WebhookSinkSpec) -> WebhookSink:
    sink = WebhookSink(spec)
    await sink.start()
    return sink


def test_registry(tmp_path: Path) -> None:
    assert dict(SINKS) == {"webhook": WebhookSink, "log": LogSink, "mqtt": MqttSink, "s3log": S3LogSink}
    settings = Settings(
        data_dir=tmp_path,
        sinks=[WebhookSinkSpec(url="http://127.0.0.1:1/hook", max_attempts=7), LogSinkSpec()],
    )
    sinks = build_sinks(settings)
    assert [type(s) for s in sinks] == [WebhookSink, LogSink]
    assert sinks[0].max_attempts == 7


async def test_webhook_delivers_a_verifiable_signed_document(server: RecordingServer) -> None:
    sink = await started(WebhookSinkSpec(url=server.url("/hook"), secret=SecretStr(SECRET)))
    try:
        d = doc()
        await sink.publish(d)
    finally:
        await sink.close()
    (req,) = server.requests
    assert req.method == "POST"
    assert req.headers["content-type"] == "application/json"
    assert DELIVERY.match(req.headers[DELIVERY_HEADER.lower()])
    assert req.headers[DELIVERY_HEADER.lower()].startswith(f"{d.run_id}:1:finished:")
    verify(SECRET.encode(), req.body, req.headers[SIGNATURE_HEADER.lower()], time.time(), 60, delivery=req.headers[DELIVERY_HEADER.lower()])
    assert StatusDocument.model_validate_json(req.body) == d
    with pytest.raises(SignatureError):
        verify(b"wrong", req.body, req.headers[SIGNATURE_HEADER.lower()], time.time(), 60, delivery=req.headers[DELIVERY_HEADER.lower()])


async def test_webhook_secret_from_env(server: RecordingServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOOK_SECRET_FOR_TEST", SECRET)
    sink = await started(WebhookSinkSpec(url=server.url("/hook"), secret_env="HOOK_SECRET_FOR_TEST"))
    try:
        await sink.publish(doc())
    finally:
        await sink.close()
    (req,) = server.requests
    verify(SECRET.encode(), req.body, req.headers[SIGNATURE_HEADER.lower()], time.time(), 60, delivery=req.headers[DELIVERY_HEADER.lower()])


async def test_webhook_missing_secret_env_fails_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HOOK_SECRET_ABSENT", raising=False)
    sink = WebhookSink(WebhookSinkSpec(url="http://127.0.0.1:1/hook", secret_env="HOOK_SECRET_ABSENT"))
    with pytest.raises(SinkConfigError, match="HOOK_SECRET_ABSENT"):
        await sink.start()


async def test_webhook_raises_on_500(server: RecordingServer) -> None:
    sink = await started(WebhookSinkSpec(url=server.url("/status/500"), secret=SecretStr(SECRET)))
    try:
        d = doc()
        with pytest.raises(DeliveryError, match="500"):
            await sink.publish(d)
        # a retry of the same document carries the same delivery id
        with pytest.raises(DeliveryError):
            await sink.publish(d)
    finally:
        await sink.close()
    ids = {r.headers[DELIVERY_HEADER.lower()] for r in server.requests}
    assert len(server.requests) == 2 and len(ids) == 1


async def test_webhook_raises_on_network_error(server: RecordingServer) -> None:
    url = server.url("/hook")
    await server.stop()
    sink = await started(WebhookSinkSpec(url=url))
    try:
        with pytest.raises(DeliveryError):
            await sink.publish(doc())
    finally:
        await sink.close()


async def test_webhook_private_destination_guard(server: RecordingServer) -> None:
    sink = await started(WebhookSinkSpec(url=server.url("/hook"), allow_private=False))
    try:
        with pytest.raises(DeliveryError, match="allow_private"):
            await sink.publish(doc())
    finally:
        await sink.close()
    assert server.requests == []


async def test_webhook_error_message_hides_url_credentials(server: RecordingServer) -> None:
    url = server.url("/status/503?token=query-secret").replace("http://", "http://user:pw-secret@")
    sink = await started(WebhookSinkSpec(url=url))
    try:
        with pytest.raises(DeliveryError) as info:
            await sink.publish(doc())
    finally:
        await sink.close()
    assert "pw-secret" not in str(info.value) and "query-secret" not in str(info.value)


async def test_log_sink_logs_status_fields_only() -> None:
    d = doc().model_copy(
        update={"error": RunError(message="body with sekrit", reason="HTTPStatus", code=500)}
    )
    with structlog.testing.capture_logs() as logs:
        await LogSink().publish(d)
    (entry,) = logs
    assert entry["event"] == "status"
    assert entry["log_level"] == "info"
    assert (entry["run_id"], entry["job"], entry["action"]) == (d.run_id, d.job, d.action)
    assert "sekrit" not in repr(entry)


async def test_webhook_delivery_id_is_unique_per_document_and_kept_by_retries(server: RecordingServer) -> None:
    """Issue 12: three status documents of one Kubernetes run (active, then succeeded, then
    completionTime set) all said `action: running` and all carried `<run>:1:running`, so a receiver
    deduping on Jobwire-Delivery dropped the completion. Through the hub's real retry loop: every
    first delivery of a body fails (500), its retry must carry the same id."""
    t0 = utcnow()
    blocks = [
        StatusBlock(active=1, startTime=t0),
        StatusBlock(active=0, succeeded=1, startTime=t0),
        StatusBlock(active=0, succeeded=1, startTime=t0, completionTime=t0 + timedelta(seconds=3)),
    ]
    docs = [doc("running").model_copy(update={"status": b}) for b in blocks]
    sink = WebhookSink(WebhookSinkSpec(url=server.url("/fail-once"), secret=SecretStr(SECRET), max_attempts=3))
    hub = StatusHub([sink], Metrics())
    await hub.start()
    try:
        for d in docs:
            hub.publish(d)
        await wait_until(lambda: len(server.requests) == 6, 20, "three documents, each delivered twice")
    finally:
        await hub.stop()
    ids = [r.headers[DELIVERY_HEADER.lower()] for r in server.requests]
    assert ids[0] == ids[1] and ids[2] == ids[3] and ids[4] == ids[5], ids  # a retry keeps its id
    assert len({ids[0], ids[2], ids[4]}) == 3, ids  # one id per document
    for r, delivery in zip(server.requests, ids, strict=True):
        assert DELIVERY.match(delivery) and check_delivery(delivery) == delivery
        assert delivery.startswith(f"{docs[0].run_id}:1:running:")
        verify(SECRET.encode(), r.body, r.headers[SIGNATURE_HEADER.lower()], time.time(), 60, delivery=delivery)
    assert [StatusDocument.model_validate_json(r.body) for r in server.requests[::2]] == docs


async def test_webhook_delivery_id_follows_the_document_not_the_wall_clock(server: RecordingServer) -> None:
    """The id is derived from the bytes sent, `time` included: a document published again later
    with an equal status (a Job going active 1 -> 0 -> 1) is a new delivery, not a duplicate; only
    a retry of the very same document (same bytes) repeats an id."""
    first = doc("running")
    later = first.model_copy(update={"time": first.time + timedelta(seconds=5)})
    sink = await started(WebhookSinkSpec(url=server.url("/hook")))
    try:
        for d in (first, later, first):
            await sink.publish(d)
    finally:
        await sink.close()
    ids = [r.headers[DELIVERY_HEADER.lower()] for r in server.requests]
    assert ids[0] != ids[1] and ids[0] == ids[2]
    assert ids[0] == delivery_id(first) == delivery_id(first, server.requests[0].body)


# --------------------------------------------------------------------------- mqtt (real Mosquitto)


async def test_mqtt_sink_publishes_completions_on_job_complete_and_the_rest_on_status() -> None:
    import asyncio
    import json
    import uuid

    from jobwire.config import MqttSinkSpec
    from tests.support.mqtt import need_mosquitto, publisher

    need_mosquitto()
    prefix = f"jwtest/{uuid.uuid4().hex[:12]}/services/mqtt_job_listener"
    got: list[tuple[str, bytes, bool]] = []
    ready = asyncio.Event()

    async def watch() -> None:
        async with publisher() as sub:
            await sub.subscribe(f"{prefix}/#", qos=1)
            ready.set()
            async for m in sub.messages:
                assert isinstance(m.payload, bytes)
                got.append((m.topic.value, m.payload, m.retain))

    watcher = asyncio.create_task(watch())
    sink = MqttSink(MqttSinkSpec(url="mqtt://127.0.0.1:1883", prefix=prefix))
    await sink.start()
    try:
        await wait_until(ready.is_set, 10, "the subscriber")
        running, done, failed = doc("running"), doc("succeeded"), doc("failed", attempt=2)
        for d in (running, done, failed):
            await sink.publish(d)
        await wait_until(lambda: len(got) == 3, 10, "three status documents")
    finally:
        await sink.close()
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    assert [t for t, _, _ in got] == [
        f"{prefix}/status/nightly",
        f"{prefix}/job_complete/nightly",
        f"{prefix}/job_complete/nightly",
    ]
    assert [StatusDocument.model_validate_json(b) for _, b, _ in got] == [running, done, failed]
    assert not any(retained for _, _, retained in got)
    assert json.loads(got[1][1])["action"] == "succeeded"


async def test_mqtt_sink_raises_when_the_broker_is_away() -> None:
    from jobwire.config import MqttSinkSpec
    from tests.support.mqtt import free_port

    sink = MqttSink(MqttSinkSpec(url=f"mqtt://user:pw-secret@127.0.0.1:{free_port()}"))
    await sink.start()
    try:
        with pytest.raises(DeliveryError, match="cannot connect") as info:
            await sink.publish(doc())
    finally:
        await sink.close()
    assert "pw-secret" not in str(info.value)


def test_mqtt_sink_from_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from jobwire.config import MqttSinkSpec

    monkeypatch.delenv("JOBWIRE_MQTT_SINK", raising=False)
    monkeypatch.delenv("JOBWIRE_MQTT_URL", raising=False)
    assert build_sinks(Settings(data_dir=tmp_path)) == []
    monkeypatch.setenv("JOBWIRE_MQTT_URL", "mqtt://broker.example:1883")
    monkeypatch.setenv("JOBWIRE_MQTT_STATUS_PREFIX", "lab/listener")
    (sink,) = build_sinks(Settings(data_dir=tmp_path))
    assert isinstance(sink, MqttSink) and sink.prefix == "lab/listener" and sink.host == "broker.example"
    monkeypatch.setenv("JOBWIRE_MQTT_SINK", "false")
    assert build_sinks(Settings(data_dir=tmp_path)) == []
    # an explicit entry takes its broker from JOBWIRE_MQTT_URL when it names none
    (sink,) = build_sinks(Settings(data_dir=tmp_path, sinks=[MqttSinkSpec(prefix="x")]))
    assert isinstance(sink, MqttSink) and sink.host == "broker.example" and sink.prefix == "x"
    with pytest.raises(SinkConfigError, match="prefix"):
        MqttSink(MqttSinkSpec(prefix="a/#"))


async def test_mqtt_sink_reconnects_after_the_broker_restarts(tmp_path: Path) -> None:
    """A publish while the broker is away raises (the hub retries it); once the broker is back,
    the next publish connects again and is delivered."""
    import asyncio

    from jobwire.config import MqttSinkSpec
    from tests.support.mqtt import PrivateMosquitto, publisher

    broker = await PrivateMosquitto(tmp_path / "mosquitto").start()
    sink = MqttSink(MqttSinkSpec(url=broker.url, prefix="jwtest/sink"))
    await sink.start()
    got: list[StatusDocument] = []
    ready = asyncio.Event()

    async def watch() -> None:
        async with publisher(port=broker.port) as sub:
            await sub.subscribe("jwtest/sink/#", qos=1)
            ready.set()
            async for m in sub.messages:
                got.append(StatusDocument.model_validate_json(m.payload))  # type: ignore[arg-type]

    try:
        await sink.publish(doc("running"))  # connected
        await broker.stop()
        with pytest.raises(DeliveryError):
            await sink.publish(doc("succeeded"))
        await broker.start()
        watcher = asyncio.create_task(watch())
        await wait_until(ready.is_set, 10, "the subscriber")
        d = doc("succeeded")
        await sink.publish(d)
        await wait_until(lambda: got, 10, "the document after the restart")
        assert got == [d]
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    finally:
        await sink.close()
        await broker.stop()


# --------------------------------------------------------------------------- s3log (moto over HTTP)


def _log_reader(logs: dict[str, bytes]):  # type: ignore[no-untyped-def]
    async def read(run_id: str) -> AsyncIterator[bytes]:
        yield logs[run_id][:3]
        yield logs[run_id][3:]

    return read


@pytest.mark.usefixtures("aws_env")
async def test_s3log_sink_writes_the_log_at_a_runs_end_and_ignores_other_states() -> None:
    import asyncio

    import boto3

    from jobwire.config import S3LogSinkSpec
    from tests.support.aws import unique_name

    bucket = unique_name("jw-contract")
    client = boto3.client("s3")
    await asyncio.to_thread(client.create_bucket, Bucket=bucket)
    sink = S3LogSink(S3LogSinkSpec(bucket=bucket, prefix="logs"))
    sink.bind(run_log=_log_reader({"r0123456789abcdef": b"hello\nworld\n"}))
    await sink.start()
    try:
        await sink.publish(doc("running"))
        listed = await asyncio.to_thread(client.list_objects_v2, Bucket=bucket)
        assert listed.get("KeyCount") == 0  # not a run's end: nothing written
        await sink.publish(doc("succeeded"))
    finally:
        await sink.close()
    got = await asyncio.to_thread(client.get_object, Bucket=bucket, Key="logs/nightly/r0123456789abcdef.log")
    assert got["Body"].read() == b"hello\nworld\n"


@pytest.mark.usefixtures("aws_env")
async def test_s3log_sink_raises_when_s3_refuses() -> None:
    from jobwire.config import S3LogSinkSpec
    from tests.support.aws import unique_name

    sink = S3LogSink(S3LogSinkSpec(bucket=unique_name("jw-absent")))
    sink.bind(run_log=_log_reader({"r0123456789abcdef": b"x"}))
    await sink.start()
    try:
        with pytest.raises(DeliveryError, match="NoSuchBucket"):
            await sink.publish(doc("failed"))
    finally:
        await sink.close()


async def test_s3log_sink_from_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    from jobwire.config import settings_error_lines

    monkeypatch.setenv("JOBWIRE_SINKS", '[{"type": "s3log", "bucket": "braingeneers", "prefix": "services/logs"}]')
    (sink,) = build_sinks(Settings(data_dir=tmp_path))
    assert isinstance(sink, S3LogSink) and sink.bucket == "braingeneers" and sink.prefix == "services/logs"
    with pytest.raises(SinkConfigError, match="run log reader"):
        await sink.start()  # the engine binds it before starting it
    monkeypatch.setenv("JOBWIRE_SINKS", '[{"type": "s3log", "bucket": "Not_A_Bucket", "path": "x"}]')
    with pytest.raises(ValidationError) as info:
        Settings(data_dir=tmp_path)
    lines = settings_error_lines(info.value)
    assert any(line.startswith("sinks.0.bucket (JOBWIRE_SINKS)") for line in lines), lines
    assert any("a s3log sink has no setting 'path'" in line for line in lines), lines
