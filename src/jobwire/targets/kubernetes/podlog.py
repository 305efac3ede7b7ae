"""The pod log an attempt copies into its run log, fetched as soon as the pod has ended.

A run's log must be in jobwire before the run ends (a followed log stops there; a runner of the
fleet sends it with the outcome), so the Job's final status cannot be recorded before its log is
copied. It used to be fetched only then: the `succeeded` document waited for one more request,
queued behind whatever else the client had in flight (10,000 runs: behind the creations).

A pod's log is complete once its phase is `Succeeded` or `Failed` (every container has ended), and
that pod event comes before the Job's final condition: the Job controller sets `Complete` or
`Failed` from its pods' phases. So the fetch starts at the pod event, and the end of the run
awaits a fetch that is usually done by then. The copied log is still the newest pod's, as
before: fetches of older pods (a Job that retried) are dropped, and a pod whose final phase was
not seen (events travel on another connection) is fetched at the end, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import httpx2
import structlog

from jobwire.targets.base import RunContext
from jobwire.targets.kubernetes import build
from jobwire.targets.kubernetes.client import Kube

log = structlog.get_logger(__name__)

LOG_CAPTURE_LINES = 10_000
"""At the end of a run, at most this many lines of its pod's log are copied into jobwire's run log
(so the log outlives the Job; the engine caps its size too)."""

FINAL_PHASES = ("Succeeded", "Failed")


class PodLogs:
    """The log fetches of one attempt's pods. `close()` cancels what is still in flight."""

    def __init__(self, kube: Kube, namespace: str) -> None:
        self._kube = kube
        self._ns = namespace
        self._fetches: dict[str, asyncio.Task[list[str]]] = {}

    def seen(self, pod: dict[str, Any]) -> None:
        """A pod event (not a deletion): start fetching its log once its phase is final."""
        if (pod.get("status") or {}).get("phase") not in FINAL_PHASES:
            return
        name = pod["metadata"]["name"]
        if name not in self._fetches:
            self._fetches[name] = asyncio.create_task(self._fetch(name), name=f"jobwire-kube-log-{name}")

    @property
    def fetching(self) -> frozenset[str]:
        return frozenset(self._fetches)

    async def copy(self, ctx: RunContext, pods: list[dict[str, Any]]) -> None:
        """Copy the newest pod's log into the run's log (fetched now if it was not already)."""
        pod = build.newest(pods)
        if pod is None:
            return
        name = pod["metadata"]["name"]
        task = self._fetches.pop(name, None)
        lines = await task if task is not None else await self._fetch(name)
        if lines:
            ctx.log("".join(lines).encode())

    async def _fetch(self, pod: str) -> list[str]:
        lines: list[str] = []
        try:
            async with contextlib.aclosing(self._kube.pod_log(self._ns, pod, follow=False)) as it:
                async for line in it:
                    lines.append(line)
                    if len(lines) >= LOG_CAPTURE_LINES:
                        break
        except httpx2.HTTPError as exc:
            log.debug("pod log not available", pod=pod, error=str(exc)[:200])
        return lines

    def close(self) -> None:
        for task in self._fetches.values():
            task.cancel()
        self._fetches.clear()
