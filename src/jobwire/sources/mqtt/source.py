"""The `mqtt` source: aiomqtt (paho-mqtt underneath), one client per broker.

What a message goes through:

1. It arrives on the client's persistent session (MQTT 5: clean start off and a session expiry;
   3.1.1: clean session off), so messages published while jobwire was stopped are delivered
   when it connects again, for as long as the broker keeps the session.
2. It becomes one `Incoming` per binding whose topic filter matches (a message several jobs
   listen to is several Incomings), all handed in with one `intake.submit` call together with
   whatever other messages were already waiting (one commit).
3. Only after `submit` returned is the message acknowledged: paho-mqtt's manual acknowledgement
   (`manual_ack_set(True)` before connecting, then `ack(mid, qos)`), which aiomqtt 2.x does not
   expose, so the source reaches its paho client (`aiomqtt.Client._client`). For QoS 1 that
   PUBACK is the broker's only proof of delivery: a crash, a disconnect or `IntakeUnavailable`
   before it means the broker sends the message again (the run key makes it a `duplicate`).
   For QoS 2 paho sends PUBREC when the message arrives (the broker then never resends it),
   and only the PUBCOMP waits for the commit: a crash between the two loses the message; so a
   `reliable` trigger must use QoS 1. QoS 0 messages are never acknowledged nor resent.
4. An admission `invalid` (not JSON, invalid parameters, no such job): the message is published
   to `<status_prefix>/dead/<topic>` as JSON `{reason, topic, payload}` (QoS 1, confirmed), then
   acknowledged. The next message flows as usual.

Connection loss, a refused subscription or an intake that cannot record: `health` goes down and
`run` raises; the engine calls it again with backoff, and the broker resends what was not
acknowledged.
"""

from __future__ import annotations

import base64
import hashlib
import json
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import aiomqtt
import structlog
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from jobwire.model import Admission, Incoming
from jobwire.sources.base import Binding, Intake, IntakeUnavailable, Source, dead_letter_reason
from jobwire.sources.mqtt.spec import MqttSettings, MqttTrigger

log = structlog.get_logger(__name__)

BATCH = 256
"""Messages handed in with one `submit` at most (those already waiting when one arrives)."""
MAX_SESSION_EXPIRY = 0xFFFFFFFE
"""MQTT 5's largest finite session expiry (0xFFFFFFFF means never)."""
DEAD_PAYLOAD_MAX = 65_536
"""Bytes of the original payload copied into a dead letter."""


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool
    username: str | None
    password: str | None

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        parts = urlsplit(url)
        tls = parts.scheme == "mqtts"
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or (8883 if tls else 1883),
            tls=tls,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
        )

    @property
    def masked(self) -> str:
        user = f"{self.username}:****@" if self.password else f"{self.username}@" if self.username else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{self.host}:{self.port}"


def topic_matches(topic: str, topic_filter: str) -> bool:
    """MQTT matching: `+` one level, `#` the rest (including the parent level); a topic that
    starts with `$` is not matched by a filter that starts with a wildcard."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    tl, fl = topic.split("/"), topic_filter.split("/")
    for i, level in enumerate(fl):
        if level == "#":
            return True
        if i >= len(tl) or (level != "+" and level != tl[i]):
            return False
    return len(tl) == len(fl)


def subscription_id(topic_filter: str) -> int:
    """A filter's MQTT 5 subscription identifier: derived from the filter, so it is the same on
    every connection (messages queued in the session carry the identifier they matched)."""
    return int.from_bytes(hashlib.sha256(topic_filter.encode()).digest()[:4], "big") % 268_435_455 + 1


def subscription_ids(message: aiomqtt.Message) -> set[int]:
    ids = getattr(message.properties, "SubscriptionIdentifier", None) if message.properties else None
    if ids is None:
        return set()
    return {int(i) for i in (ids if isinstance(ids, list) else [ids])}


def user_properties(message: aiomqtt.Message) -> dict[str, str]:
    props = message.properties
    pairs = getattr(props, "UserProperty", None) if props is not None else None
    return {str(k): str(v) for k, v in pairs or []}


def topic_level(topic: str, level: int | None) -> str | None:
    """The topic's level `level` (0-based), or None."""
    if level is None:
        return None
    parts = topic.split("/")
    return parts[level] or None if level < len(parts) else None


def event_key(
    trigger: MqttTrigger, topic: str, payload: bytes, body: Any, props: dict[str, str], now: float
) -> str:
    """The trigger's `event_key` (a user property, else a body field), else topic + payload hash
    within the dedupe window (see `jobwire.sources.mqtt.spec`)."""
    if trigger.event_key:
        value = props.get(trigger.event_key)
        if value is None and isinstance(body, dict):
            value = body.get(trigger.event_key)
        if value is not None and value != "":
            return f"k:{value}"
    window = max(trigger.dedupe_window.total_seconds(), 1.0)
    digest = hashlib.sha256(topic.encode("utf-8", "surrogatepass") + b"\0" + payload).hexdigest()[:32]
    return f"h:{digest}:{int(now // window)}"


