"""The pod log is fetched when the pod ends, not after the Job's final status
(targets/kubernetes/podlog.py): the run's end no longer waits for one more request."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any, cast

import httpx2
import pytest

from jobwire.model import Job, RunState
from jobwire.model import KubernetesTarget as KubeSpec
from jobwire.targets.kubernetes import KubernetesJobTarget
from jobwire.targets.kubernetes.client import Kube
from jobwire.targets.kubernetes.podlog import PodLogs
from jobwire.targets.kubernetes.watch import Event
from tests.support.fake_context import FakeContext, wait_until


class FakeKube:
    """What PodLogs and the end of `_follow` call: `pod_log` (recorded), `list_pods` (unused here)."""

    def __init__(self, logs: dict[str, list[str]], fail_after: dict[str, int] | None = None) -> None:
        self.logs = logs
        self.fail_after = fail_after or {}
        self.requests: list[str] = []
        self.release = asyncio.Event()
        self.release.set()

    async def pod_log(self, namespace: str, pod: str, follow: bool) -> AsyncGenerator[str, None]:
        self.requests.append(pod)
        await self.release.wait()
        for i, line in enumerate(self.logs.get(pod, [])):
            if i == self.fail_after.get(pod, -1):
                raise httpx2.ReadError("connection reset")
            yield line

    async def list_pods(self, namespace: str, labels: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
        raise AssertionError("the watch cache had the pods")


def pod(name: str, phase: str, created: str = "2026-12-06T00:00:00Z") -> dict[str, Any]:
    return {
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"job-name": "j"}, "creationTimestamp": created},
        "status": {"phase": phase},
    }


def logs_of(kube: FakeKube) -> PodLogs:
    return PodLogs(cast(Kube, kube), "default")


def ctx() -> FakeContext:
    return FakeContext(Job.model_validate({"name": "j", "target": {"type": "kubernetes", "image": "x"}}))


async def test_the_fetch_starts_when_the_pod_ends_and_is_used_at_the_end() -> None:
    kube = FakeKube({"p1": ["one\n", "two\n"]})
    logs = logs_of(kube)
    logs.seen(pod("p1", "Pending"))
    logs.seen(pod("p1", "Running"))
    assert logs.fetching == frozenset()  # its log is not complete yet
    logs.seen(pod("p1", "Succeeded"))
    logs.seen(pod("p1", "Succeeded"))  # the same pod again: still one fetch
    assert logs.fetching == {"p1"}
    await asyncio.sleep(0)
    assert kube.requests == ["p1"]
    c = ctx()
    await logs.copy(c, [pod("p1", "Succeeded")])
    assert kube.requests == ["p1"] and bytes(c.log_data) == b"one\ntwo\n"
    logs.close()


async def test_the_newest_pods_log_is_copied_and_an_older_ones_fetch_dropped() -> None:
    kube = FakeKube({"old": ["first try\n"], "new": ["second try\n"]})
    logs = logs_of(kube)
    logs.seen(pod("old", "Failed", "2026-12-06T00:00:00Z"))
    await asyncio.sleep(0)
    pods = [pod("old", "Failed", "2026-12-06T00:00:00Z"), pod("new", "Succeeded", "2026-12-06T00:00:05Z")]
    c = ctx()
    await logs.copy(c, pods)  # "new"'s end was not seen (another connection): fetched now
    assert bytes(c.log_data) == b"second try\n" and kube.requests == ["old", "new"]
    logs.close()
    assert logs.fetching == frozenset()


async def test_what_was_read_before_the_log_request_failed_is_kept() -> None:
    kube = FakeKube({"p1": ["a\n", "b\n", "c\n"]}, fail_after={"p1": 2})
    logs = logs_of(kube)
    logs.seen(pod("p1", "Failed"))
    c = ctx()
    await logs.copy(c, [pod("p1", "Failed")])
    assert bytes(c.log_data) == b"a\nb\n"


async def test_no_pod_no_log() -> None:
    kube = FakeKube({})
    c = ctx()
    await logs_of(kube).copy(c, [])
    assert kube.requests == [] and c.log_data == b""


def job_event(status: dict[str, Any], run_id: str) -> Event:
    md = {"name": "j", "labels": {"jobwire.io/run": run_id}}
    return ("jobs", "MODIFIED", {"kind": "Job", "metadata": md, "status": status})


@pytest.mark.parametrize("complete_first", [False, True])
async def test_follow_requests_the_log_at_the_pods_end_before_the_jobs(
    tmp_path: Any, complete_first: bool
) -> None:
    from jobwire.config import Settings

    kube = FakeKube({"p1": ["done\n"]})
    target = KubernetesJobTarget(Settings(data_dir=tmp_path))
    target.pod_watch = lambda ns: cast(Any, type("W", (), {"objects": lambda self, k: [pod("p1", "Succeeded")]})())
    c = ctx()
    queue: asyncio.Queue[Event] = asyncio.Queue()
    started = {"active": 1, "startTime": "2026-12-06T00:00:00Z"}
    complete = {
        "succeeded": 1,
        "startTime": "2026-12-06T00:00:00Z",
        "completionTime": "2026-12-06T00:00:05Z",
        "conditions": [{"type": "Complete", "status": "True"}],
    }
    queue.put_nowait(job_event(started, c.run.id))
    if not complete_first:
        queue.put_nowait(("pods", "MODIFIED", pod("p1", "Succeeded")))
    spec = c.job.target
    assert isinstance(spec, KubeSpec)
    follow = asyncio.create_task(target._follow(cast(Kube, kube), c, spec, "default", "j", queue))
    if complete_first:
        for _ in range(5):  # (nothing to wait for: no pod end has been seen, no request may start)
            await asyncio.sleep(0)
    else:
        await wait_until(lambda: bool(kube.requests), 5, "the log request")
    # the pod's end alone has started the request, before any final Job status arrived
    assert kube.requests == ([] if complete_first else ["p1"])
    queue.put_nowait(job_event(complete, c.run.id))
    outcome = await asyncio.wait_for(follow, 5)
    assert outcome.state == RunState.succeeded
    assert bytes(c.log_data) == b"done\n" and kube.requests == ["p1"]  # one request either way
