"""The scheduler's launcher for the runner fleet (`jobwire serve --role scheduler`; docs/fleet.md).

`FleetAttempts` is the other implementation of the launch seam (`launcher.Launcher`): where
`dispatch.Attempts` runs an attempt on its target in this process, this one publishes it as a
persistent, confirmed message on the work queue and applies what the runners report back on the
results queue — started, intermediate status, outcome — through the same run state machine, with
the same retry, backoff and bookkeeping (`Attempts._finish`).

Ack order, and why nothing is lost or doubled:
1. the run is committed (pending) before it is handed over, as always;
2. a `+<attempt>` line goes into the launch journal ("it may be in the broker from now on"), its work
   message is published, and once RabbitMQ confirms it, a `+<attempt>@` line: "it is in the broker"
   (its work message, or, once a runner took it, its result);
3. a runner acks the work message only after RabbitMQ confirmed its outcome on the results queue;
4. the scheduler acks a result only after the state change it made is committed; a result for a run
   that already ended (a redelivery) changes nothing.
After a crash of the scheduler: a running run, or a pending one confirmed in the journal, is not
published again (its message or its result is in the broker); a pending one never marked was never
published: it is published at once; one marked but not confirmed (the crash fell between the publish
and its confirm) is published again, flagged resumed, only once the results waiting from before the
crash have been applied — so one that had run meanwhile is not sent twice.

A cancel is recorded here and put on the cancels stream for the runners; `callback.wait` is kept
here (`fleet_callbacks`); with several scheduler replicas a result for a run another replica holds
is forwarded to it (`fleet_routing`), and runs taken over from a dead replica are published again.
"""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import datetime
from typing import Any

import structlog

from jobwire.engine.dispatch import Attempts
from jobwire.engine.fleet_callbacks import CallbackWaits
from jobwire.engine.fleet_copies import Copies, Probe
from jobwire.engine.fleet_metrics import FleetMetrics
from jobwire.engine.fleet_routing import Owners, personal_queue, route
from jobwire.engine.fleet_wire import broker_url, link_for, work_message
from jobwire.engine.supervisor import Supervisor
from jobwire.model import Job, Run, RunError, RunState, StatusBlock, utcnow
from jobwire.targets.base import Outcome

log = structlog.get_logger(__name__)

PUBLISH_BATCH = 500
RESULTS_PREFETCH = 1000
def _confirmed(name: str) -> str:
    """The journal's line for "RabbitMQ confirmed this attempt's work message" (`<name>` alone:
    it may have been published, the confirm was not seen)."""
    return f"{name}@"


