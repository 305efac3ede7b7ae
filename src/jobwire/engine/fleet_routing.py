"""Several scheduler replicas on one fleet (docs/fleet.md): which replica applies a runner's result.

Every scheduler consumes the shared results queue, so a result often reaches a replica that does
not hold its run. Only the holder may apply it (it is the single writer of that run: its state
machine, retries and bookkeeping are in its memory). So a result for a run not in flight here is
looked up in the store: a run that ended, or that this replica owns (a redelivery, an older
attempt), changes nothing; a run another replica owns is **forwarded** to that replica's own queue,
`<results queue>.replica.<replica id>`, which only it consumes — published with a confirm, and only then is
the original acknowledged, so a result is always in at least one queue until its owner committed
it. A forwarded result carries a hop count: after `MAX_HOPS` (owners changing under it) it is
dropped; the run's new owner published its attempt again when it took the run over.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog

log = structlog.get_logger(__name__)

MAX_HOPS = 3

Owners = Callable[[Sequence[str]], Awaitable[dict[str, str | None]]]
Publish = Callable[[str, list[tuple[str, bytes]]], Awaitable[None]]


def personal_queue(results_queue: str, replica: str) -> str:
    """The queue only `replica` consumes: results forwarded to it by the other replicas."""
    return f"{results_queue}.replica.{replica}"


async def route(
    strays: list[dict[str, Any]], me: str, owners: Owners, publish: Publish, results_queue: str
) -> int:
    """Forward the results of runs this replica does not hold to their owners' queues; returns
    how many were ignored (ended runs, this replica's own, too many hops). Raises ConnectionError
    if a forward is not confirmed (nothing is acknowledged then: the results come again)."""
    found = await owners(sorted({str(m["run_id"]) for m in strays if "run_id" in m}))
    by_owner: dict[str, list[tuple[str, bytes]]] = {}
    ignored = 0
    for msg in strays:  # a probe's answer goes to the replica that sent the probe
        owner = str(msg["replica"]) if msg.get("kind") == "probe" else found.get(str(msg["run_id"]))
        hops = int(msg.get("hops") or 0)
        if owner is None or owner == me or hops >= MAX_HOPS:
            ignored += 1
            continue
        doc = {**msg, "hops": hops + 1}
        mid = f"{msg.get('run_id', msg.get('name'))}-{msg.get('attempt')}:{msg['kind']}"
        by_owner.setdefault(owner, []).append((mid, json.dumps(doc, separators=(",", ":")).encode()))
    for owner, messages in by_owner.items():
        await publish(personal_queue(results_queue, owner), messages)
    if by_owner:
        log.debug("fleet: results forwarded to their runs' replicas", count=sum(map(len, by_owner.values())))
    return ignored


__all__ = ["MAX_HOPS", "personal_queue", "route"]
