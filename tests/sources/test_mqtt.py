"""The `mqtt` source against real Mosquitto, with a fake intake: what is handed in, when the
PUBACK goes, the persistent session, poison messages, a broker restart mid-burst.

Each test has its own topic prefix `jwtest/<uuid>/…` and client ids, and removes the persistent
sessions it made; the broker-restart test runs a private mosquitto on a free port."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from jobwire.model import Job
from jobwire.sources.base import Binding
from jobwire.sources.mqtt.source import MqttSource, build, client_id_for, dead_letter, topic_matches
from jobwire.sources.mqtt.spec import PLUG, MqttSettings, MqttTrigger
from tests.support.intake import FakeIntake
from tests.support.mqtt import PrivateMosquitto, forget_session, need_mosquitto, publisher, unique, user_props
from tests.support.waiting import eventually


def payloads(intake: FakeIntake) -> list[Any]:
    return [i.payload for i in intake.incomings]


class World:
    """A topic prefix, settings with a fresh client id, and sources run as the engine's
    supervisor would (called again after they raise)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 1883, **settings: Any) -> None:
        self.prefix = f"jwtest/{uuid.uuid4().hex[:12]}"
        self.host, self.port = host, port
        self.settings = MqttSettings(
            url=f"mqtt://{host}:{port}",
            client_id=unique("jwtest-src"),
            status_prefix=f"{self.prefix}/svc",
            **settings,
        )
        self.tasks: list[asyncio.Task[None]] = []
        self.client_ids: set[str] = set()

    def source(self, *triggers: tuple[str, dict[str, Any]]) -> MqttSource:
        bindings = [
            Binding(job, f"mqtt{i}", MqttTrigger.model_validate({"type": "mqtt", **spec}))
            for i, (job, spec) in enumerate(triggers)
        ]
        (source,) = build(bindings, self.settings)
        assert isinstance(source, MqttSource)
        self.client_ids.add(source.client_id)
        return source

    def start(self, source: MqttSource, intake: FakeIntake) -> asyncio.Task[None]:
        async def supervise() -> None:
            while True:
                with contextlib.suppress(Exception):
                    await source.run(intake)
                await asyncio.sleep(0.05)  # the supervisor's backoff, not a synchronisation

        task = asyncio.create_task(supervise())
        self.tasks.append(task)
        return task

    async def running(self, source: MqttSource, intake: FakeIntake) -> asyncio.Task[None]:
        task = self.start(source, intake)
        await eventually(lambda: source.health.connected, 20, "the source to connect and subscribe")
        return task

    async def stop(self, task: asyncio.Task[None]) -> None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    async def close(self) -> None:
        for task in self.tasks:
            await self.stop(task)
        for cid in self.client_ids:
            await forget_session(cid, self.host, self.port, v5=self.settings.protocol == "5")

    async def publish(self, topic: str, payload: bytes | str, **props: str) -> None:
        async with publisher(self.host, self.port) as client:
            await client.publish(topic, payload, qos=1, properties=user_props(**props) if props else None)


@pytest.fixture
async def world() -> AsyncIterator[World]:
    need_mosquitto()
    w = World()
    try:
        yield w
    finally:
        await w.close()


async def test_a_message_is_one_incoming_and_acked_only_after_submit_returned(world: World) -> None:
    topic = f"{world.prefix}/jobs/a"
    source = world.source(("a", {"topic": topic}))
    intake = FakeIntake()
    intake.hold()  # submit does not return: nothing may be acknowledged
    task = await world.running(source, intake)
    await world.publish(topic, json.dumps({"n": 1}))
    await eventually(lambda: intake.calls, 20, "the message to be handed in")
    (first,) = intake.incomings
    assert (first.job, first.trigger, first.source, first.payload) == ("a", "mqtt0", "mqtt", {"n": 1})
    await world.stop(task)  # the client leaves while submit is still running: no PUBACK was sent

    again = FakeIntake()
    task = await world.running(world.source(("a", {"topic": topic})), again)
    await eventually(lambda: again.incomings, 20, "the unacknowledged message to come again")
    (second,) = again.incomings
    assert second.payload == {"n": 1} and second.event_key == first.event_key  # a duplicate, not a new event
    await eventually(lambda: again.returned == 1, 5, "submit to return (then the PUBACK goes)")
    await world.stop(task)

    # acknowledged now: a third connection gets only what is published next
    third = FakeIntake()
    await world.running(world.source(("a", {"topic": topic})), third)
    await world.publish(topic, json.dumps({"n": 2}))
    await eventually(lambda: third.incomings, 20, "the next message")
    assert payloads(third) == [{"n": 2}]