def dead_letter(prefix: str, topic: str, payload: bytes, reason: str) -> tuple[str, bytes]:
    """The dead-letter topic and JSON body `{reason, topic, payload}` (payload as text, or
    `payload_base64` when it is not UTF-8; cut at `DEAD_PAYLOAD_MAX` bytes)."""
    body: dict[str, Any] = {"reason": reason, "topic": topic}
    cut = payload[:DEAD_PAYLOAD_MAX]
    try:
        body["payload"] = cut.decode("utf-8")
    except UnicodeDecodeError:
        body["payload"] = None
        body["payload_base64"] = base64.b64encode(cut).decode("ascii")
    if len(payload) > DEAD_PAYLOAD_MAX:
        body["payload_truncated"] = True
    return f"{prefix}/dead/{topic}", json.dumps(body).encode()


@dataclass(slots=True)
class _Message:
    message: aiomqtt.Message
    topic: str
    payload: bytes
    incomings: list[Incoming] = field(default_factory=list)


class MqttSource(Source):
    """One client on one broker, subscribed to every binding's topic filter."""

    kind = "mqtt"

    def __init__(self, name: str, bindings: Sequence[Binding], settings: MqttSettings, url: str) -> None:
        super().__init__(name, bindings, settings)
        self.settings: MqttSettings = settings
        self.url = url
        self.address = BrokerAddress.parse(url)
        self.client_id = client_id_for(settings, url)
        self.dead_prefix = f"{settings.status_prefix}/dead/"
        filters = ", ".join(sorted({self._trigger(b).topic for b in self.bindings}))
        self.health.target = f"{self.address.masked} {filters}"

    @property
    def identity(self) -> tuple[str, str]:
        name, specs = super().identity
        return name, f"{self.client_id}\n{specs}"

    @staticmethod
    def _trigger(binding: Binding) -> MqttTrigger:
        trigger = binding.trigger
        assert isinstance(trigger, MqttTrigger)
        return trigger

    def subscriptions(self) -> dict[str, int]:
        """Each topic filter once, at the highest QoS any of its bindings asks for."""
        subs: dict[str, int] = {}
        for b in self.bindings:
            t = self._trigger(b)
            subs[t.topic] = max(subs.get(t.topic, 0), t.qos)
        return subs

    def client(self) -> aiomqtt.Client:
        v5 = self.settings.protocol == "5"
        kwargs: dict[str, Any] = {}
        if v5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            expiry = int(self.settings.session_expiry.total_seconds())
            props.SessionExpiryInterval = min(expiry, MAX_SESSION_EXPIRY)
            props.ReceiveMaximum = self.settings.inflight
            kwargs.update(clean_start=False, properties=props, protocol=aiomqtt.ProtocolVersion.V5)
        else:
            kwargs.update(clean_session=False, protocol=aiomqtt.ProtocolVersion.V311)
        if self.address.tls:
            kwargs["tls_context"] = ssl.create_default_context()
        client = aiomqtt.Client(
            self.address.host,
            self.address.port,
            username=self.address.username,
            password=self.address.password,
            identifier=self.client_id,
            keepalive=30,
            **kwargs,
        )
        # aiomqtt acknowledges in its paho callback; jobwire acknowledges after the commit.
        client._client.manual_ack_set(True)
        return client

    async def run(self, intake: Intake) -> None:
        client = self.client()
        try:
            async with client:
                await self._subscribe(client)
                self.health.up()
                log.info("mqtt source connected", source=self.name, target=self.health.target)
                await self._consume(client, intake)
        except IntakeUnavailable as exc:
            self.health.down(f"intake unavailable: {exc}")
            raise
        except Exception as exc:  # connection lost, subscription refused: the engine retries
            self.health.down(f"{type(exc).__name__}: {exc}")
            raise
        except BaseException:
            self.health.down("stopped")
            raise
        finally:
            # aiomqtt keeps the reason of an unexpected disconnection in a future that nobody
            # awaits when the loss surfaced elsewhere (a publish); read it, or asyncio logs
            # "Future exception was never retrieved" at every broker restart.
            gone = getattr(client, "_disconnected", None)
            if gone is not None and gone.done() and not gone.cancelled():
                gone.exception()

    async def _subscribe(self, client: aiomqtt.Client) -> None:
        v5 = self.settings.protocol == "5"
        for topic, qos in self.subscriptions().items():
            if v5:
                # noLocal: never our own dead letters; retainHandling 1: retained messages only
                # when the subscription is new, not on every reconnect of the persistent session.
                options = SubscribeOptions(qos=qos, noLocal=True, retainHandling=1)
                props = Properties(PacketTypes.SUBSCRIBE)  # type: ignore[no-untyped-call]
                props.SubscriptionIdentifier = subscription_id(topic)
                granted = await client.subscribe(topic, options=options, properties=props)
            else:
                granted = await client.subscribe(topic, qos)
            codes = [g.value if isinstance(g, ReasonCode) else int(g) for g in granted]
            if any(c >= 0x80 for c in codes):
                raise aiomqtt.MqttError(f"subscription to {topic!r} refused (reason code {codes})")

    async def _consume(self, client: aiomqtt.Client, intake: Intake) -> None:
        messages = client.messages
        async for first in messages:
            batch = [first]
            while len(messages) > 0 and len(batch) < BATCH:
                batch.append(await anext(messages))
            await self._handle(client, intake, batch)

    def _incomings(self, message: aiomqtt.Message, now: float) -> _Message:
        topic = message.topic.value
        raw = message.payload
        payload = bytes(raw) if isinstance(raw, bytes | bytearray) else str(raw).encode()
        out = _Message(message, topic, payload)
        if topic.startswith(self.dead_prefix):
            return out  # our own dead letters, seen by a wide filter: never an event
        matching = [b for b in self.bindings if topic_matches(topic, self._trigger(b).topic)]
        ids = subscription_ids(message)
        if ids:  # MQTT 5: this copy is for these filters (overlapping filters get a copy each)
            matching = [b for b in matching if subscription_id(self._trigger(b).topic) in ids]
        if message.retain:
            matching = [b for b in matching if self._trigger(b).retained]
        props = user_properties(message)
        for b in matching:
            t = self._trigger(b)
            body: Any = None
            problem: str | None = None
            try:
                text = payload.decode("utf-8")
            except UnicodeDecodeError:
                text, problem = None, "payload is not UTF-8 text"
            if text is not None and t.payload == "json":
                try:
                    body = json.loads(text) if text.strip() else None
                except (ValueError, RecursionError) as exc:
                    problem = f"payload is not valid JSON: {exc}"
                if problem is None and body is not None and not isinstance(body, dict):
                    problem = f"payload is JSON but not an object: {type(body).__name__}"
            elif text is not None:
                body = {"payload": text}
            named = body.get("job") if isinstance(body, dict) else None
            job = b.job or topic_level(topic, t.job_level) or named
            if problem is None and not job:
                problem = "no job named: the message has no `job` field"
                if t.job_level is not None:
                    problem = f"no job named: topic {topic!r} has no level {t.job_level}"
            out.incomings.append(
                Incoming(
                    job=str(job) if job else b.job,
                    trigger=b.trigger_id,
                    source="mqtt",
                    payload=body if problem is None else None,
                    event_key=event_key(t, topic, payload, body, props, now),
                    problem=problem,
                )
            )
        return out

    async def _handle(self, client: aiomqtt.Client, intake: Intake, batch: list[aiomqtt.Message]) -> None:
        now = time.time()
        parsed = [self._incomings(m, now) for m in batch]
        self.health.received(len(batch))
        incomings = [inc for p in parsed for inc in p.incomings]
        admissions: list[Admission] = list(await intake.submit(incomings)) if incomings else []
        if len(admissions) != len(incomings):  # a broken intake: acknowledge nothing
            raise IntakeUnavailable(
                f"intake answered {len(admissions)} admissions for {len(incomings)} events"
            )
        i = 0
        for p in parsed:
            answers = admissions[i : i + len(p.incomings)]
            i += len(p.incomings)
            reasons = [r for r in (dead_letter_reason(a) for a in answers) if r is not None]
            if reasons:
                reason = "; ".join(dict.fromkeys(reasons))
                topic, body = dead_letter(self.settings.status_prefix, p.topic, p.payload, reason)
                await client.publish(topic, body, qos=1)
                self.health.dead_lettered += 1
                log.warning("mqtt message dead-lettered", source=self.name, topic=p.topic, reason=reason)
            elif not p.incomings:
                log.debug("mqtt message matches no trigger", source=self.name, topic=p.topic)
        for p in parsed:  # in arrival order, as MQTT asks of PUBACKs
            if p.message.qos > 0:
                client._client.ack(p.message.mid, p.message.qos)