class FleetAttempts(Attempts):
    """Attempts handed to the runner fleet over RabbitMQ instead of run here."""

    arms = False  # the targets are the runners'

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        s = self.settings
        self.link: Any = None
        self._outstanding: dict[str, tuple[Run, Job, datetime | None]] = {}
        """Runs handed to the fleet (or about to be) and not ended: by run id."""
        self._to_publish: list[tuple[str, str, int, bytes, str]] = []
        """(run id, attempt name, attempt, body, message name) waiting for the publisher."""
        self.copies = Copies()
        """Runs whose work message was published again, not knowing if the first is in the queue."""
        self._losers: list[tuple[Run, str]] = []
        """Messages to cancel: another copy of the same attempt reported first (`fleet_copies`)."""
        self.probe = Probe(self.copies.tag, self._release_deferred)
        """Sent behind the messages in doubt before any copy is published (`fleet_copies`)."""
        self._wake = asyncio.Event()
        self._recovering = True
        self._deferred: list[tuple[str, int, RunState]] = []
        """Runs resumed at start that may be in the broker: (run id, attempt, state then)."""
        self._recovered = asyncio.Event()
        self.replica: str | None = None
        self.owners: Owners | None = None
        """Several replicas on one store: who this one is, and the store's run owners (`place`)."""
        self.waits = CallbackWaits(self)
        """Runs whose work ended well, waiting for the job's callback (`callback.wait`)."""
        self.m = FleetMetrics(self.metrics.registry)
        self.queues = (s.work_queue, s.results_queue)

    @property
    def count(self) -> int:
        return len(self._outstanding) + len(self.waits)

    # ---- lifecycle (called by the engine)
    async def open(self, supervisor: Supervisor) -> None:
        self.journal.open()
        self.link = link_for(broker_url(), *self.queues)
        supervisor.loop("jobwire-fleet-publish", self._publish_loop, critical=True)
        supervisor.loop("jobwire-fleet-results", self._results_loop, critical=True)

    def place(self, replica: str, owners: Owners | None) -> None:
        """This replica's id and, when several replicas may share the store, how to find a run's
        owner: results for runs another replica holds are forwarded to it (`fleet_routing`)."""
        self.replica, self.owners = replica, owners

    def recovered(self) -> None:
        """Reconcile and catch-up are done: start applying results (then publish what was deferred)."""
        self._recovered.set()

    async def refresh_metrics(self) -> None:
        if self.link is None:
            return
        for queue in self.queues:
            try:
                ready, consumers = await self.link.depth(queue)
            except Exception as exc:
                log.warning("fleet queue depth unavailable", queue=queue, error=str(exc))
                continue
            self.m.ready.labels(queue).set(ready)
            self.m.consumers.labels(queue).set(consumers)

    async def shutdown(self, grace: float) -> None:
        """Runs in the fleet go on without the scheduler; their results wait in the broker."""
        self.due.clear()
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._shutting_down = True
        self.waits.shutdown()
        self.probe.cancel()
        if self.link is not None:
            await self.link.close()

    def close(self) -> None:
        self.journal.close()

    # ---- handing over
    def _start_task(self, run: Run, job: Job, resumed: bool, received_at: datetime | None) -> None:
        self._timers.pop(run.id, None)
        if self._shutting_down:
            return
        if resumed and self.waits.resume(run, job):
            return  # its work ended before the restart: it waits for the job's callback
        self._outstanding[run.id] = (run, job, received_at)
        self.m.outstanding.set(len(self._outstanding))
        name = self._name(run.id, run.attempt)
        if not self._recovering and resumed:  # taken over from a dead replica: its journal is not here,
            self._queue(run, job, resumed, copy=True)  # and a result may have gone to its queue — ask again
            return
        published_here = name in self.journal  # not: another replica's, claimed at this start
        if resumed and published_here and (run.state == RunState.running or _confirmed(name) in self.journal):
            return  # in the broker already: its work message, or its result
        if resumed and self._recovering:  # maybe in the broker: decided once older results are in
            self._deferred.append((run.id, run.attempt, run.state))
            return
        self._queue(run, job, resumed)

    def _queue(self, run: Run, job: Job, resumed: bool, copy: bool = False) -> None:
        """Hand the attempt to the publisher; `copy`: it may be in the queue already (`fleet_copies`)."""
        name = self._name(run.id, run.attempt)
        mid = self.copies.name(run.id, name) if copy else name
        body = work_message(
            run, job, mid, resumed, f"{self.settings.effective_public_url}/api/v1/runs/{run.id}/callback",
            self.tokens.token(run.id),
        )
        self.journal.mark(name)  # may be in the broker from now on
        self._to_publish.append((run.id, name, run.attempt, body, mid))
        self._wake.set()

    def _in_flight(self, run_id: str, attempt: int) -> bool:
        entry = self._outstanding.get(run_id)
        return entry is not None and entry[0].attempt == attempt

    async def _publish_loop(self) -> None:
        if self._to_publish:
            self._wake.set()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._to_publish:
                await self._publish_batch(self._to_publish[:PUBLISH_BATCH])

    async def _publish_batch(self, batch: list[tuple[str, str, int, bytes, str]]) -> None:
        index = {mid: (rid, name, n) for rid, name, n, _, mid in batch if self._in_flight(rid, n)}
        confirmed: set[str] = set()

        def on_confirmed(mid: str) -> None:  # journalled as each confirm comes, not per batch
            confirmed.add(mid)
            rid, name, n = index[mid]
            if self._in_flight(rid, n):  # not when its outcome came back already
                self.journal.mark(_confirmed(name))

        live = [(mid, body) for _, _, _, body, mid in batch if mid in index]
        try:
            if live:
                await self.link.publish(self.queues[0], live, on_confirmed)
        except BaseException:  # the unconfirmed are kept, published again when the loop restarts
            self._to_publish = [e for e in self._to_publish if e[4] not in confirmed]
            raise
        del self._to_publish[: len(batch)]
        self.m.published.inc(len(live))

    def forget(self, run_id: str, attempts: int = 1) -> None:
        names = [self._name(run_id, n) for n in range(1, attempts + 1)]
        self.journal.forget([*names, *(_confirmed(n) for n in names)])

    async def cancel(self, run: Run, reason: str) -> bool:
        """A run in the fleet is recorded cancelled here at once (by the caller: False is returned)
        and its attempt's cancel is put on the cancels stream, which every runner reads: the one
        executing it stops it (its outcome, `cancelled`, is then ignored here: the run ended), and
        a runner that takes its work message later acknowledges it without running it."""
        if self.due.remove(run.id) is not None:
            return False
        timer = self._timers.pop(run.id, None)
        if timer is not None:
            timer.cancel()
            return False
        self._callbacks.pop(run.id, None)
        if self.waits.cancel(run.id):
            return False  # its work had ended: nothing runs on a runner
        if self._outstanding.pop(run.id, None) is not None:
            self.m.outstanding.set(len(self._outstanding))
            attempts = run.attempt
            self.committer.after_commit(lambda: self.forget(run.id, attempts))
            await self._send_cancel(run, reason)
        return False

    async def _send_cancel(self, run: Run, reason: str) -> None:
        """Put a cancel of the run's attempt (and of its copy, if any) on the cancels stream."""
        names = [self._name(run.id, run.attempt), *self.copies.names(run.id)]
        self.copies.drop(run.id)
        await self._send_cancels([(run, name) for name in names], reason)

    async def _send_cancels(self, cancels: list[tuple[Run, str]], reason: str) -> None:
        messages = [
            (f"{name}:cancel", json.dumps(
                {"v": 1, "name": name, "run_id": run.id, "attempt": run.attempt, "reason": reason}).encode())
            for run, name in cancels
        ]
        try:
            await self.link.publish(self.link.cancels, messages)
            self.m.cancels.inc(len(messages))
        except ConnectionError as exc:  # recorded cancelled all the same; the runner's result is ignored
            runs = sorted({run.id for run, _ in cancels})
            log.warning(
                "fleet: a cancel did not reach the runners", runs=runs[:10], count=len(runs), error=str(exc)
            )

    async def _cancel_losers(self) -> None:
        """Cancel the other message of each attempt whose copy just reported first (normally still
        queued, or never in the queue at all): a runner that takes it acknowledges it unrun."""
        losers, self._losers = self._losers, []
        log.info("fleet: the other message of attempts published twice cancelled", count=len(losers),
                 messages=[name for _, name in losers[:10]])
        await self._send_cancels(losers, "another copy of this attempt runs")

    # ---- results
    async def _results_loop(self) -> None:
        await self._recovered.wait()
        queue = self.queues[1]
        backlog, _ = await self.link.depth(queue)
        inbox: asyncio.Queue[Any] = asyncio.Queue()
        consumers = {asyncio.ensure_future(self.link.consume(queue, RESULTS_PREFETCH, inbox.put_nowait))}
        if self.owners is not None and self.replica is not None:  # results forwarded to this replica
            mine = personal_queue(queue, self.replica)
            consumers.add(asyncio.ensure_future(self.link.consume(mine, RESULTS_PREFETCH, inbox.put_nowait)))
        seen = 0
        try:
            if backlog == 0:
                await self._after_backlog()
            while True:
                if inbox.empty():
                    get = asyncio.ensure_future(inbox.get())
                    await asyncio.wait({get, *consumers}, return_when=asyncio.FIRST_COMPLETED)
                    if not get.done():
                        get.cancel()
                        for c in consumers:
                            if c.done():
                                await c  # raises: the connection is gone
                        return
                    batch = [get.result()]
                else:
                    batch = []
                while not inbox.empty() and len(batch) < RESULTS_PREFETCH:
                    batch.append(inbox.get_nowait())
                strays = [msg for d in batch if (msg := self._apply(d.body)) is not None]
                await self.committer.flush()
                if strays:
                    await self._route(strays)
                if self._losers:
                    await self._cancel_losers()
                last: dict[int, Any] = {}  # one multiple-ack per channel (two queues, two channels)
                for d in batch:
                    last[id(getattr(d.message, "channel", None))] = d
                for d in last.values():
                    await d.message.ack(multiple=True)
                seen += len(batch)
                if self._recovering and seen >= backlog:
                    await self._after_backlog()
        finally:
            for c in consumers:
                c.cancel()

    async def _route(self, strays: list[dict[str, Any]]) -> None:
        if self.owners is None or self.replica is None:
            self.m.ignored.inc(len(strays))
            # a redelivered result of a run that ended already, normally; logged to tell it from a
            # result lost for a run still in flight (a run left `running` after a restart)
            log.info(
                "fleet: results for runs not in flight here ignored",
                count=len(strays),
                runs=[f"{m.get('run_id')}/{m.get('attempt')}/{m.get('kind')}" for m in strays[:20]],
            )
            return
        ignored = await route(strays, self.replica, self.owners, self.link.publish, self.queues[1])
        self.m.ignored.inc(ignored)
        self.m.forwarded.inc(len(strays) - ignored)

    async def _after_backlog(self) -> None:
        """The results from before a restart are applied: the attempts still in doubt are published
        again once the probe came back (`fleet_copies`); with none in doubt, nothing waits."""
        if not self._deferred:
            self._release_deferred()
        elif not self.probe.sent:
            await self.probe.send(self.link.publish, self.queues[0], self.replica)
            log.info("fleet: probe sent behind the attempts in doubt", count=len(self._deferred))

    def _release_deferred(self) -> None:
        """The results from before a restart are applied: publish the runs recovered as never
        confirmed in the broker that are still waiting — and the running ones this replica never
        published (claimed at its start from a dead replica) that no result has moved since."""
        self._recovering = False
        deferred, self._deferred = self._deferred, []
        again = 0
        for rid, attempt, state in deferred:
            entry = self._outstanding.get(rid)
            if entry is not None and entry[0].attempt == attempt and entry[0].state == state:
                self._queue(entry[0], entry[1], resumed=True, copy=True)  # no result of it came meanwhile
                again += 1
        if deferred:
            log.info("fleet: attempts in doubt after a restart settled", in_doubt=len(deferred), again=again)

    def _apply(self, body: bytes) -> dict[str, Any] | None:
        """Apply a result to its run in flight here; a result for a run not in flight here is
        returned (`_route` decides: another replica's, or nothing to do)."""
        try:
            msg = json.loads(body)
            if msg.get("kind") == "probe":
                return self._probe_back(msg)
            rid, attempt, kind = str(msg["run_id"]), int(msg["attempt"]), str(msg["kind"])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.error("fleet: malformed result dropped", error=str(exc))
            return None
        entry = self._outstanding.get(rid)
        if entry is None or entry[0].attempt != attempt:
            return dict(msg)
        run, job, received_at = entry
        applied, loser = self.copies.decide(rid, self._name(rid, attempt), msg.get("name"))
        if loser is not None:
            self._losers.append((run, loser))
        if not applied:  # from the copy that lost: it is being cancelled
            self.m.ignored.inc()
            return None
        self.m.results.labels(kind).inc()
        status = StatusBlock.model_validate(msg["status"]) if msg.get("status") else None
        if kind == "started":
            self._started(run, job, msg, status, received_at)
        elif kind == "report":
            if msg.get("target_status") is not None:
                run.target_status = dict(msg["target_status"])
            self.committer.update(run)
            self.host.publish(run, status)
        elif kind == "outcome":
            self._outcome(run, job, msg, status)
        return None

    def _probe_back(self, msg: dict[str, Any]) -> dict[str, Any] | None:
        """A runner took a probe: this replica's (copies follow), another's (forwarded), or one of
        an earlier start (nothing to do)."""
        if msg.get("name") == self.probe.name:
            log.info("fleet: probe answered", runner=msg.get("runner"))
            self.probe.answered()
            return None
        return dict(msg) if msg.get("replica") not in (None, self.replica) else None

    def _started(
        self,
        run: Run,
        job: Job,
        msg: dict[str, Any],
        status: StatusBlock | None,
        received_at: datetime | None,
    ) -> None:
        if run.state == RunState.running:
            return  # a redelivery taken over by another runner: still the same attempt
        started = msg.get("started_at")
        run.started_at = datetime.fromisoformat(started) if started else utcnow()
        run.target_ref = msg.get("ref")
        if received_at is not None:
            self.metrics.dispatch_seconds.observe((utcnow() - received_at).total_seconds())
        ref = f" as {run.target_ref}" if run.target_ref else ""
        where = f" by runner {msg.get('runner')}" if msg.get("runner") else ""
        self.host.transition(run, RunState.running, f"started on {job.target.type}{ref}{where}", status)

    def _outcome(self, run: Run, job: Job, msg: dict[str, Any], status: StatusBlock | None) -> None:
        self._outstanding.pop(run.id, None)
        self.copies.drop(run.id)
        self.m.outstanding.set(len(self._outstanding))
        if msg.get("log"):
            self.logs.write(run.id, base64.b64decode(msg["log"]), job.target.__dict__.get("log_max_bytes"))
        if run.started_at is None and msg.get("started_at"):
            run.started_at = datetime.fromisoformat(msg["started_at"])
        o = msg.get("outcome") or {}
        error = RunError.model_validate(o["error"]) if o.get("error") else None
        outcome = Outcome(
            RunState(o.get("state", RunState.failed.value)),
            exit_code=o.get("exit_code"),
            http_status=o.get("http_status"),
            error=error,
            retryable=bool(o.get("retryable", True)),
            status=status,
            target_status=dict(o.get("target_status") or {}),
        )
        if self.waits.awaits(run, job, outcome):
            return  # `callback.wait`: the run ends when the job calls back
        self._finish(run, job, outcome)

    def _finish(self, run: Run, job: Job, outcome: Outcome) -> None:
        self._callbacks.pop(run.id, None)  # a callback belongs to one attempt
        super()._finish(run, job, outcome)

    async def deliver_callback(self, run: Run, ok: bool, message: str | None, data: dict[str, Any]) -> None:
        """A job called back (recorded on the run; a run waiting for it ends). `ok: false` while a
        runner still executes the attempt fails the run now, and the runner is told to stop it
        (as a cancel), as in one process."""
        await super().deliver_callback(run, ok, message, data)
        if ok or (entry := self._outstanding.pop(run.id, None)) is None:
            return
        self.m.outstanding.set(len(self._outstanding))
        message = message or "the job reported failure"
        await self._send_cancel(run, message)
        failed = Outcome(RunState.failed, error=RunError(message=message, reason="CallbackFailed"))
        self._finish(run, entry[1], failed)


__all__ = ["FleetAttempts", "broker_url", "work_message"]