async def test_not_recorded_means_not_acknowledged(world: World) -> None:
    topic = f"{world.prefix}/jobs/u"
    source = world.source(("u", {"topic": topic}))
    intake = FakeIntake()
    intake.unavailable = True
    await world.running(source, intake)
    await world.publish(topic, json.dumps({"n": 1}))
    # IntakeUnavailable: the source raises, reconnects, and the broker sends the message again
    await eventually(lambda: len(intake.calls) >= 2, 20, "the message to come again after the reconnect")
    assert source.health.last_error is not None or source.health.connected
    intake.unavailable = False
    count = len(intake.calls)
    await eventually(lambda: intake.returned >= 1, 20, "the message to be recorded at last")
    assert all(i.payload == {"n": 1} for i in intake.incomings)
    assert len({i.event_key for i in intake.incomings}) == 1
    assert len(intake.calls) >= count


async def test_messages_published_while_stopped_arrive_after_start(world: World) -> None:
    topic = f"{world.prefix}/jobs/+/done"
    intake = FakeIntake()
    task = await world.running(world.source(("p", {"topic": topic})), intake)  # the session subscribes
    await world.stop(task)
    for n in range(5):
        await world.publish(f"{world.prefix}/jobs/{n}/done", json.dumps({"n": n}))
    await world.running(world.source(("p", {"topic": topic})), intake)
    await eventually(lambda: len(intake.incomings) == 5, 20, "the five messages queued in the session")
    assert sorted(p["n"] for p in payloads(intake)) == [0, 1, 2, 3, 4]


async def test_mqtt_311_session_keeps_messages_too() -> None:
    need_mosquitto()
    world = World(protocol="3.1.1")
    try:
        topic = f"{world.prefix}/old/#"
        intake = FakeIntake()
        task = await world.running(world.source(("o", {"topic": topic})), intake)
        await world.stop(task)
        await world.publish(f"{world.prefix}/old/x", json.dumps({"n": 1}))
        await world.running(world.source(("o", {"topic": topic})), intake)
        await eventually(lambda: intake.incomings, 20, "the message queued while stopped")
        assert payloads(intake) == [{"n": 1}]
    finally:
        await world.close()


async def test_poison_is_dead_lettered_with_its_reason_and_the_next_good_one_handed_in(world: World) -> None:
    topic = f"{world.prefix}/jobs/p"
    intake = FakeIntake()
    source = world.source(("p", {"topic": topic}))
    dead: list[tuple[str, dict[str, Any]]] = []

    async def watch(ready: asyncio.Event) -> None:
        async with publisher() as sub:
            await sub.subscribe(f"{world.prefix}/svc/dead/#", qos=1)
            ready.set()
            async for m in sub.messages:
                assert isinstance(m.payload, bytes)
                dead.append((m.topic.value, json.loads(m.payload)))

    ready = asyncio.Event()
    watcher = asyncio.create_task(watch(ready))
    try:
        await eventually(ready.is_set, 10, "the dead-letter watcher")
        await world.running(source, intake)
        await world.publish(topic, b"{this is not json")
        await world.publish(topic, json.dumps({"poison": "n must be an integer"}))
        await world.publish(topic, json.dumps({"n": 3}))
        await eventually(lambda: len(dead) == 2, 20, "two dead letters")
        await eventually(lambda: {"n": 3} in payloads(intake), 20, "the good message")
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    by_payload = {d["payload"]: (t, d) for t, d in dead}
    t, d = by_payload["{this is not json"]
    assert t == f"{world.prefix}/svc/dead/{topic}" and d["topic"] == topic
    assert "not valid JSON" in d["reason"]
    t, d = by_payload[json.dumps({"poison": "n must be an integer"})]
    assert d["reason"] == "invalid parameters: n must be an integer"
    problem = next(i for i in intake.incomings if i.problem)
    assert problem.payload is None and problem.job == "p"
    assert source.health.dead_lettered == 2 and source.health.messages == 3


