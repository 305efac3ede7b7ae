"""The source contract: where events come from, and what a source and the engine owe each other.

A **source** consumes one connection's worth of events (a broker queue, MQTT topic filters, a
database channel) and hands them to the engine's **intake**; the engine records them and answers.
The whole contract, from the source's side:

1. **Hand in, then acknowledge.** `await intake.submit([...])` returns only after every event it
   was given — and the run each one makes — is durably committed. Acknowledge the message after
   that, never before. A crash in between means redelivery, and the run key (job, trigger and the
   event key: the message id, or a hash of the message) turns the redelivery into a recorded
   `duplicate` instead of a second run. A message that fans out to several jobs is several
   `Incoming`s in ONE `submit` call: acknowledge once that call returns (all are committed).
2. **Read the answer.** One `Admission` per event, in order. Outcome `invalid` means retrying the
   same message gives the same answer: dead-letter it with `admission.event.reason` (never requeue
   it for ever). Every other outcome (`run`, `duplicate`, `paused`, `overlap`, `filtered`) is
   acknowledged. A message that cannot even be read (not JSON, no job named) is still handed in,
   as an `Incoming` with `problem` set, so it is recorded `invalid` with that reason and the
   answer says to dead-letter it.
3. **Not recorded: do not acknowledge.** `IntakeUnavailable` from `submit` means nothing of that
   call was recorded (the store cannot write, jobwire is stopping): leave the messages
   unacknowledged (nack with requeue, or let the connection drop) so they come back.
4. **Fail loudly, the engine retries.** `run` connects and consumes until cancelled. When the
   connection is lost, raise: the engine's supervisor logs it, shows it in `/readyz` and
   `/metrics`, and calls `run` again with exponential backoff and jitter. Unacknowledged messages
   are redelivered by the broker, so nothing is lost.
5. **Bound the work in flight** (a prefetch count, a batch size): the engine's commit is the
   backpressure — a source that waits for `submit` before taking more cannot run away.
6. **Report health** by updating `self.health` (connected, last message, counts, lag): the engine
   shows it in `/readyz`, `/metrics` and `jobwire status`.

A source kind is a package `jobwire.sources.<kind>` with a `spec` module (its trigger model and
settings, pure pydantic, importable without the client library) and a client module that
`SourcePlug.load` imports only when a source of that kind is configured — a missing client
library is then one clear error naming the pip extra. `jobwire/registry.py` lists the kinds.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from jobwire.model import Admission, EventOutcome, Incoming


class IntakeUnavailable(Exception):
    """The events of a `submit` call could not be recorded (the store cannot write, jobwire is
    stopping): do not acknowledge them; they must come back."""


class Intake(Protocol):
    """What the engine gives a source."""

    async def submit(self, events: Sequence[Incoming]) -> list[Admission]:
        """Record `events` (one transaction where possible) and return once all are durably
        committed, one Admission per event in order. Raises IntakeUnavailable if any could not be
        recorded (then acknowledge none of them: the ones that were recorded come back as
        duplicates)."""
        ...


def dead_letter_reason(admission: Admission) -> str | None:
    """Why this message must go to the dead-letter place, or None to acknowledge it."""
    if admission.event.outcome == EventOutcome.invalid:
        return admission.event.reason or "invalid event"
    return None


@dataclass(frozen=True, slots=True)
class Binding:
    """One trigger a source serves: `job`'s trigger `trigger_id`, defined by `trigger` (the
    source kind's trigger model). `job` is None for an intake that takes the job name from each
    message (seed 000's shared queue)."""

    job: str | None
    trigger_id: str
    trigger: Any


@dataclass(slots=True)
class SourceHealth:
    """Kept current by the source; read by `/readyz`, `/metrics` and `jobwire status`."""

    connected: bool = False
    since: float | None = None
    """Wall-clock time of the last connect or disconnect."""
    target: str = ""
    """Where it consumes from, secrets masked (`amqp://guest:****@host:5672/ queue jobwire.events`)."""
    messages: int = 0
    dead_lettered: int = 0
    last_message_at: float | None = None
    lag: int | None = None
    """Messages waiting at the broker, when the broker says."""
    last_error: str | None = None

    def up(self) -> None:
        self.connected, self.since, self.last_error = True, time.time(), None

    def down(self, error: str) -> None:
        self.connected, self.since, self.last_error = False, time.time(), error

    def received(self, n: int = 1) -> None:
        self.messages += n
        self.last_message_at = time.time()

    def as_dict(self) -> dict[str, Any]:
        return {
            "connected": self.connected,
            "since": self.since,
            "target": self.target,
            "messages": self.messages,
            "dead_lettered": self.dead_lettered,
            "last_message_at": self.last_message_at,
            "lag": self.lag,
            "last_error": self.last_error,
        }


class Source(ABC):
    """One consumer: a connection and the bindings it serves. Built by its kind's `build`."""

    kind: ClassVar[str]

    def __init__(self, name: str, bindings: Sequence[Binding], settings: Any) -> None:
        self.name = name
        """Unique among sources: the supervised task is `jobwire-source-<name>`."""
        self.bindings = list(bindings)
        self.settings = settings
        self.health = SourceHealth()

    @property
    def identity(self) -> tuple[str, str]:
        """Two sources with the same identity are the same consumer: on a job reload, a source is
        restarted only when its identity changed."""
        specs = sorted(f"{b.job}/{b.trigger_id}/{_dump(b.trigger)}" for b in self.bindings)
        return self.name, "\n".join(specs)

    @abstractmethod
    async def run(self, intake: Intake) -> None:
        """Connect and consume until cancelled; raise when the connection is lost (the engine
        calls `run` again with backoff). Acknowledge only after `intake.submit` returned."""


def _dump(trigger: Any) -> str:
    dump = getattr(trigger, "model_dump_json", None)
    return str(dump()) if dump is not None else repr(trigger)
