"""Copies of a work message, and which one runs (docs/fleet.md, "After a scheduler crash").

A scheduler that restarts, or takes over a dead replica's runs, cannot always know whether an
attempt's work message is in the queue: it was published, but the crash fell before RabbitMQ's
confirm was journalled (or the journal is the dead replica's). Such an attempt is published again
as a *copy*, under its own message name `<attempt>#<tag>` (the target-side name — the run id, the
HTTP `Idempotency-Key`, the Job name — is the attempt's, whatever the copy).

The first result that reaches the scheduler for such a run names the copy that runs it; the other
one — still waiting in the queue, normally, since the first message is ahead of the copy — is
cancelled by its own name on the cancels stream, so the runner that takes it acknowledges it
without running it, and any result it still sends is ignored. A runner holding both copies runs
one (`runner.py`: copies of one attempt share its in-flight entry).

Before publishing copies at all, the scheduler sends a **probe**: a marker message on the work
queue, behind every message published before the crash. A runner that takes it answers on the
results queue. The queue hands messages out in order, so by then every first message that was in
the queue is in a runner's hands, and its `started` follows within milliseconds: the copies are
published `PROBE_GRACE` after the answer, for the attempts still without any result — which were,
as far as can be known, never in the queue. Without an answer within `PROBE_WAIT` (no runner up,
or runners older than probes) they are published anyway, and the copies' cancel is what is left."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable

PROBE_GRACE = 1.0
"""Seconds from the probe's answer to publishing the copies: the `started` of messages handed
out just before the probe arrive meanwhile."""
PROBE_WAIT = 30.0
"""Seconds without an answer to the probe after which the copies are published anyway."""


class Copies:
    """The runs of this scheduler with a copy of their attempt's work message published."""

    def __init__(self) -> None:
        self.tag = uuid.uuid4().hex[:8]
        """This process's copy tag: a copy's name is `<attempt>#<tag>` (fresh per scheduler start)."""
        self._copies: dict[str, tuple[str, str | None]] = {}
        """Run id → (its copy's message name, the name of the message whose results are applied)."""

    def __len__(self) -> int:
        return len(self._copies)

    def name(self, run_id: str, attempt_name: str) -> str:
        """The message name of a new copy of `attempt_name` (remembered until `drop`)."""
        copy = f"{attempt_name}#{self.tag}"
        self._copies[run_id] = (copy, None)
        return copy

    def decide(self, run_id: str, attempt_name: str, message_name: str | None) -> tuple[bool, str | None]:
        """Whether a result sent for `message_name` is applied, and the message name to cancel now
        (the other copy, when this result is the first one). A result that does not name its
        message (a runner of an older version) is applied, as before copies were told apart."""
        entry = self._copies.get(run_id)
        if entry is None or message_name is None:
            return True, None
        copy, winner = entry
        if winner is not None:
            return message_name == winner, None
        if message_name not in (copy, attempt_name):
            return True, None  # an older copy (a replica's before it died): not one of these two
        self._copies[run_id] = (copy, message_name)
        return True, copy if message_name == attempt_name else attempt_name

    def names(self, run_id: str) -> list[str]:
        """The copy's message name, if the run has one (a cancel of the run cancels it too)."""
        entry = self._copies.get(run_id)
        return [entry[0]] if entry is not None else []

    def drop(self, run_id: str) -> None:
        self._copies.pop(run_id, None)


class Probe:
    """The marker a restarted scheduler sends behind the work messages it is unsure of; `release`
    is called once (after the answer and `PROBE_GRACE`, or after `PROBE_WAIT`)."""

    def __init__(self, tag: str, release: Callable[[], None]) -> None:
        self.name = f"probe#{tag}"
        self._release = release
        self.sent = False
        self._timer: asyncio.TimerHandle | None = None

    async def send(self, publish: Callable[[str, list[tuple[str, bytes]]], Awaitable[None]], queue: str,
                   replica: str | None) -> None:
        body = json.dumps({"v": 1, "kind": "probe", "name": self.name, "replica": replica}).encode()
        await publish(queue, [(self.name, body)])  # raises: not sent, sent again by the caller's retry
        self.sent = True
        self._timer = asyncio.get_running_loop().call_later(PROBE_WAIT, self._release)

    def answered(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(PROBE_GRACE, self._release)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


__all__ = ["PROBE_GRACE", "PROBE_WAIT", "Copies", "Probe"]