async def test_one_message_for_several_triggers_is_one_submit(world: World) -> None:
    """Triggers on one filter: one message, one Incoming each, one submit. Overlapping filters:
    the broker sends a copy per subscription, each handed in for its own filter's triggers only
    (MQTT 5 subscription identifiers), so still one Incoming per trigger."""
    source = world.source(
        ("a", {"topic": f"{world.prefix}/fan/+"}),
        ("b", {"topic": f"{world.prefix}/fan/+"}),
        ("c", {"topic": f"{world.prefix}/fan/#"}),
        ("d", {"topic": f"{world.prefix}/other"}),
    )
    intake = FakeIntake()
    await world.running(source, intake)
    await world.publish(f"{world.prefix}/fan/x", json.dumps({"n": 1}))
    await eventually(lambda: len(intake.incomings) >= 3, 20, "the message for three triggers")
    assert sorted((i.job, i.trigger) for i in intake.incomings) == [("a", "mqtt0"), ("b", "mqtt1"), ("c", "mqtt2")]
    shared = next(call for call in intake.calls if any(i.job == "a" for i in call))
    assert {i.job for i in shared} >= {"a", "b"}


async def test_the_shared_intake_takes_the_job_from_a_topic_level(world: World) -> None:
    """`JOBWIRE_MQTT_INTAKE_TOPIC=<prefix>/jobs/+/run` with `..._JOB_LEVEL`: the level names the job."""
    level = len(world.prefix.split("/")) + 1
    settings = MqttSettings(intake_topic=f"{world.prefix}/jobs/+/run", intake_job_level=level)
    (binding,) = PLUG.global_bindings(settings)  # type: ignore[misc]
    assert binding.job is None
    (source,) = build([binding], world.settings)
    assert isinstance(source, MqttSource)
    world.client_ids.add(source.client_id)
    intake = FakeIntake()
    await world.running(source, intake)
    await world.publish(f"{world.prefix}/jobs/convert/run", json.dumps({"input_location": "a.csv"}))
    await eventually(lambda: intake.incomings, 20, "the message")
    (inc,) = intake.incomings
    assert (inc.job, inc.problem, inc.payload) == ("convert", None, {"input_location": "a.csv"})
    assert MqttSettings().intake_topic is None and PLUG.global_bindings(MqttSettings()) == []  # type: ignore[misc]


async def test_raw_payload_event_keys_and_retained_messages(world: World) -> None:
    base = f"{world.prefix}/raw"
    # a retained message waiting before the subscription: ignored by default
    async with publisher() as pub:
        await pub.publish(f"{base}/r", b"old", qos=1, retain=True)
    try:
        source = world.source(
            ("raw", {"topic": f"{base}/r", "payload": "raw"}),
            ("keyed", {"topic": f"{base}/k", "event_key": "id"}),
        )
        intake = FakeIntake()
        await world.running(source, intake)
        await world.publish(f"{base}/r", "hello")
        await world.publish(f"{base}/r", "hello")  # same payload within the window: same key
        await world.publish(f"{base}/k", json.dumps({"id": "body-1"}))
        await world.publish(f"{base}/k", json.dumps({"id": "body-1"}), id="prop-9")  # the property wins
        await eventually(lambda: len(intake.incomings) == 4, 20, "four messages")
        seen = list(intake.incomings)
    finally:
        async with publisher() as pub:  # remove the retained message
            await pub.publish(f"{base}/r", b"", qos=1, retain=True)
    raw = [i for i in seen if i.job == "raw"]
    assert [i.payload for i in raw] == [{"payload": "hello"}, {"payload": "hello"}]
    assert raw[0].event_key == raw[1].event_key and raw[0].event_key.startswith("h:")
    keyed = [i.event_key for i in seen if i.job == "keyed"]
    assert keyed == ["k:body-1", "k:prop-9"]


async def test_a_broker_restart_mid_burst_loses_nothing(tmp_path: Path) -> None:
    broker = await PrivateMosquitto(tmp_path / "mosquitto").start()
    world = World(port=broker.port)
    try:
        topic = f"{world.prefix}/burst"
        source = world.source(("b", {"topic": topic, "event_key": "id"}))
        intake = FakeIntake()
        await world.running(source, intake)
        total = 300

        async def publish_all() -> None:
            n = 0
            while n < total:
                try:
                    async with publisher(port=broker.port, timeout=2) as pub:
                        while n < total:
                            await pub.publish(topic, json.dumps({"id": n}), qos=1)
                            n += 1  # the broker confirmed it (PUBACK): it must reach the source
                except aiomqtt.MqttError:
                    await asyncio.sleep(0.05)  # broker away: publish again once it is back

        burst = asyncio.create_task(publish_all())
        await eventually(lambda: len(intake.incomings) >= 50, 30, "the burst to be flowing")
        await broker.restart()
        await burst
        await eventually(
            lambda: {i.payload["id"] for i in intake.incomings} == set(range(total)),
            60,
            "every message handed in after the restart",
        )
        assert {i.event_key for i in intake.incomings} == {f"k:{n}" for n in range(total)}
        await eventually(lambda: source.health.connected, 20, "the source to be connected again")
    finally:
        await world.close()
        await broker.stop()


