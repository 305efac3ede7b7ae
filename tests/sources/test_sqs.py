"""The `sqs` source against moto's server over real HTTP, with a fake intake: what is handed in,
when the message is deleted, visibility extended while a submit is slow, poison messages to the
dead-letter queue, FIFO group ids and deduplication ids, a lost endpoint."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from jobwire.sources.base import Binding
from jobwire.sources.sqs.source import DEPTH, REASON_ATTRIBUTE, SqsSource, build
from jobwire.sources.sqs.spec import PLUG, SqsSettings, SqsTrigger, dead_letter_name
from tests.support.aws import aws_env, moto, unique_name  # noqa: F401 - fixtures
from tests.support.awsio import client, queue_url, visible_and_hidden
from tests.support.intake import FakeIntake
from tests.support.waiting import eventually

pytestmark = pytest.mark.usefixtures("aws_env")


@pytest.fixture
async def sqs() -> AsyncIterator[Any]:
    async with client("sqs") as c:
        yield c


@contextlib.asynccontextmanager
async def running(source: SqsSource, intake: FakeIntake) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(source.run(intake))
    try:
        await eventually(lambda: source.health.connected or task.done(), 20, "the source to connect")
        if task.done():
            task.result()
        yield task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def source_for(queue: str, job: str | None = "work", **trigger: Any) -> SqsSource:
    t = SqsTrigger(queue=queue, **trigger)
    sources = build([Binding(job, "sqs", t)], SqsSettings(_env_file=None))  # type: ignore[call-arg]
    assert len(sources) == 1
    return sources[0]  # type: ignore[return-value]


async def test_a_message_is_one_submit_and_deleted_only_after_it_returned(sqs: Any) -> None:
    queue = unique_name("sqs")
    source, intake = source_for(queue), FakeIntake()
    intake.hold()
    async with running(source, intake):
        url = await queue_url(sqs, queue)
        sent = await sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"n": "1"}))
        await eventually(lambda: intake.calls, 10, "the submit")
        assert await visible_and_hidden(sqs, url) == (0, 1), "received, not deleted while not recorded"
        intake.release()

        async def gone() -> bool:
            return await visible_and_hidden(sqs, url) == (0, 0)

        await eventually(gone, 10, "the message to be deleted")
    [[inc]] = intake.calls
    assert (inc.job, inc.trigger, inc.source, inc.payload) == ("work", "sqs", "sqs", {"n": "1"})
    assert inc.event_key == sent["MessageId"] and inc.problem is None


async def test_a_batch_of_ten_is_one_submit(sqs: Any) -> None:
    queue = unique_name("sqs")
    async with client("sqs") as c:
        url = str((await c.create_queue(QueueName=queue))["QueueUrl"])
        entries = [{"Id": str(i), "MessageBody": json.dumps({"n": str(i)})} for i in range(10)]
        await c.send_message_batch(QueueUrl=url, Entries=entries)
    source, intake = source_for(queue, pollers=1), FakeIntake()
    async with running(source, intake):
        await eventually(lambda: len(intake.incomings) == 10, 10, "ten events")
    assert len(intake.calls) == 1, "ten messages waiting are one ReceiveMessage and one submit"


async def test_the_next_batch_is_received_while_one_is_being_recorded_and_in_flight_is_bounded(
    sqs: Any,
) -> None:
    """Pipelined: one poller hands a batch in and receives the next before that submit returned;
    at most DEPTH (2) batches per poller are received and not deleted — a third message waits on
    the queue until one of them is deleted. Nothing is deleted before its submit returned."""
    queue = unique_name("sqs")
    source, intake = source_for(queue, pollers=1), FakeIntake()
    intake.hold()
    async with running(source, intake):
        url = await queue_url(sqs, queue)
        await sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"n": "a"}))
        await eventually(lambda: len(intake.calls) == 1, 10, "the first submit")
        await sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"n": "b"}))
        await eventually(lambda: len(intake.calls) == 2, 10, "the second batch handed in while the first is held")
        assert intake.returned == 0
        assert source.in_flight == DEPTH, "two batches held: the poller waits for a slot, it is not receiving"
        await sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"n": "c"}))
        assert await visible_and_hidden(sqs, url) == (1, 2), "a and b received and not deleted; c not received"
        assert len(intake.calls) == 2 and source.in_flight == DEPTH
        intake.release()

        async def gone() -> bool:
            return await visible_and_hidden(sqs, url) == (0, 0)

        await eventually(gone, 15, "all three recorded and deleted")
    assert [i.payload["n"] for i in intake.incomings] == ["a", "b", "c"]  # type: ignore[index]
    assert intake.returned == 3


async def test_poison_goes_to_the_dead_letter_queue_with_its_reason(sqs: Any) -> None:
    queue = unique_name("sqs")
    source, intake = source_for(queue), FakeIntake()
    async with running(source, intake):
        url = await queue_url(sqs, queue)
        dlq = await queue_url(sqs, dead_letter_name(queue))
        attrs = (await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["RedrivePolicy"]))["Attributes"]
        assert json.loads(attrs["RedrivePolicy"])["deadLetterTargetArn"].endswith(dead_letter_name(queue))
        await sqs.send_message(QueueUrl=url, MessageBody="{not json")
        await sqs.send_message(QueueUrl=url, MessageBody="[1, 2]")
        await sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"n": "ok"}))

        async def dead() -> list[dict[str, Any]]:
            got = await sqs.receive_message(QueueUrl=dlq, MaxNumberOfMessages=10, MessageAttributeNames=["All"])
            found.extend(got.get("Messages") or [])
            return found if len(found) >= 2 else []

        found: list[dict[str, Any]] = []
        await eventually(dead, 15, "two dead letters")

        async def empty() -> bool:
            return await visible_and_hidden(sqs, url) == (0, 0)

        await eventually(empty, 10, "the queue to be empty: nothing requeued")
    reasons = {m["Body"]: m["MessageAttributes"][REASON_ATTRIBUTE]["StringValue"] for m in found}
    assert "not valid JSON" in reasons["{not json"]
    assert "must be a JSON object" in reasons["[1, 2]"]
    invalid = [i for i in intake.incomings if i.problem]
    assert len(invalid) == 2 and source.health.dead_lettered == 2
    assert [i.payload for i in intake.incomings if not i.problem] == [{"n": "ok"}]


async def test_not_recorded_is_not_deleted_and_comes_back(sqs: Any) -> None:
    queue = unique_name("sqs")
    source, intake = source_for(queue, visibility_timeout=1), FakeIntake()
    intake.unavailable = True
    async with running(source, intake):
        url = await queue_url(sqs, queue)
        await sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"n": "1"}))
        await eventually(lambda: len(intake.calls) >= 2, 15, "the message to come back after the visibility timeout")
        assert intake.returned == 0
        intake.unavailable = False
        await eventually(lambda: intake.returned == 1, 15, "the message to be recorded once the store is back")

        async def gone() -> bool:
            return await visible_and_hidden(sqs, url) == (0, 0)

        await eventually(gone, 10, "the message to be deleted")


async def test_a_message_never_recorded_is_moved_to_the_dead_letter_queue_by_the_redrive_policy(
    sqs: Any,
) -> None:
    """The redrive policy jobwire sets: a message that keeps coming back unrecorded (here the store
    cannot write) is moved to `<queue>-dlq` by SQS itself after `max_receive_count` receives —
    never deleted by jobwire, never received for ever."""
    queue = unique_name("sqs")
    source, intake = source_for(queue, visibility_timeout=1, max_receive_count=2), FakeIntake()
    intake.unavailable = True
    async with running(source, intake):
        url = await queue_url(sqs, queue)
        dlq = await queue_url(sqs, dead_letter_name(queue))
        await sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"n": "stuck"}))

        async def moved() -> list[dict[str, Any]]:
            got = await sqs.receive_message(QueueUrl=dlq, MessageAttributeNames=["All"])
            return got.get("Messages") or []

        [dead] = await eventually(moved, 30, "SQS to move the message to the dead-letter queue")
        assert await visible_and_hidden(sqs, url) == (0, 0)
    assert dead["Body"] == json.dumps({"n": "stuck"})
    assert REASON_ATTRIBUTE not in (dead.get("MessageAttributes") or {}), "moved by SQS, not sent by jobwire"
    assert len(intake.calls) == 2 and intake.returned == 0 and source.health.dead_lettered == 0


async def test_visibility_is_extended_while_a_submit_is_slow(sqs: Any) -> None:
    queue = unique_name("sqs")
    source, intake = source_for(queue, visibility_timeout=1, pollers=2), FakeIntake()
    intake.hold()
    async with running(source, intake):
        url = await queue_url(sqs, queue)
        await sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"n": "slow"}))
        await eventually(lambda: intake.calls, 10, "the submit")
        await eventually(lambda: source.extensions >= 3, 10, "the visibility to be extended a few times")
        assert len(intake.calls) == 1, "not handed to the other poller while being recorded"
        intake.release()

        async def gone() -> bool:
            return await visible_and_hidden(sqs, url) == (0, 0)

        await eventually(gone, 10, "the message to be deleted")
    assert len(intake.calls) == 1


async def test_fifo_group_id_is_a_parameter_and_the_deduplication_id_the_event_key(sqs: Any) -> None:
    queue = unique_name("sqs") + ".fifo"
    source, intake = source_for(queue), FakeIntake()
    async with running(source, intake):
        url = await queue_url(sqs, queue)
        dlq = await queue_url(sqs, dead_letter_name(queue))
        assert dlq.endswith("-dlq.fifo")
        for i, group in enumerate(["tenant-a", "tenant-b", "tenant-a"]):
            await sqs.send_message(
                QueueUrl=url,
                MessageBody=json.dumps({"n": str(i)}),
                MessageGroupId=group,
                MessageDeduplicationId=f"dedup-{i}",
            )
        await sqs.send_message(QueueUrl=url, MessageBody="poison", MessageGroupId="g", MessageDeduplicationId="p")
        await eventually(lambda: len(intake.incomings) == 4, 15, "four events")

        async def dead() -> list[Any]:
            got = await sqs.receive_message(QueueUrl=dlq, MessageAttributeNames=["All"])
            return got.get("Messages") or []

        [dead_letter] = await eventually(dead, 10, "the poison message in the FIFO dead-letter queue")
    good = sorted((i for i in intake.incomings if not i.problem), key=lambda i: i.payload["n"])
    assert [(i.payload["message_group_id"], i.event_key) for i in good] == [
        ("tenant-a", "dedup-0"),
        ("tenant-b", "dedup-1"),
        ("tenant-a", "dedup-2"),
    ]
    assert "not valid JSON" in dead_letter["MessageAttributes"][REASON_ATTRIBUTE]["StringValue"]


async def test_event_key_from_an_attribute_or_a_body_field_and_the_shared_intake(sqs: Any) -> None:
    queue = unique_name("sqs")
    source, intake = source_for(queue, job=None, event_key="request_id"), FakeIntake()
    async with running(source, intake):
        url = await queue_url(sqs, queue)
        await sqs.send_message(
            QueueUrl=url,
            MessageBody=json.dumps({"name": "convert", "input_location": "test/convert/in.csv"}),
            MessageAttributes={"request_id": {"DataType": "String", "StringValue": "r-1"}},
        )
        await sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"job": "other", "request_id": "r-2"}))
        await sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"nothing": "named"}))
        await eventually(lambda: len(intake.incomings) == 3, 15, "three events")
    by_job = {i.job: i for i in intake.incomings}
    assert by_job["convert"].event_key == "k:r-1" and by_job["convert"].input_location == "test/convert/in.csv"
    assert by_job["other"].event_key == "k:r-2"
    assert "names no job" in (by_job[None].problem or "")


async def test_a_lost_endpoint_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.support.server import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    source = source_for(unique_name("sqs"))
    with pytest.raises(Exception, match=r"(?i)connect"):
        await asyncio.wait_for(source.run(FakeIntake()), 60)
    assert not source.health.connected and source.health.last_error


def test_the_plug_names_the_aws_extra() -> None:
    assert PLUG.kind == "sqs" and PLUG.extra == "aws"
    with pytest.raises(ValueError, match="queue name"):
        SqsTrigger(queue="bad name!")
    with pytest.raises(ValueError):
        SqsTrigger(queue="q", batch_size=11)
    assert SqsTrigger(queue="https://sqs.eu-west-1.amazonaws.com/123/jobs.fifo").fifo
    assert dead_letter_name("jobs") == "jobs-dlq" and dead_letter_name("jobs.fifo") == "jobs-dlq.fifo"


async def test_through_an_engine_a_fifo_group_is_the_concurrency_key(
    sqs: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real engine: each message one run; the group id fills `message_group_id`, the job's
    concurrency key, so runs of one group queue behind each other while other groups run."""
    from datetime import timedelta

    from jobwire.config import Settings
    from jobwire.engine import Engine
    from jobwire.model import Job
    from jobwire.store import RunQuery

    queue = unique_name("sqs") + ".fifo"
    eng = Engine(Settings(_env_file=None, data_dir=tmp_path / "data", shutdown_grace=timedelta(seconds=1)))
    await eng.start()
    try:
        job = Job.model_validate(
            {
                "name": "per-tenant",
                # a 1 s long poll: moto's receive takes its snapshot of the FIFO groups in flight once per
                # call, so a 20 s poll begun while group "a" was in flight does not hand out a's next
                # message even once the first is deleted — under load the test raced that poll's end
                "triggers": [{"type": "sqs", "queue": queue, "wait_time": 1}],
                "parameters": [{"name": "n"}, {"name": "message_group_id"}],
                "concurrency": {"policy": "queue", "max_running": 1, "key": "message_group_id"},
                "target": {"type": "local", "command": ["sleep", "3600"]},
            }
        )
        await eng.put_job(job)
        await eventually(lambda: any(s["connected"] for s in eng.health()["sources"]), 20, "the sqs source")
        url = await queue_url(sqs, queue)
        for i, group in enumerate(["a", "b", "a"]):
            await sqs.send_message(
                QueueUrl=url, MessageBody=json.dumps({"n": str(i)}), MessageGroupId=group, MessageDeduplicationId=f"d{i}"
            )

        async def three() -> list[Any]:
            runs = (await eng.store.list_runs(RunQuery(job="per-tenant", limit=10))).items
            return runs if len(runs) == 3 and sum(r.state.value == "running" for r in runs) == 2 else []

        runs = await eventually(three, 20, "three runs, two running")
        states = {r.params["n"]: (r.concurrency_key, r.state.value) for r in runs}
        assert states == {"0": ("a", "running"), "1": ("b", "running"), "2": ("a", "queued")}
    finally:
        await eng.stop()
