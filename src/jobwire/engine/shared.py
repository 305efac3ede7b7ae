"""Several replicas on one store: what one replica keeps in memory that the others must see.

Only for a shared store (`Store.shared`, PostgreSQL), over its bus (`Store.bus`, LISTEN/NOTIFY on
one dedicated connection, supervised as `jobwire-replicas-listen`: reconnected with backoff,
and everything re-read after a reconnect). Channels:

* `jobwire_jobs` — a job's name, sent by the jobs table's trigger in the transaction that changed it:
  the job is re-read and its triggers reconciled here (`JobRegistry.refresh`, then the engine's
  `definitions_changed`: schedules, sources, chains). Every (re)connect re-reads all jobs.
* `jobwire_status` — the status documents this replica publishes, for the others' stream readers:
  one payload per batch, a header line `<origin> <seq>` then one line per document, `d<json>` or,
  for a document too long for a notification, `r<run id>` (the receiver reads the run). A
  receiver skips its own origin, feeds the rest to its hub's ring only (the sinks got them from the
  replica that made them), and a hole in an origin's `seq` (payloads lost while the bus was down)
  becomes a gap its stream readers are told about (`lagged`).
* `jobwire_runs` — a request about a run active on another replica (a callback, a cancel),
  handled by the replica that holds the run, which confirms on the same channel once what it did
  is committed (`{"ack": …}`, with the error if it refused); the replica that forwarded it answers
  its caller only then — a callback answered 200 is in the store — or, with no confirmation within
  `FORWARD_WAIT`, 503 (send it again: the holder may be restarting, or its runs being taken over).
* `jobwire_slots` — `<job>\\x1f<key>`: a run of a job with a concurrency limit ended (sent once its
  end is committed); every replica then tries to promote its queued runs of that pair, each
  promotion checked and written by the store under the pair's lock (`Store.claim_slot`).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import deque
from collections.abc import Coroutine
from typing import Any, Protocol

import structlog

from jobwire.config import Settings
from jobwire.engine.errors import Conflict, EngineError, Unavailable
from jobwire.engine.jobs import JobRegistry
from jobwire.engine.runs import RunStates
from jobwire.engine.secret import CallbackTokens
from jobwire.engine.status import StatusHub, document
from jobwire.engine.supervisor import Supervisor
from jobwire.model import Run, RunState, StatusDocument
from jobwire.store import Store
from jobwire.store.base import MAX_PAYLOAD, Bus

log = structlog.get_logger(__name__)

JOBS, STATUS, RUNS, SLOTS = "jobwire_jobs", "jobwire_status", "jobwire_runs", "jobwire_slots"
OUTGOING = 10_000
"""Status documents waiting to be sent at most; beyond, the oldest are dropped (a `seq` gap)."""
SEND_BATCH = 2000
"""Status documents per round trip at most (about 100 notifications of ~20 documents each)."""
SEP = "\x1f"
FORWARD_WAIT = 10.0
"""Seconds a request about a run on another replica waits for that replica's confirmation."""


class TooLarge(EngineError):
    """A request about a run on another replica does not fit in one notification."""

    status = 413
    reason = "TooLarge"


class Parts(Protocol):
    """What the shared state wires itself into: the engine's parts (a protocol, not an import of
    the engine facade)."""

    settings: Settings
    store: Store
    job_registry: JobRegistry
    hub: StatusHub
    run_states: RunStates
    supervisor: Supervisor

    def _definitions_changed(self) -> None: ...