# --------------------------------------------------------------------------- without a broker


def test_topic_matching() -> None:
    assert topic_matches("a/b/c", "a/+/c") and topic_matches("a/b/c", "a/#") and topic_matches("a", "a/#")
    assert not topic_matches("a/b", "a/+/c") and not topic_matches("a/b/c", "a/+")
    assert topic_matches("$SYS/x", "$SYS/#") and not topic_matches("$SYS/x", "#")
    assert topic_matches("services/mqtt_job_listener/job_complete/a", "services/mqtt_job_listener/job_complete/+")


def test_build_one_source_per_broker_with_stable_client_ids() -> None:
    settings = MqttSettings(url="mqtt://127.0.0.1:1883", client_id="jw-fixed")
    t1 = MqttTrigger(topic="a/#")
    t2 = MqttTrigger(topic="b/+")
    t3 = MqttTrigger(topic="c", url="mqtts://u:secret@broker.example:8883")
    sources = build([Binding("a", "m", t1), Binding("b", "m", t2), Binding("c", "m", t3)], settings)
    assert [(s.name, len(s.bindings)) for s in sources] == [
        ("mqtt@127.0.0.1:1883", 2),
        ("mqtt@broker.example:8883", 1),
    ]
    local, remote = sources
    assert isinstance(local, MqttSource) and isinstance(remote, MqttSource)
    assert local.subscriptions() == {"a/#": 1, "b/+": 1}
    assert local.client_id == "jw-fixed"
    assert remote.client_id == client_id_for(settings, t3.url or "") != "jw-fixed"
    assert remote.client_id.startswith("jw-fixed-")
    assert "secret" not in remote.health.target and "****" in remote.health.target


def test_dead_letter_shape() -> None:
    topic, body = dead_letter("services/mqtt_job_listener", "sensors/1", b"\xff\xfe", "payload is not UTF-8 text")
    assert topic == "services/mqtt_job_listener/dead/sensors/1"
    doc = json.loads(body)
    assert doc["reason"] == "payload is not UTF-8 text" and doc["topic"] == "sensors/1"
    assert doc["payload"] is None and doc["payload_base64"] == "//4="


def test_trigger_definition_errors() -> None:
    def job(trigger: dict[str, Any]) -> Job:
        return Job.model_validate(
            {"name": "j", "triggers": [trigger], "target": {"type": "local", "command": ["true"]}}
        )

    assert job({"mqtt": {"topic": "services/mqtt_job_listener/job_complete/a"}}).triggers[0].type == "mqtt"
    for bad, why in [
        ({"type": "mqtt", "topic": "a/#/b"}, "'#' must be a whole level"),
        ({"type": "mqtt", "topic": "a/b+"}, "'+' must be a whole level"),
        ({"type": "mqtt", "topic": ""}, "cannot be empty"),
        ({"type": "mqtt", "topic": "a", "qos": 0, "reliable": True}, "reliable delivery needs qos 1"),
        ({"type": "mqtt", "topic": "a", "qos": 2, "reliable": True}, "reliable delivery needs qos 1"),
        ({"type": "mqtt", "topic": "a", "url": "http://x"}, "mqtt:// or mqtts://"),
        ({"type": "mqtt", "topic": "a", "dedupe_window": "0s"}, "at least 1s"),
    ]:
        with pytest.raises(ValueError, match=why.replace("+", r"\+")):
            job(bad)


def test_settings_sink_on_when_the_url_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOBWIRE_MQTT_URL", raising=False)
    monkeypatch.delenv("JOBWIRE_MQTT_SINK", raising=False)
    assert not MqttSettings().sink_enabled
    monkeypatch.setenv("JOBWIRE_MQTT_URL", "mqtt://broker:1883")
    assert MqttSettings().sink_enabled
    monkeypatch.setenv("JOBWIRE_MQTT_SINK", "false")
    assert not MqttSettings().sink_enabled
    assert MqttSettings().status_prefix == "services/mqtt_job_listener"
    assert MqttSettings().client_id == MqttSettings().client_id  # stable


