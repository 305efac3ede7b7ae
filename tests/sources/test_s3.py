"""The `s3` source (seed 000) against moto's server over real HTTP: bootstrap (empty account; an
existing notification configuration and queue policy kept), uploads → events (URL-decoded keys,
spaces and unicode, TestEvent skipped, several records per message in one submit, the default
rule and a job's own key pattern), poison to the dead-letter queue, and through a real engine:
one upload one run, a multipart upload's two notifications one run."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from jobwire.config import Settings
from jobwire.engine import Engine
from jobwire.model import EventOutcome, Job, RunState
from jobwire.sources.base import Binding
from jobwire.sources.s3.source import S3Source, build, category, parse
from jobwire.sources.s3.spec import PLUG, S3Settings, S3Trigger, global_bindings
from jobwire.sources.sqs.source import REASON_ATTRIBUTE
from jobwire.sources.sqs.spec import dead_letter_name
from jobwire.store import EventQuery, RunQuery
from tests.support.aws import aws_env, moto, unique_name  # noqa: F401 - fixtures
from tests.support.awsio import client, queue_url, visible_and_hidden
from tests.support.intake import FakeIntake
from tests.support.waiting import eventually

pytestmark = pytest.mark.usefixtures("aws_env")


@pytest.fixture
async def aws() -> AsyncIterator[tuple[Any, Any]]:
    async with client("s3") as s3, client("sqs") as sqs:
        yield s3, sqs


def settings(bucket: str, queue: str, **kw: Any) -> S3Settings:
    return S3Settings(_env_file=None, JOBWIRE_S3_BUCKET=bucket, JOBWIRE_S3_QUEUE=queue, **kw)  # type: ignore[call-arg]


def intake_source(bucket: str, queue: str, jobs: list[Binding] | None = None) -> S3Source:
    s = settings(bucket, queue)
    sources = build([*(jobs or []), *global_bindings(s)], s)
    assert len(sources) == 1
    return sources[0]  # type: ignore[return-value]


@contextlib.asynccontextmanager
async def running(source: S3Source, intake: FakeIntake) -> AsyncIterator[None]:
    task = asyncio.create_task(source.run(intake))
    try:
        await eventually(lambda: source.health.connected or task.done(), 30, "the source to bootstrap")
        if task.done():
            task.result()
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def empty(sqs: Any, url: str) -> bool:
    return await visible_and_hidden(sqs, url) == (0, 0)


async def test_bootstrap_on_an_empty_account_then_an_upload_is_one_event(aws: tuple[Any, Any]) -> None:
    s3, sqs = aws
    bucket, queue = unique_name("b"), unique_name("q")
    source, intake = intake_source(bucket, queue), FakeIntake()
    async with running(source, intake):
        url = await queue_url(sqs, queue)
        arn = (await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"]))["Attributes"]["QueueArn"]
        conf = await s3.get_bucket_notification_configuration(Bucket=bucket)
        assert [(q["QueueArn"], q["Events"]) for q in conf["QueueConfigurations"]] == [(arn, ["s3:ObjectCreated:*"])]
        policy = json.loads(
            (await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["Policy"]))["Attributes"]["Policy"]
        )
        [stmt] = policy["Statement"]
        assert stmt["Principal"] == {"Service": "s3.amazonaws.com"} and stmt["Action"] == "sqs:SendMessage"
        assert stmt["Condition"]["ArnLike"]["aws:SourceArn"] == f"arn:aws:s3:::{bucket}"
        await sqs.get_queue_url(QueueName=dead_letter_name(queue))

        put = await s3.put_object(Bucket=bucket, Key="test/convert/input.csv", Body=b"a,b\n1,2\n")
        await eventually(lambda: intake.incomings, 15, "the upload's event")
        await eventually(lambda: empty(sqs, url), 10, "the message (and the TestEvent) to be deleted")
    [inc] = intake.incomings  # the TestEvent moto sent on the configuration made no event
    assert (inc.job, inc.trigger, inc.source) == ("convert", "s3", "s3")
    assert (inc.input_location, inc.environment) == ("test/convert/input.csv", "test")
    assert inc.payload["bucket"] == bucket and inc.payload["file"] == "input.csv"
    assert inc.event_key == f"s3://{bucket}/test/convert/input.csv#{put['ETag'].strip(chr(34))}/created"


async def test_an_existing_notification_configuration_and_queue_policy_are_kept(aws: tuple[Any, Any]) -> None:
    s3, sqs = aws
    bucket, queue, theirs = unique_name("b"), unique_name("q"), unique_name("theirs")
    await s3.create_bucket(Bucket=bucket)
    their_url = str((await sqs.create_queue(QueueName=theirs))["QueueUrl"])
    their_arn = (await sqs.get_queue_attributes(QueueUrl=their_url, AttributeNames=["QueueArn"]))["Attributes"][
        "QueueArn"
    ]
    their_conf = {
        "Id": "someone-else",
        "QueueArn": their_arn,
        "Events": ["s3:ObjectRemoved:*"],
        "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": "archive/"}]}},  # moto wants lowercase
    }
    await s3.put_bucket_notification_configuration(
        Bucket=bucket, NotificationConfiguration={"QueueConfigurations": [their_conf]}
    )
    url = str((await sqs.create_queue(QueueName=queue))["QueueUrl"])
    other_statement = {"Sid": "keep-me", "Effect": "Allow", "Principal": "*", "Action": "sqs:GetQueueUrl", "Resource": "*"}
    await sqs.set_queue_attributes(
        QueueUrl=url, Attributes={"Policy": json.dumps({"Version": "2012-10-17", "Statement": [other_statement]})}
    )
    source, intake = intake_source(bucket, queue), FakeIntake()
    async with running(source, intake):
        conf = await s3.get_bucket_notification_configuration(Bucket=bucket)
        ids = {q["Id"]: q for q in conf["QueueConfigurations"]}
        assert set(ids) == {"someone-else", f"jobwire-{queue}"}
        assert ids["someone-else"]["QueueArn"] == their_arn
        assert ids["someone-else"]["Events"] == ["s3:ObjectRemoved:*"]
        assert ids["someone-else"]["Filter"]["Key"]["FilterRules"] == [{"Name": "prefix", "Value": "archive/"}]
        policy = json.loads(
            (await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["Policy"]))["Attributes"]["Policy"]
        )
        assert [s["Sid"] for s in policy["Statement"]] == ["keep-me", f"jobwire-s3-{bucket}"]
    # a second start changes nothing
    source2 = intake_source(bucket, queue)
    async with running(source2, FakeIntake()):
        again = await s3.get_bucket_notification_configuration(Bucket=bucket)
        assert len(again["QueueConfigurations"]) == 2


async def test_keys_with_spaces_and_unicode_are_decoded(aws: tuple[Any, Any]) -> None:
    s3, _sqs = aws
    bucket, queue = unique_name("b"), unique_name("q")
    source, intake = intake_source(bucket, queue), FakeIntake()
    keys = ["prod/convert/my file (1).csv", "test/convert/données été 東京+plus%20pct.csv"]
    async with running(source, intake):
        for key in keys:
            await s3.put_object(Bucket=bucket, Key=key, Body=b"x")
        await eventually(lambda: len(intake.incomings) == 2, 15, "two events")
    assert sorted(i.input_location or "" for i in intake.incomings) == sorted(keys)
    assert {i.environment for i in intake.incomings} == {"prod", "test"}


async def test_test_events_are_skipped_and_several_records_are_one_submit(aws: tuple[Any, Any]) -> None:
    _s3, sqs = aws
    bucket, queue = unique_name("b"), unique_name("q")
    source, intake = intake_source(bucket, queue), FakeIntake()
    async with running(source, intake):
        url = await queue_url(sqs, queue)
        await eventually(lambda: empty(sqs, url), 10, "moto's TestEvent to be consumed")
        assert intake.incomings == []
        test_event = {"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": bucket}
        await sqs.send_message(QueueUrl=url, MessageBody=json.dumps(test_event))
        records = [
            {
                "eventName": "ObjectCreated:Put",
                "s3": {"bucket": {"name": bucket}, "object": {"key": f"test/job-{i}/a+b%C3%A9.csv", "eTag": f"e{i}"}},
            }
            for i in range(3)
        ]
        await sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"Records": records}))
        await eventually(lambda: len(intake.incomings) == 3, 15, "three events")
        await eventually(lambda: empty(sqs, url), 10, "both messages deleted")
    assert len([c for c in intake.calls if c]) == 1, "the three records of one message are one submit"
    assert [i.job for i in intake.incomings] == ["job-0", "job-1", "job-2"]
    assert {i.input_location for i in intake.incomings} == {f"test/job-{i}/a bé.csv" for i in range(3)}


async def test_poison_and_unroutable_keys_go_to_the_dead_letter_queue(aws: tuple[Any, Any]) -> None:
    s3, sqs = aws
    bucket, queue = unique_name("b"), unique_name("q")
    source, intake = intake_source(bucket, queue), FakeIntake()
    async with running(source, intake):
        url = await queue_url(sqs, queue)
        dlq = await queue_url(sqs, dead_letter_name(queue))
        await sqs.send_message(QueueUrl=url, MessageBody="{not json")
        await sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"hello": "world"}))
        await s3.put_object(Bucket=bucket, Key="README.md", Body=b"x")
        found: list[dict[str, Any]] = []

        async def dead() -> list[dict[str, Any]]:
            got = await sqs.receive_message(QueueUrl=dlq, MaxNumberOfMessages=10, MessageAttributeNames=["All"])
            found.extend(got.get("Messages") or [])
            return found if len(found) >= 3 else []

        await eventually(dead, 15, "three dead letters")
        await eventually(lambda: empty(sqs, url), 10, "nothing requeued")
    reasons = sorted(m["MessageAttributes"][REASON_ATTRIBUTE]["StringValue"] for m in found)
    assert any("not valid JSON" in r for r in reasons)
    assert any("not an S3 event notification" in r and "'hello'" in r for r in reasons)
    assert any("'README.md' does not name a job" in r for r in reasons)
    assert len([i for i in intake.incomings if i.problem]) == 3


async def test_a_jobs_own_key_pattern_takes_its_files_with_named_groups(aws: tuple[Any, Any]) -> None:
    s3, _sqs = aws
    bucket, queue = unique_name("b"), unique_name("q")
    own = S3Trigger(bucket=bucket, queue=queue, key_pattern=r"uploads/(?P<customer>[^/]+)/(?P<name>.+\.csv)")
    source = intake_source(bucket, queue, [Binding("ingest", "s3", own)])
    intake = FakeIntake()
    async with running(source, intake):
        await s3.put_object(Bucket=bucket, Key="uploads/acme/2024 q1.csv", Body=b"x")
        await s3.put_object(Bucket=bucket, Key="test/convert/input.csv", Body=b"y")
        await eventually(lambda: len(intake.incomings) == 2, 15, "two events")
    by_job = {i.job: i for i in intake.incomings}
    assert by_job["ingest"].payload["customer"] == "acme" and by_job["ingest"].payload["name"] == "2024 q1.csv"
    assert by_job["convert"].environment == "test", "the default rule takes what no job's pattern took"


def test_event_categories_and_parse() -> None:
    assert category("ObjectCreated:CompleteMultipartUpload") == category("ObjectCreated:Put") == "created"
    assert category("s3:ObjectRemoved:Delete") == "removed"
    records, problem = parse(json.dumps({"Event": "s3:TestEvent"}))
    assert (records, problem) == ([], None)
    assert PLUG.kind == "s3" and PLUG.extra == "aws"


def test_the_intake_is_on_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("BUCKET_NAME", "SQS_QUEUE_NAME", "JOBWIRE_S3_INTAKE", "JOBWIRE_S3_BUCKET", "JOBWIRE_S3_QUEUE"):
        monkeypatch.delenv(k, raising=False)
    assert global_bindings(S3Settings(_env_file=None)) == []  # type: ignore[call-arg]
    monkeypatch.setenv("JOBWIRE_S3_INTAKE", "true")
    [b] = global_bindings(S3Settings(_env_file=None))  # type: ignore[call-arg]
    assert (b.trigger.bucket, b.trigger.queue) == ("local-tests", "local-tests")
    monkeypatch.delenv("JOBWIRE_S3_INTAKE")
    monkeypatch.setenv("BUCKET_NAME", "seed-bucket")
    [b] = global_bindings(S3Settings(_env_file=None))  # type: ignore[call-arg]
    assert (b.trigger.bucket, b.trigger.queue) == ("seed-bucket", "local-tests")
    monkeypatch.setenv("JOBWIRE_S3_INTAKE", "false")
    assert global_bindings(S3Settings(_env_file=None)) == []  # type: ignore[call-arg]


# --------------------------------------------------------------------------- through an engine


@pytest.fixture
async def engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[Engine, str, str, Path]]:
    bucket, queue = unique_name("b"), unique_name("q")
    monkeypatch.setenv("BUCKET_NAME", bucket)
    monkeypatch.setenv("SQS_QUEUE_NAME", queue)
    ledger = tmp_path / "ledger"
    eng = Engine(Settings(_env_file=None, data_dir=tmp_path / "data", shutdown_grace=timedelta(seconds=2)))
    await eng.start()
    append = "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + '\\n')"
    job = Job.model_validate(
        {
            "name": "convert",
            "parameters": [{"name": "input_location"}, {"name": "environment"}],
            "target": {"type": "local", "command": [sys.executable, "-c", append, str(ledger), "{{input_location}}"]},
        }
    )
    await eng.put_job(job)
    await eventually(lambda: any(s["connected"] for s in eng.health()["sources"]), 30, "the s3 source")
    try:
        yield eng, bucket, queue, ledger
    finally:
        await eng.stop()


async def test_one_upload_one_run_and_a_multipart_upload_one_run(
    engine: tuple[Engine, str, str, Path], aws: tuple[Any, Any]
) -> None:
    eng, bucket, queue, ledger = engine
    s3, sqs = aws
    await s3.put_object(Bucket=bucket, Key="test/convert/small.csv", Body=b"1")
    up = await s3.create_multipart_upload(Bucket=bucket, Key="prod/convert/big file.csv")
    part = await s3.upload_part(Bucket=bucket, Key="prod/convert/big file.csv", UploadId=up["UploadId"], PartNumber=1, Body=b"x" * 1024)
    await s3.complete_multipart_upload(
        Bucket=bucket,
        Key="prod/convert/big file.csv",
        UploadId=up["UploadId"],
        MultipartUpload={"Parts": [{"ETag": part["ETag"], "PartNumber": 1}]},
    )

    async def settled() -> list[Any]:
        runs = (await eng.store.list_runs(RunQuery(job="convert", limit=100))).items
        events = (await eng.store.list_events(EventQuery(limit=100))).items
        done = len(runs) == 2 and all(r.state.terminal for r in runs) and len(events) == 3
        return runs if done else []

    runs = await eventually(settled, 30, "two runs from three notifications")
    assert sorted((r.input_location, r.environment, r.state) for r in runs) == [
        ("prod/convert/big file.csv", "prod", RunState.succeeded),
        ("test/convert/small.csv", "test", RunState.succeeded),
    ]
    events = (await eng.store.list_events(EventQuery(limit=100))).items
    assert sorted(e.outcome.value for e in events) == ["duplicate", "run", "run"], "multipart: Put + Complete"
    assert all(e.source == "s3" for e in events)
    assert sorted(ledger.read_text().splitlines()) == ["prod/convert/big file.csv", "test/convert/small.csv"]
    url = await queue_url(sqs, queue)
    await eventually(lambda: empty(sqs, url), 10, "every message deleted")
    assert EventOutcome.invalid not in {e.outcome for e in events}
