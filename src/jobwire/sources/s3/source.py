"""The `s3` source (seed 000): objects landing in a bucket, announced by S3 event notifications on
an SQS queue, one run per object (aiobotocore; the `aws` pip extra).

**Bootstrap** (unless `JOBWIRE_S3_BOOTSTRAP=false`): the bucket and the queue are created if
missing; the queue gets a dead-letter queue `<queue>-dlq` and a redrive policy if it has none; the
queue policy gets (or keeps) one statement per bucket letting `s3.amazonaws.com` send to it from
that bucket; the bucket's notification configuration gets one queue configuration
`jobwire-<queue>` — MERGED: every other configuration (queues, topics, Lambda functions,
EventBridge) is written back as it was.

**Receiving** is the `sqs` kind's loop (`QueueSource`): long polls of 10, one `submit` per batch,
the messages deleted after it returned, visibility extended while it is slow. A message's records
are URL-decoded (`+` and `%xx`), `s3:TestEvent` messages are deleted unrecorded, and every record
of every message of a batch is an `Incoming` of that ONE submit. A message that is not an S3 event
notification is recorded `invalid` and moved to the dead-letter queue with the reason.

**Event key**: `s3://bucket/key#<version id or ETag>/<category>` where the category is `created` or
`removed` — not the full event name — so a multipart upload's two notifications
(`ObjectCreated:Put` and `ObjectCreated:CompleteMultipartUpload`, same ETag) and a redelivered
message make one run.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

import structlog
from botocore.exceptions import ClientError  # type: ignore[import-untyped]

from jobwire.model import Incoming
from jobwire.sources.base import Binding, Source
from jobwire.sources.s3.spec import SEED_RULE, S3Settings, S3Trigger
from jobwire.sources.sqs import aws
from jobwire.sources.sqs.source import MAX_BODY, QueueSource
from jobwire.sources.sqs.spec import queue_name_of

log = structlog.get_logger(__name__)

EVENTS = {"created": "s3:ObjectCreated:*", "removed": "s3:ObjectRemoved:*"}
CATEGORIES = {"ObjectCreated": "created", "ObjectRemoved": "removed", "LifecycleExpiration": "removed"}
MISSING_BUCKET = frozenset({"404", "NoSuchBucket", "NotFound"})


def category(event_name: str) -> str:
    """`ObjectCreated:CompleteMultipartUpload` → `created`; `ObjectRemoved:Delete` → `removed`."""
    family = event_name.removeprefix("s3:").split(":", 1)[0]
    return CATEGORIES.get(family, family.lower())


@dataclass(frozen=True, slots=True)
class Route:
    binding: Binding
    bucket: str
    pattern: re.Pattern[str]
    categories: frozenset[str]


@dataclass(frozen=True, slots=True)
class Record:
    bucket: str
    key: str
    category: str
    event: str
    identity: str
    """Version id, else ETag, else sequencer."""
    size: int | None
    etag: str | None
    version_id: str | None

    @property
    def event_key(self) -> str:
        return f"s3://{self.bucket}/{self.key}#{self.identity}/{self.category}"


def build(bindings: Sequence[Binding], settings: S3Settings | None) -> list[Source]:
    """One source per notification queue; bindings on the same queue share its messages."""
    settings = settings or S3Settings()
    groups: dict[str, list[Binding]] = {}
    for b in bindings:
        groups.setdefault(b.trigger.queue or settings.queue_name, []).append(b)
    return [S3Source(f"s3-{queue_name_of(q)}", group, settings, q) for q, group in sorted(groups.items())]


class S3Source(QueueSource):
    kind = "s3"

    def __init__(self, name: str, bindings: Sequence[Binding], settings: S3Settings, queue: str) -> None:
        triggers: list[S3Trigger] = [b.trigger for b in bindings]
        super().__init__(
            name,
            bindings,
            settings,
            queue=queue,
            endpoint_url=settings.sqs_endpoint_url,
            region=settings.region,
            visibility_timeout=max(t.visibility_timeout for t in triggers),
            create=settings.bootstrap,
            max_receive_count=settings.max_receive_count,
        )
        self.s3_settings = settings
        self.routes: list[Route] = []
        self.intake_route: Route | None = None
        for b in bindings:
            t: S3Trigger = b.trigger
            bucket = t.bucket or settings.bucket_name
            if b.job is None:
                pattern = re.compile(t.key_pattern or SEED_RULE)
                self.intake_route = Route(b, bucket, pattern, frozenset(t.events))
            else:
                own = rf"^(?P<environment>[^/]+)/{re.escape(b.job)}/(?P<file>.+)$"
                pattern = re.compile(t.key_pattern or own)
                self.routes.append(Route(b, bucket, pattern, frozenset(t.events)))
        self.buckets = sorted({r.bucket for r in self.all_routes})
        self.health.target = f"s3 {', '.join(self.buckets)} → sqs {queue_name_of(queue)}"

    @property
    def all_routes(self) -> list[Route]:
        return [*self.routes, *([self.intake_route] if self.intake_route else [])]

    # ------------------------------------------------------------------ bootstrap

    async def bootstrap(self, stack: contextlib.AsyncExitStack) -> None:
        await super().bootstrap(stack)
        if not self.s3_settings.bootstrap:
            return
        s3 = await stack.enter_async_context(
            aws.client("s3", self.s3_settings.endpoint_url, self.s3_settings.region)
        )
        arn = (await aws.attributes(self.sqs, self.url, "QueueArn"))["QueueArn"]
        for bucket in self.buckets:
            await ensure_bucket(s3, bucket, s3.meta.region_name)
        await allow_buckets(self.sqs, self.url, arn, self.buckets)
        for bucket in self.buckets:
            wanted = sorted({EVENTS[c] for r in self.all_routes if r.bucket == bucket for c in r.categories})
            await merge_notification(s3, bucket, arn, f"jobwire-{queue_name_of(self.url)}", wanted)
        self.health.target = f"s3 {', '.join(self.buckets)} → sqs {self.url}"

    # ------------------------------------------------------------------ messages

    def incomings(self, message: dict[str, Any]) -> list[Incoming]:
        body: str = message.get("Body") or ""
        records, problem = parse(body)
        if problem is not None:
            return [self._invalid(body, problem)]
        out: list[Incoming] = []
        for rec in records:
            if isinstance(rec, str):
                out.append(self._invalid(body, rec))
                continue
            out += self._route(rec, body)
        return out

    def _route(self, rec: Record, body: str) -> list[Incoming]:
        out: list[Incoming] = []
        for route in self.routes:
            if route.bucket != rec.bucket or rec.category not in route.categories:
                continue
            m = route.pattern.fullmatch(rec.key)
            if m is None:
                continue
            out.append(self._incoming(route.binding.job, route.binding.trigger_id, rec, m.groupdict()))
        intake = self.intake_route
        if out or intake is None or intake.bucket != rec.bucket or rec.category not in intake.categories:
            return out  # a job's own trigger took it, or nobody here wants it
        m = intake.pattern.fullmatch(rec.key)
        groups = m.groupdict() if m else {}
        job = groups.pop("job", None)
        if not job:
            problem = f"the key {rec.key!r} does not name a job: expected ENVIRONMENT/JOB-NAME/FILE"
            return [self._invalid(body, problem)]
        return [self._incoming(job, intake.binding.trigger_id, rec, groups)]

    def _incoming(self, job: str | None, trigger: str, rec: Record, groups: dict[str, Any]) -> Incoming:
        params = {k: v for k, v in groups.items() if v is not None}
        payload = {
            "bucket": rec.bucket,
            "key": rec.key,
            "event": rec.event,
            "size": rec.size,
            "etag": rec.etag,
            "version_id": rec.version_id,
            "input_location": rec.key,
            **params,
        }
        environment = params.get("environment")
        return Incoming(
            job=job,
            trigger=trigger,
            source="s3",
            payload=payload,
            event_key=rec.event_key,
            input_location=rec.key,
            environment=environment if isinstance(environment, str) and environment else None,
        )

    def _invalid(self, body: str, problem: str) -> Incoming:
        binding = self.intake_route.binding if self.intake_route else self.bindings[0]
        return Incoming(
            job=binding.job, trigger=binding.trigger_id, source="s3", payload=body[:4096], problem=problem
        )


def parse(body: str) -> tuple[list[Record | str], str | None]:
    """The records of one message (a record that cannot be read is its problem, a string), or the
    problem of the whole message. A TestEvent is no records."""
    if len(body.encode()) > MAX_BODY:
        return [], f"message body is more than {MAX_BODY} bytes"
    try:
        data = json.loads(body)
    except ValueError as exc:
        return [], f"message body is not valid JSON: {exc}"
    if isinstance(data, dict) and data.get("Type") == "Notification" and isinstance(data.get("Message"), str):
        try:  # delivered through SNS
            data = json.loads(data["Message"])
        except ValueError as exc:
            return [], f"the SNS envelope's Message is not valid JSON: {exc}"
    if not isinstance(data, dict):
        return [], f"not an S3 event notification: a JSON {type(data).__name__}"
    if data.get("Event") == "s3:TestEvent":
        return [], None
    records = data.get("Records")
    if not isinstance(records, list) or not records:
        fields = sorted(map(str, data))[:20]
        return [], f"not an S3 event notification: expected `Records`, got fields {fields}"
    return [_record(r) for r in records], None


def _record(r: Any) -> Record | str:
    try:
        s3 = r["s3"]
        obj = s3["object"]
        name = str(r["eventName"])
        bucket = str(s3["bucket"]["name"])
        key = unquote_plus(str(obj["key"]))
    except (KeyError, TypeError):
        return "not an S3 event record: expected eventName, s3.bucket.name and s3.object.key"
    etag = obj.get("eTag") or obj.get("etag")
    version = obj.get("versionId")
    identity = version or etag or obj.get("sequencer") or r.get("eventTime") or ""
    size = obj.get("size")
    return Record(
        bucket=bucket,
        key=key,
        category=category(name),
        event=name,
        identity=str(identity),
        size=size if isinstance(size, int) else None,
        etag=str(etag) if etag else None,
        version_id=str(version) if version else None,
    )


# ---------------------------------------------------------------------- bootstrap steps


async def ensure_bucket(s3: Any, bucket: str, region: str | None) -> None:
    try:
        await s3.head_bucket(Bucket=bucket)
        return
    except ClientError as exc:
        if aws.error_code(exc) not in MISSING_BUCKET:
            raise
    params: dict[str, Any] = {"Bucket": bucket}
    if region and region != "us-east-1":
        params["CreateBucketConfiguration"] = {"LocationConstraint": region}
    try:
        await s3.create_bucket(**params)
        log.info("s3 bucket created", bucket=bucket)
    except ClientError as exc:
        if aws.error_code(exc) != "BucketAlreadyOwnedByYou":
            raise


async def allow_buckets(sqs: Any, url: str, queue_arn: str, buckets: Sequence[str]) -> None:
    """The queue policy lets S3 send from each bucket: one statement per bucket (`jobwire-s3-<bucket>`),
    every other statement kept."""
    attrs = await aws.attributes(sqs, url, "Policy")
    policy: dict[str, Any] = json.loads(attrs["Policy"]) if attrs.get("Policy") else {}
    policy.setdefault("Version", "2012-10-17")
    statements: list[dict[str, Any]] = list(policy.get("Statement") or [])
    partition = queue_arn.split(":")[1] if queue_arn.count(":") >= 5 else "aws"
    changed = False
    for bucket in buckets:
        wanted = {
            "Sid": f"jobwire-s3-{bucket}",
            "Effect": "Allow",
            "Principal": {"Service": "s3.amazonaws.com"},
            "Action": "sqs:SendMessage",
            "Resource": queue_arn,
            "Condition": {"ArnLike": {"aws:SourceArn": f"arn:{partition}:s3:::{bucket}"}},
        }
        at = next((i for i, s in enumerate(statements) if s.get("Sid") == wanted["Sid"]), None)
        if at is None:
            statements.append(wanted)
            changed = True
        elif statements[at] != wanted:
            statements[at] = wanted
            changed = True
    if changed:
        policy["Statement"] = statements
        await sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": json.dumps(policy)})
        log.info("sqs queue policy lets the buckets send", queue=url, buckets=list(buckets))


async def merge_notification(s3: Any, bucket: str, queue_arn: str, config_id: str, events: list[str]) -> None:
    """Add (or update) jobwire's queue configuration in the bucket's notification configuration,
    writing every other configuration back as it was. A configuration someone else made that
    already sends to this queue is kept and used as it is."""
    conf: dict[str, Any] = await s3.get_bucket_notification_configuration(Bucket=bucket)
    conf = {k: v for k, v in conf.items() if k != "ResponseMetadata"}
    queues: list[dict[str, Any]] = list(conf.get("QueueConfigurations") or [])
    mine = next((i for i, q in enumerate(queues) if q.get("Id") == config_id), None)
    if mine is None and any(q.get("QueueArn") == queue_arn for q in queues):
        log.info("s3 bucket already notifies the queue; its configuration is kept", bucket=bucket)
        return
    wanted = {"Id": config_id, "QueueArn": queue_arn, "Events": events}
    if mine is not None:
        if queues[mine].get("QueueArn") == queue_arn and sorted(queues[mine].get("Events") or []) == events:
            return
        queues[mine] = wanted
    else:
        queues.append(wanted)
    conf["QueueConfigurations"] = queues
    await s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration=conf)
    log.info(
        "s3 bucket notification added", bucket=bucket, queue=queue_arn, events=events, kept=len(queues) - 1
    )
