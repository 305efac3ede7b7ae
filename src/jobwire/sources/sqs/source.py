"""The `sqs` source: SQS queues in, one recorded event (and run) per message, deleted only after
it is committed (aiobotocore; the `aws` pip extra).

`QueueSource` is the receive loop, shared with the `s3` kind: `pollers` concurrent long polls
(`ReceiveMessage`, up to 10 messages, `WaitTimeSeconds` 20); each batch's events go to the engine
in ONE `submit` call (one group commit) and the batch is removed with one `DeleteMessageBatch`
only after that call returned. **Pipelined**: a poller hands its batch to a task (submit, dead
letters, delete) and receives the next batch at once, so a receive overlaps the previous batch's
commit and delete; at most `2 × pollers` batches are received and not yet deleted (receives in
progress included) — in flight, at most `2 × pollers × batch_size` messages. While a submit is
slow, the batch's visibility is extended (`ChangeMessageVisibilityBatch`) so SQS does not hand it
to someone else. A message that cannot become a run is recorded `invalid` by the engine, sent to
the queue's dead-letter queue with the reason in the `jobwire-reason` message attribute, then
deleted — never received for ever. When the engine cannot record (`IntakeUnavailable`), nothing is
deleted: the visibility timeout brings the messages back, and every poller waits (0.5 s doubling
to 30 s) before receiving again. Any AWS or connection error raises: the engine's supervisor
restarts the source with backoff; what was not deleted comes back, and a redelivery of a recorded
message is a `duplicate`, not a second run.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import Sequence
from typing import Any

import structlog

from jobwire.model import Admission, Incoming
from jobwire.sources.base import Binding, Intake, IntakeUnavailable, Source, dead_letter_reason
from jobwire.sources.sqs import aws
from jobwire.sources.sqs.spec import SqsSettings, SqsTrigger, queue_name_of

log = structlog.get_logger(__name__)

JOB_FIELDS = ("job", "name")
"""Body fields naming the job on a shared intake queue: `job`, or seed 000's `name`."""
MAX_BODY = 1 << 20
REASON_ATTRIBUTE = "jobwire-reason"
DEPTH = 2
"""Batches per poller received and not yet deleted, the receive in progress included: a poller
receives its next batch while its previous one is committed and deleted."""