def client_id_for(settings: MqttSettings, url: str) -> str:
    """`settings.client_id` on the settings' broker; `<client_id>-<hash>` on any other one, so
    each broker keeps finding its session whatever else is configured."""
    if url == settings.url:
        return settings.client_id
    return f"{settings.client_id}-{hashlib.sha256(url.encode()).hexdigest()[:6]}"


def build(bindings: Sequence[Binding], settings: MqttSettings | None = None) -> list[Source]:
    """One `MqttSource` per broker URL (the trigger's, else `JOBWIRE_MQTT_URL`), subscribed to
    every filter of the bindings on that broker."""
    settings = settings or MqttSettings()
    groups: dict[str, list[Binding]] = {}
    for b in bindings:
        trigger = b.trigger
        if not isinstance(trigger, MqttTrigger):
            raise TypeError(f"the mqtt source got a {type(trigger).__name__} binding")
        groups.setdefault(trigger.url or settings.url, []).append(b)
    sources: list[Source] = []
    names: set[str] = set()
    for url, group in groups.items():
        address = BrokerAddress.parse(url)
        name = f"mqtt@{address.host}:{address.port}"
        if name in names:
            name += "-" + hashlib.sha256(url.encode()).hexdigest()[:6]
        names.add(name)
        sources.append(MqttSource(name, group, settings, url))
    return sources
