"""The shared watch's cache (targets/kubernetes/watch.py): slim objects, finished ones dropped."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from jobwire.targets.kubernetes.watch import NamespaceWatch


async def _list() -> tuple[list[dict[str, Any]], str]:
    return [], "1"


async def _never(rv: str | None) -> AsyncIterator[tuple[str, Any]]:
    return
    yield  # an async generator that ends at once


def pod(name: str, job: str, phase: str) -> dict[str, Any]:
    return {
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": {"job-name": job},
            "resourceVersion": "2",
            "managedFields": [{"x": 1}],
        },
        "spec": {"containers": [{"name": "c", "image": "i", "env": [{"name": "A", "value": "b" * 1000}]}]},
        "status": {"phase": phase},
    }


def watch() -> NamespaceWatch:
    return NamespaceWatch(
        "pods",
        "default",
        _list,
        _never,
        lambda o: (o["metadata"].get("labels") or {}).get("job-name"),
        lambda o: (o.get("status") or {}).get("phase") in ("Succeeded", "Failed"),
    )


async def test_cached_objects_keep_metadata_and_status_but_not_spec() -> None:
    w = watch()
    w._apply("ADDED", pod("p1", "j1", "Running"))
    cached = w.cache["p1"]
    assert "spec" not in cached and "managedFields" not in cached["metadata"]
    assert cached["status"] == {"phase": "Running"} and cached["metadata"]["labels"] == {"job-name": "j1"}
    await w.close()


async def test_a_finished_runs_objects_leave_the_cache_when_nobody_follows_them() -> None:
    w = watch()
    with w.subscribe("j1") as sub, w.subscribe("j2"):
        w._apply("ADDED", pod("p1", "j1", "Running"))
        w._apply("MODIFIED", pod("p1", "j1", "Succeeded"))
        w._apply("ADDED", pod("p2", "j2", "Running"))
        assert sub.queue.qsize() == 2  # the follower saw both changes
        assert set(w.cache) == {"p1", "p2"}
    # j1's pod is final and unfollowed: dropped; j2's still runs: kept for whoever follows it next
    assert set(w.cache) == {"p2"} and w.objects("j1") == [] and len(w.objects("j2")) == 1
    await w.close()


async def test_a_runs_inbox_keeps_order_wakes_its_reader_and_survives_a_timed_out_wait() -> None:
    from jobwire.targets.kubernetes.watch import Inbox

    box = Inbox()
    box.put_nowait(("jobs", "ADDED", {"n": 1}))
    box.put_nowait(("pods", "MODIFIED", {"n": 2}))
    assert box.qsize() == 2
    assert [await box.get(), await box.get()] == [("jobs", "ADDED", {"n": 1}), ("pods", "MODIFIED", {"n": 2})]
    with pytest.raises(TimeoutError):  # a wait that times out (image pull grace) leaves no waiter behind
        await asyncio.wait_for(box.get(), 0.01)
    reader = asyncio.create_task(box.get())
    await asyncio.sleep(0)  # the reader is waiting: a put wakes it
    box.put_nowait(("jobs", "DELETED", {"n": 3}))
    assert await asyncio.wait_for(reader, 5) == ("jobs", "DELETED", {"n": 3})
    assert box.empty()
