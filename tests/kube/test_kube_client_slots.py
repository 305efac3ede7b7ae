"""What ends a run never queues behind a burst of Job creations (targets/kubernetes/client.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from lightkube import KubeConfig
from lightkube.config.kubeconfig import SingleConfig

from jobwire.targets.kubernetes import client
from jobwire.targets.kubernetes.client import MAX_REQUESTS, Kube
from jobwire.targets.kubernetes.slots import START, URGENT, Slots


def offline_config() -> SingleConfig:
    return KubeConfig.from_dict(
        {
            "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:1"}}],
            "users": [{"name": "u", "user": {"token": "t"}}],
            "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
            "current-context": "x",
        }
    ).get()


class SlowCreates:
    """Stands in for lightkube's client: creations (plain POSTs) wait for `release`; logs answer at once."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.creating = 0

    async def send(self, generic: Any, request: Any, stream: bool = False) -> Any:
        assert request.method == "POST"
        self.creating += 1
        await self.release.wait()
        raise RuntimeError("not sent")

    async def log(self, pod: str, namespace: str, follow: bool) -> AsyncIterator[str]:
        yield f"log of {pod}\n"

    async def close(self) -> None:
        pass


async def test_a_finished_runs_log_is_fetched_while_creations_fill_the_pool(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kube = Kube(offline_config())
    kube.wire = None  # lightkube's httpx path (the wire's requests take the same slots)
    fake = SlowCreates()
    monkeypatch.setattr(client, "_send", fake.send)
    monkeypatch.setattr(kube.client, "log", fake.log)
    manifest = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "x"},
        "spec": {
            "template": {"spec": {"containers": [{"name": "c", "image": "i"}], "restartPolicy": "Never"}}
        },
    }
    creations = [
        asyncio.create_task(kube.create_job("default", dict(manifest))) for _ in range(MAX_REQUESTS * 3)
    ]
    try:
        async with asyncio.timeout(5):
            while fake.creating < 10:
                await asyncio.sleep(0.01)
        lines = await asyncio.wait_for(_collect(kube.pod_log("default", "p-1", follow=False)), 5)
        assert lines == ["log of p-1\n"]
        assert fake.creating < MAX_REQUESTS  # creations hold fewer than every request slot
    finally:
        fake.release.set()
        await asyncio.gather(*creations, return_exceptions=True)
        await kube.close()


async def _collect(it: AsyncIterator[str]) -> list[str]:
    return [line async for line in it]


async def test_a_freed_slot_goes_to_what_ends_runs_before_waiting_creations() -> None:
    slots = Slots(1)
    order: list[str] = []
    release = asyncio.Event()

    async def hold() -> None:
        async with slots.take(URGENT):
            await release.wait()

    async def request(cls: int, name: str) -> None:
        async with slots.take(cls):
            order.append(name)

    holder = asyncio.create_task(hold())
    await asyncio.sleep(0)
    waiters = [asyncio.create_task(request(START, "create-1")), asyncio.create_task(request(START, "create-2"))]
    await asyncio.sleep(0)
    waiters += [asyncio.create_task(request(URGENT, "log-1")), asyncio.create_task(request(URGENT, "log-2"))]
    await asyncio.sleep(0)
    assert slots.waiting(START) == 2 and slots.waiting(URGENT) == 2
    release.set()
    await asyncio.gather(holder, *waiters)
    # the creations asked first, the logs get the slot first; first come first served within each
    assert order == ["log-1", "log-2", "create-1", "create-2"]
    assert slots.free == 1


async def test_a_cancelled_waiter_does_not_keep_a_slot() -> None:
    slots = Slots(1)
    release = asyncio.Event()

    async def hold() -> None:
        async with slots.take(START):
            await release.wait()

    holder = asyncio.create_task(hold())
    await asyncio.sleep(0)
    gone = asyncio.create_task(hold())  # waits, then is cancelled: never holds the slot
    handed = asyncio.create_task(hold())  # handed the slot in the same turn it is cancelled
    await asyncio.sleep(0)
    gone.cancel()
    release.set()
    await asyncio.sleep(0)  # the holder releases: the slot is handed to `handed`
    handed.cancel()
    await asyncio.gather(holder, gone, handed, return_exceptions=True)
    assert slots.free == 1 and slots.waiting(START) == 0
    async with asyncio.timeout(1), slots.take(URGENT):
        assert slots.free == 0
