"""A fake `Intake` for source tests: records what a source hands in and answers like the engine
would (`run`, or `invalid` with the source's `problem`), with switches for a slow or unavailable
store."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

from jobwire.model import Admission, Event, EventOutcome, Incoming
from jobwire.sources.base import IntakeUnavailable


class FakeIntake:
    """Records what it is given; `invalid` when the source set `problem` or the payload has a
    `poison` field (standing in for invalid parameters), else `run`. `hold()` makes `submit`
    wait until `release()`; `unavailable` makes it raise IntakeUnavailable."""

    def __init__(self) -> None:
        self.calls: list[list[Incoming]] = []
        self.returned = 0
        self._gate: asyncio.Event | None = None
        self.unavailable = False

    def hold(self) -> None:
        self._gate = asyncio.Event()

    def release(self) -> None:
        if self._gate is not None:
            self._gate.set()
        self._gate = None

    @property
    def incomings(self) -> list[Incoming]:
        return [i for call in self.calls for i in call]

    async def submit(self, events: Sequence[Incoming]) -> list[Admission]:
        self.calls.append(list(events))
        if self._gate is not None:
            await self._gate.wait()
        if self.unavailable:
            raise IntakeUnavailable("store cannot write")
        self.returned += 1
        return [self._admit(e) for e in events]

    @staticmethod
    def _admit(inc: Incoming) -> Admission:
        reason = inc.problem
        if reason is None and isinstance(inc.payload, dict) and "poison" in inc.payload:
            reason = f"invalid parameters: {inc.payload['poison']}"
        event = Event(
            id="e" + uuid.uuid4().hex[:12],
            job=inc.job,
            trigger=inc.trigger,
            source=inc.source,
            received_at=inc.received_at,
            payload=inc.payload,
            outcome=EventOutcome.invalid if reason else EventOutcome.run,
            reason=reason,
        )
        return Admission(event=event, run=None)
