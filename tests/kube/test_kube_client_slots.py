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