class SharedState:
    def __init__(self, parts: Parts, bus: Bus | None) -> None:
        self.store = parts.store
        self.bus = bus
        """None: one process on its store — nothing is shared, `start` only returns."""
        self.data_dir = parts.settings.data_dir
        self.registry = parts.job_registry
        self.definitions_changed = parts._definitions_changed
        self.hub = parts.hub
        self.states = parts.run_states
        self.committer = parts.run_states.committer
        self.supervisor = parts.supervisor
        self.origin = uuid.uuid4().hex[:16]
        """This process among the replicas (its own status documents come back to it: skipped)."""
        self._out: deque[StatusDocument] = deque()
        self._out_wake = asyncio.Event()
        self._seq = 0
        self._seen: dict[str, int] = {}
        """The last status `seq` received from each other replica."""
        self._dirty: set[str] = set()
        self._jobs_wake = asyncio.Event()
        self._resync = False
        self.received = 0
        """Status documents received from other replicas (tests, diagnostics)."""
        self._confirms: dict[str, asyncio.Future[str | None]] = {}
        """Forwarded requests waiting for the holder's confirmation: request id → its error or None."""
        if bus is None:
            return
        bus.subscribe(JOBS, self._on_job)
        bus.subscribe(STATUS, self._on_status)
        bus.subscribe(RUNS, self._on_run_request)
        bus.subscribe(SLOTS, self._on_slot)
        self.hub.relay = self._relay
        self.states.forward = self.forward
        self.states.slot_freed = self._slot_freed

    @classmethod
    def over(cls, parts: Parts) -> SharedState:
        """The shared state of the engine's store: its bus if several replicas may use it."""
        return cls(parts, parts.store.bus() if parts.store.shared else None)

    async def start(self, tokens: CallbackTokens) -> None:
        """Several replicas: the callback key every replica uses (kept in the store), then the
        supervised loops — the LISTEN connection, the catalogue, the outgoing documents."""
        if self.bus is None:
            return
        await tokens.load_shared(self.data_dir)
        bus = self.bus
        self.supervisor.loop("jobwire-replicas-listen", lambda: bus.run(self._connected), critical=True)
        self.supervisor.loop("jobwire-replicas-jobs", self._jobs_loop, critical=True)
        self.supervisor.loop("jobwire-replicas-status", self._status_loop)

    async def _connected(self, again: bool) -> None:
        self._resync = True  # what changed while nobody listened is read again
        self._jobs_wake.set()
        if again:
            self.hub.skip()  # other replicas' documents were missed: stream readers are told

    async def _notify(self, channel: str, payloads: list[str]) -> None:
        if self.bus is not None:
            await self.bus.notify(channel, payloads)

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        self.supervisor.once(coro, name)

    # ------------------------------------------------------------------ the job catalogue
    def _on_job(self, name: str) -> None:
        self._dirty.add(name)
        self._jobs_wake.set()

    async def _jobs_loop(self) -> None:
        while True:
            await self._jobs_wake.wait()
            self._jobs_wake.clear()
            names, self._dirty = self._dirty, set()
            try:
                if self._resync:
                    self._resync = False
                    changed = await self.registry.resync()
                else:
                    changed = await self.registry.refresh(names)
            except BaseException:
                self._dirty |= names  # read again when the loop restarts
                raise
            if changed:
                self.definitions_changed()

    # ------------------------------------------------------------------ the status stream
    def _relay(self, doc: StatusDocument) -> None:
        if len(self._out) >= OUTGOING:
            self._out.popleft()
            self._seq += 1  # receivers see the hole
        self._out.append(doc)
        self._out_wake.set()

    def _payloads(self, docs: list[StatusDocument]) -> list[str]:
        out: list[str] = []
        lines: list[str] = []
        size = 0
        for doc in docs:
            line = "d" + doc.model_dump_json()
            if len(line.encode()) > MAX_PAYLOAD - 64:
                line = "r" + doc.run_id
            if lines and size + len(line.encode()) + 1 > MAX_PAYLOAD - 64:
                out.append(self._packed(lines))
                lines, size = [], 0
            lines.append(line)
            size += len(line.encode()) + 1
        if lines:
            out.append(self._packed(lines))
        return out

    def _packed(self, lines: list[str]) -> str:
        self._seq += 1
        return "\n".join([f"{self.origin} {self._seq}", *lines])

    async def _status_loop(self) -> None:
        while True:
            await self._out_wake.wait()
            self._out_wake.clear()
            while self._out:
                docs = [self._out.popleft() for _ in range(min(len(self._out), SEND_BATCH))]
                # documents that cannot be sent are not kept: the hole in `seq` tells the receivers
                await self._notify(STATUS, self._payloads(docs))

    def _on_status(self, payload: str) -> None:
        head, _, body = payload.partition("\n")
        origin, _, seq_text = head.partition(" ")
        if origin == self.origin or not seq_text.isdigit():
            return
        seq = int(seq_text)
        last = self._seen.get(origin)
        self._seen[origin] = seq
        if last is not None and seq != last + 1:
            self.hub.skip()  # documents of that replica were lost on the way
        if not self.hub.reading:
            self.hub.skip()  # nobody would read them here: not even parsed
            return
        for line in body.split("\n"):
            if line.startswith("d"):
                self.received += 1
                self.hub.publish_remote(StatusDocument.model_validate_json(line[1:]))
            elif line.startswith("r"):
                self._spawn(self._read_remote(line[1:]), "jobwire-replicas-read")

    async def _read_remote(self, run_id: str) -> None:
        run = await self.store.get_run(run_id)
        if run is not None:
            stored = self.registry.jobs.get(run.job)
            self.received += 1
            self.hub.publish_remote(document(run, stored.job if stored else None))

    # ------------------------------------------------------------------ requests about runs
    async def forward(self, run_id: str, request: dict[str, Any]) -> None:
        """Hand `request` to the replica holding `run_id`; return once it confirmed it committed."""
        rid = uuid.uuid4().hex
        payload = json.dumps({**request, "run": run_id, "o": self.origin, "r": rid})
        if len(payload.encode()) > MAX_PAYLOAD:
            raise TooLarge(
                f"run {run_id} runs on another replica and this request is {len(payload.encode())} "
                f"bytes, more than the {MAX_PAYLOAD} that can be handed to it: send less data"
            )
        confirmed = self._confirms[rid] = asyncio.get_running_loop().create_future()
        try:
            await self._notify(RUNS, [payload])
            async with asyncio.timeout(FORWARD_WAIT):
                error = await confirmed
        except TimeoutError:
            raise Unavailable(
                f"run {run_id} is active on another replica, which did not confirm the {request.get('op')} "
                f"within {FORWARD_WAIT:.0f} s (restarting, or its runs being taken over): send it again"
            ) from None
        finally:
            self._confirms.pop(rid, None)
        if error is not None:
            raise Conflict(error)

    def _on_run_request(self, payload: str) -> None:
        request = json.loads(payload)
        if "ack" in request:  # a confirmation: for the replica that forwarded the request
            confirmed = self._confirms.get(str(request["ack"])) if request.get("to") == self.origin else None
            if confirmed is not None and not confirmed.done():
                error = request.get("e")
                confirmed.set_result(error if isinstance(error, str) else None)
            return
        run_id = str(request.get("run"))
        run = self.states.runs.get(run_id)
        if request.get("o") == self.origin:
            return  # our own request (every replica hears every request)
        if run is None:
            if request.get("op") == "cancel" and self.states.attempts.backlog.stored:
                # it may wait in this replica's store-kept backlog (engine/spill.py)
                self._spawn(self._handle_dropped(run_id, request), "jobwire-replicas-request")
            return  # else not ours
        self._spawn(self._handle(run, request), "jobwire-replicas-request")

    async def _handle_dropped(self, run_id: str, request: dict[str, Any]) -> None:
        run = await self.states.take_back(run_id)
        if run is not None:  # ours: kept in the store by the launch backlog
            await self._handle(run, request)

    async def _handle(self, run: Run, request: dict[str, Any]) -> None:
        """Do what another replica forwarded, commit it, then confirm (or say why not)."""
        error: str | None = None
        try:
            if request.get("op") == "callback":
                data = request.get("data")
                message = request.get("message")
                await self.states.attempts.deliver_callback(
                    run,
                    bool(request.get("ok")),
                    message if isinstance(message, str) else None,
                    data if isinstance(data, dict) else {},
                )
            elif request.get("op") == "cancel":
                await self.states.cancel(run.id, str(request.get("reason") or "cancelled by user"))
            await self.committer.flush()  # confirmed once recorded
        except EngineError as exc:
            error = str(exc)
        rid, origin = request.get("r"), request.get("o")
        if isinstance(rid, str) and isinstance(origin, str):  # (a replica of an older version sends none)
            await self._notify(RUNS, [json.dumps({"ack": rid, "to": origin, "e": error})])

    # ------------------------------------------------------------------ concurrency slots
    def _slot_freed(self, job: str, ckey: str | None) -> None:
        """A run of (job, ckey) ended here: once that is committed, every replica (this one too)
        tries its queued runs of the pair."""

        def committed() -> None:
            pair = f"{job}{SEP}{ckey if ckey is not None else ''}"
            self._spawn(self._notify(SLOTS, [pair]), "jobwire-slots")
            self._spawn(self.promote(job, ckey), "jobwire-promote")

        self.committer.after_commit(committed)

    def _on_slot(self, payload: str) -> None:
        job, _, key = payload.partition(SEP)
        stored = self.registry.jobs.get(job)
        ckey = key if stored is not None and stored.job.concurrency.key else None
        if self.states.slots.waiting(job, ckey):
            self._spawn(self.promote(job, ckey), "jobwire-promote")

    async def promote(self, job: str, ckey: str | None) -> None:
        """Start this replica's queued runs of (job, ckey), in order, as long as the store finds a
        free slot for each."""
        stored = self.registry.jobs.get(job)
        if stored is None or stored.job.concurrency.limit is None or self.states.stopping:
            return
        for run_id in self.states.slots.waiting(job, ckey):
            run = self.states.runs.get(run_id)
            if run is None or run.state != RunState.queued:
                continue
            if not await self.store.claim_slot(run, stored.job.concurrency.limit):
                return
            if run.state != RunState.queued:  # cancelled meanwhile
                continue
            self.states.slots.release(job, ckey, run.id)
            self.states.slots.occupy(job, ckey, run.id, run.created_at)
            self.states.transition(run, RunState.pending, "a concurrency slot is free")
            self.states.attempts.launch(run, stored.job)