# --------------------------------------------------------------------------- end to end (engine)


async def test_seed_004_completion_topic_chains_the_next_job_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seed 004's chaining through a real engine: job A ends, the mqtt sink publishes its status
    document on `<prefix>/job_complete/A`, a subscriber gets it, and job B — whose mqtt trigger is
    that topic — runs once; the completion delivered three times still launches B once."""
    import sys
    from datetime import timedelta

    from jobwire.config import Settings
    from jobwire.engine import Engine
    from jobwire.model import RunState, StatusDocument
    from jobwire.store import EventQuery, RunQuery

    need_mosquitto()
    prefix = f"jwtest/{uuid.uuid4().hex[:12]}/services/mqtt_job_listener"
    client_id = unique("jwtest-eng")
    monkeypatch.setenv("JOBWIRE_MQTT_URL", "mqtt://127.0.0.1:1883")
    monkeypatch.setenv("JOBWIRE_MQTT_CLIENT_ID", client_id)
    monkeypatch.setenv("JOBWIRE_MQTT_STATUS_PREFIX", prefix)
    completions: list[tuple[str, bytes]] = []
    ready = asyncio.Event()

    async def watch() -> None:
        async with publisher() as sub:
            await sub.subscribe(f"{prefix}/job_complete/A", qos=1)
            ready.set()
            async for m in sub.messages:
                assert isinstance(m.payload, bytes)
                completions.append((m.topic.value, m.payload))

    watcher = asyncio.create_task(watch())
    engine = Engine(Settings(_env_file=None, data_dir=tmp_path / "data", shutdown_grace=timedelta(seconds=2)))
    await engine.start()
    try:
        await eventually(ready.is_set, 10, "the completion subscriber")
        marks = tmp_path / "b-ran"
        append = "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + '\\n')"
        await engine.put_job(
            Job.model_validate(
                {"name": "A", "triggers": ["api"], "target": {"type": "local", "command": [sys.executable, "-c", "pass"]}}
            )
        )
        await engine.put_job(
            Job.model_validate(
                {
                    "name": "B",
                    # the document's run_id identifies the completion, however late it comes again
                    "triggers": [{"mqtt": {"topic": f"{prefix}/job_complete/A", "event_key": "run_id"}}],
                    "parameters": [{"name": "run_id", "type": "string"}],
                    "target": {"type": "local", "command": [sys.executable, "-c", append, str(marks), "{{run_id}}"]},
                }
            )
        )
        await eventually(
            lambda: any(s.get("kind") == "mqtt" and s["connected"] for s in engine.health()["sources"]),
            20,
            "the mqtt source to connect",
        )
        adm = await engine.trigger("A", {})
        assert adm.run is not None
        await eventually(lambda: completions, 20, "A's completion on job_complete/A")
        topic, payload = completions[0]
        doc = StatusDocument.model_validate_json(payload)
        assert topic == f"{prefix}/job_complete/A"
        assert (doc.job, doc.action, doc.run_id, doc.status.succeeded) == ("A", "succeeded", adm.run.id, 1)
        await eventually(lambda: marks.exists() and marks.read_text().split(), 20, "B to run")
        assert marks.read_text().split() == [adm.run.id]  # B got A's run id from the document

        # the same completion delivered twice more: still one run of B
        for _ in range(2):
            async with publisher() as pub:
                await pub.publish(f"{prefix}/job_complete/A", payload, qos=1)

        async def b_events() -> list[Any]:
            events = (await engine.store.list_events(EventQuery(job="B", limit=100))).items
            return events if len(events) == 3 else []

        events = await eventually(b_events, 20, "the two redeliveries to be recorded")
        assert sorted(e.outcome.value for e in events) == ["duplicate", "duplicate", "run"]

        async def b_runs_ended() -> list[Any]:
            # B's end is written with the next group commit (state changes are not awaited)
            runs = (await engine.store.list_runs(RunQuery(job="B", limit=10))).items
            return runs if all(r.state.terminal for r in runs) else []

        runs = await eventually(b_runs_ended, 20, "B's run to be recorded as ended")
        assert len(runs) == 1 and runs[0].state == RunState.succeeded
    finally:
        await engine.stop()
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        await forget_session(client_id)