class QueueSource(Source):
    """Consumes one SQS queue. Subclasses say what a message means (`incomings`) and may prepare
    more than the queue itself (`bootstrap`)."""

    def __init__(
        self,
        name: str,
        bindings: Sequence[Binding],
        settings: Any,
        *,
        queue: str,
        endpoint_url: str | None,
        region: str | None,
        batch_size: int = 10,
        wait_time: int = 20,
        visibility_timeout: int = 30,
        pollers: int = 2,
        create: bool = True,
        max_receive_count: int = 10,
    ) -> None:
        super().__init__(name, bindings, settings)
        self.queue = queue
        self.endpoint_url = endpoint_url
        self.region = region
        self.batch_size = batch_size
        self.wait_time = wait_time
        self.visibility_timeout = visibility_timeout
        self.pollers = pollers
        self.create = create
        self.max_receive_count = max_receive_count
        self.url = ""
        self.dead_url = ""
        self.sqs: Any = None
        self.health.target = f"sqs queue {queue_name_of(queue)}"
        self._backoff = 0.0
        self._resume_at = 0.0
        """Event-loop time before which no poller receives (the intake was unavailable)."""
        self.in_flight = 0
        """Batches received (or being received) and not yet deleted: at most `DEPTH × pollers`."""
        self.extensions = 0
        """How many times a batch's visibility was extended (a slow submit)."""

    # ------------------------------------------------------------------ hooks

    async def bootstrap(self, stack: contextlib.AsyncExitStack) -> None:
        """Make the queue (and its dead-letter queue) ready; `self.sqs` is open."""
        self.url = await aws.queue_url(self.sqs, self.queue, create=self.create)
        self.dead_url = await aws.ensure_dead_letter_queue(
            self.sqs, self.url, create=self.create, max_receive_count=self.max_receive_count
        )

    def incomings(self, message: dict[str, Any]) -> list[Incoming]:
        """The events one message makes (none: nothing to record, the message is deleted)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ the loop

    async def run(self, intake: Intake) -> None:
        try:
            async with contextlib.AsyncExitStack() as stack:
                self.sqs = await stack.enter_async_context(
                    aws.client("sqs", self.endpoint_url, self.region, pool=self.connections, validate=False)
                )
                await self.bootstrap(stack)
                self.health.target = f"sqs {self.url}"
                self.health.up()
                log.info("sqs source consuming", source=self.name, queue=self.url, dead_letter=self.dead_url)
                async with asyncio.TaskGroup() as group:
                    slots = asyncio.Semaphore(DEPTH * self.pollers)
                    for _ in range(self.pollers):
                        group.create_task(self._poll(intake, group, slots))
                    group.create_task(self._watch_backlog())
        except BaseException as exc:
            if isinstance(exc, BaseExceptionGroup):
                exc = _first(exc)
            if not isinstance(exc, asyncio.CancelledError):
                self.health.down(f"{type(exc).__name__}: {exc}")
                raise exc from None
            raise
        finally:
            self.health.connected = False

    @property
    def connections(self) -> int:
        """The client's connection pool: one per slot (a long poll holds its connection for up to
        `wait_time`; a delete must never queue behind one), the backlog reader, one spare."""
        return DEPTH * self.pollers + 2

    async def _poll(self, intake: Intake, group: asyncio.TaskGroup, slots: asyncio.Semaphore) -> None:
        """Receive a batch, hand it to a task of `group`, receive the next: each batch holds a slot
        from its receive until it is deleted (or left on the queue)."""
        loop = asyncio.get_running_loop()
        while True:
            await slots.acquire()
            self.in_flight += 1
            handed = False
            try:
                wait = self._resume_at - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                    continue  # and look again: a batch that failed meanwhile may have moved it
                got = await self.sqs.receive_message(
                    QueueUrl=self.url,
                    MaxNumberOfMessages=self.batch_size,
                    WaitTimeSeconds=self.wait_time,
                    VisibilityTimeout=self.visibility_timeout,
                    MessageAttributeNames=["All"],
                    MessageSystemAttributeNames=["All"],
                )
                messages: list[dict[str, Any]] = got.get("Messages") or []
                if messages:
                    group.create_task(self._handle_in_slot(messages, intake, slots))
                    handed = True
            finally:
                if not handed:
                    self._free(slots)

    async def _handle_in_slot(
        self, messages: list[dict[str, Any]], intake: Intake, slots: asyncio.Semaphore
    ) -> None:
        try:
            await self.handle(messages, intake)
        finally:
            self._free(slots)

    def _free(self, slots: asyncio.Semaphore) -> None:
        self.in_flight -= 1
        slots.release()

    async def _watch_backlog(self) -> None:
        while True:
            attrs = await aws.attributes(self.sqs, self.url, "ApproximateNumberOfMessages")
            with contextlib.suppress(KeyError, ValueError):
                self.health.lag = int(attrs["ApproximateNumberOfMessages"])
            await asyncio.sleep(15)

    async def handle(self, messages: list[dict[str, Any]], intake: Intake) -> None:
        """Hand one received batch in (one submit), dead-letter what is invalid, delete all."""
        events: list[Incoming] = []
        counts: list[int] = []
        for message in messages:
            mine = self.incomings(message)
            events += mine
            counts.append(len(mine))
        self.health.received(len(messages))
        admissions: list[Admission] = []
        if events:
            keeper = asyncio.ensure_future(self._keep_hidden(messages))
            try:
                admissions = await intake.submit(events)
            except IntakeUnavailable as exc:
                # not recorded: not deleted; the visibility timeout brings the batch back, and no
                # poller receives before the backoff is over (batches failing together double it once)
                now = asyncio.get_running_loop().time()
                if now >= self._resume_at:
                    self._backoff = min(max(self._backoff * 2, 0.5), 30.0)
                    self._resume_at = now + self._backoff
                log.warning(
                    "sqs batch not recorded; left on the queue",
                    source=self.name,
                    messages=len(messages),
                    error=str(exc),
                    retry_in=round(self._resume_at - now, 3),
                )
                return
            finally:
                keeper.cancel()
                await asyncio.gather(keeper, return_exceptions=True)
            self._backoff = 0.0
        at = 0
        for message, n in zip(messages, counts, strict=True):
            reasons = [r for r in (dead_letter_reason(a) for a in admissions[at : at + n]) if r]
            at += n
            if reasons:
                await self.dead_letter(message, "; ".join(dict.fromkeys(reasons)))
        await self._delete(messages)

    async def _keep_hidden(self, messages: list[dict[str, Any]]) -> None:
        """While the batch is being recorded, push its visibility timeout forward."""
        every = max(self.visibility_timeout / 2, 0.5)
        while True:
            await asyncio.sleep(every)
            hide = self.visibility_timeout
            entries = [
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": hide}
                for i, m in enumerate(messages)
            ]
            try:
                await self.sqs.change_message_visibility_batch(QueueUrl=self.url, Entries=entries)
                self.extensions += 1
                log.info("sqs batch still being recorded; visibility extended", source=self.name)
            except Exception as exc:  # the commit goes on; worst case a redelivery (a duplicate)
                log.warning("sqs visibility not extended", source=self.name, error=str(exc))

    async def _delete(self, messages: list[dict[str, Any]]) -> None:
        entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)]
        got = await self.sqs.delete_message_batch(QueueUrl=self.url, Entries=entries)
        failed = got.get("Failed") or []
        if failed:  # they come back and are recorded as duplicates
            log.warning("sqs messages not deleted", source=self.name, failed=failed)

    async def dead_letter(self, message: dict[str, Any], reason: str) -> None:
        attributes = dict(message.get("MessageAttributes") or {})
        message_id = str(message.get("MessageId", ""))
        attributes.update(
            {
                REASON_ATTRIBUTE: {"DataType": "String", "StringValue": reason[:1000]},
                "jobwire-queue": {"DataType": "String", "StringValue": queue_name_of(self.url)},
                "jobwire-message-id": {"DataType": "String", "StringValue": message_id},
            }
        )
        if len(attributes) > 10:  # SQS's limit: ours win
            ours = {k: attributes[k] for k in (REASON_ATTRIBUTE, "jobwire-queue", "jobwire-message-id")}
            attributes = {**dict(list(attributes.items())[: 10 - len(ours)]), **ours}
        params: dict[str, Any] = {
            "QueueUrl": self.dead_url,
            "MessageBody": message.get("Body") or "(empty)",
            "MessageAttributes": attributes,
        }
        if self.dead_url.endswith(".fifo"):
            system = message.get("Attributes") or {}
            params["MessageGroupId"] = system.get("MessageGroupId") or "jobwire"
            params["MessageDeduplicationId"] = hashlib.sha256(message_id.encode()).hexdigest()
        await self.sqs.send_message(**params)
        self.health.dead_lettered += 1
        log.warning("sqs message dead-lettered", source=self.name, reason=reason, queue=self.dead_url)


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    excs: Sequence[BaseException] = group.exceptions
    for exc in excs:
        if isinstance(exc, BaseExceptionGroup):
            return _first(exc)
        if not isinstance(exc, asyncio.CancelledError):
            return exc
    return excs[0]


# ---------------------------------------------------------------------- the sqs kind


def build(bindings: Sequence[Binding], settings: SqsSettings | None) -> list[Source]:
    """One source per queue: bindings that name the same queue share its messages (a message is
    handed in once per binding, in one submit, and deleted once)."""
    settings = settings or SqsSettings()
    groups: dict[str, list[Binding]] = {}
    for b in bindings:
        groups.setdefault(b.trigger.queue, []).append(b)
    return [SqsSource(f"sqs-{queue_name_of(q)}", group, settings) for q, group in sorted(groups.items())]


class SqsSource(QueueSource):
    kind = "sqs"

    def __init__(self, name: str, bindings: Sequence[Binding], settings: SqsSettings) -> None:
        triggers: list[SqsTrigger] = [b.trigger for b in bindings]
        super().__init__(
            name,
            bindings,
            settings,
            queue=triggers[0].queue,
            endpoint_url=settings.endpoint_url,
            region=settings.region,
            batch_size=max(t.batch_size for t in triggers),
            wait_time=max(t.wait_time for t in triggers),
            visibility_timeout=max(t.visibility_timeout for t in triggers),
            pollers=max(t.pollers for t in triggers),
            create=all(t.create for t in triggers),
            max_receive_count=max(t.max_receive_count for t in triggers),
        )

    def incomings(self, message: dict[str, Any]) -> list[Incoming]:
        body: str = message.get("Body") or ""
        system: dict[str, Any] = message.get("Attributes") or {}
        attrs = {
            k: v.get("StringValue")
            for k, v in (message.get("MessageAttributes") or {}).items()
            if isinstance(v, dict) and v.get("StringValue") is not None
        }
        problem: str | None = None
        data: Any = None
        if len(body.encode()) > MAX_BODY:
            problem = f"message body is more than {MAX_BODY} bytes"
        else:
            try:
                data = json.loads(body)
            except ValueError as exc:
                problem = f"message body is not valid JSON: {exc}"
        if problem is None and not isinstance(data, dict):
            problem = f"message body must be a JSON object, got {type(data).__name__}"
        fields: dict[str, Any] = data if isinstance(data, dict) else {}
        default_key = str(system.get("MessageDeduplicationId") or message.get("MessageId") or "")
        if not default_key:
            default_key = hashlib.sha256(body.encode()).hexdigest()[:32]
        group = system.get("MessageGroupId")
        out: list[Incoming] = []
        for b in self.bindings:
            trigger: SqsTrigger = b.trigger
            job = b.job
            payload = dict(fields)
            why = problem
            if job is None:
                named = next((fields[f] for f in JOB_FIELDS if isinstance(fields.get(f), str)), None)
                payload = {k: v for k, v in fields.items() if k not in JOB_FIELDS}
                if named is None and why is None:
                    why = "the message names no job: expected a `job` (or `name`) field"
                job = named
            if group and trigger.group_param:
                payload[trigger.group_param] = group
            key = default_key
            if trigger.event_key:
                value = attrs.get(trigger.event_key)
                if value is None and fields.get(trigger.event_key) is not None:
                    value = str(fields[trigger.event_key])
                if value is not None:
                    key = f"k:{value}"
            out.append(
                Incoming(
                    job=job,
                    trigger=b.trigger_id,
                    source="sqs",
                    payload=payload if why is None else body[:4096],
                    event_key=key,
                    input_location=_text(fields.get("input_location")),
                    environment=_text(fields.get("environment")),
                    problem=why,
                )
            )
        return out


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
