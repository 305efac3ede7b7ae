"""The `spot` target: a Docker container on an EC2 spot instance per run attempt (seed 002).

* At the run's time: `RequestSpotInstances` with `ClientToken` = the attempt's target name (the
  run id; `-2`, `-3`... for the repeats of one attempt, since a token names one request), tagged
  `jobwire:run`, `jobwire:target`, `jobwire:job`, `jobwire:owner`; the user data runs the image with
  Docker, passing the env, `JOBWIRE_CALLBACK_URL` and `JOBWIRE_CALLBACK_TOKEN` (`userdata`).
* A pending request is looked at again on timers (`poll_min` doubling up to `poll_max`), not on a
  fixed poll. Cancelled / closed / failed, or open with price-too-low / capacity-not-available →
  cancelled and requested again (the next instance type, if several), at most `max_requests`
  times, the reason in the run's `target_status.history`. Fulfilled → the instance is tagged and
  the run is running with the instance id as its `target_ref`.
* The container calls back (`ctx.callback()`): FinishedOK / FinishedNOK → the instance is
  terminated → TerminatedOK (succeeded) / Terminated (failed). A cancel or the job's timeout
  terminates it too. An interruption notice (`marked-for-termination`, `instance-terminated-by-
  price`, ...; checked every `watch_interval`) → terminated, outcome `interrupted`.
* Seed 002's states are `target_status.state`, each change appended to `target_status.history`
  with its time and reason, and published (`ctx.report`).
* `survives_restart`: after a restart the attempt finds its request by its tags and adopts it.
* A reconciler (`reconcile`) terminates instances and cancels requests tagged with this jobwire's
  owner tag whose attempt is not in progress here in two sweeps in a row: no instance outlives
  its run, even across a kill -9.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import importlib
import sys
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog
from prometheus_client import CollectorRegistry

from jobwire.config import Settings
from jobwire.model import Job, RunError, RunState, StatusBlock, utcnow
from jobwire.model import SpotTarget as SpotSpec
from jobwire.params import ParamError, param_env, render
from jobwire.plug import missing_text
from jobwire.targets.base import CallbackResult, Outcome, RunContext, Target
from jobwire.targets.spot.settings import SpotSettings
from jobwire.targets.spot.userdata import MAX_USER_DATA, script

if TYPE_CHECKING:
    from jobwire.targets.spot.ec2 import Ec2

__all__ = ["SpotSettings", "SpotTarget"]

log = structlog.get_logger(__name__)

TAG_RUN = "jobwire:run"
TAG_TARGET = "jobwire:target"
TAG_JOB = "jobwire:job"
TAG_OWNER = "jobwire:owner"

REQUEST_AGAIN = frozenset({"capacity-not-available", "capacity-oversubscribed", "price-too-low"})
"""Status codes of an open request that will not be fulfilled soon: cancel it, request again."""
HOPELESS = frozenset({"bad-parameters", "constraint-not-fulfillable"})
INTERRUPTION = frozenset(
    {
        "marked-for-termination",
        "marked-for-stop",
        "instance-terminated-by-price",
        "instance-terminated-no-capacity",
        "instance-terminated-capacity-oversubscribed",
        "instance-terminated-launch-group-constraint",
        "instance-terminated-by-service",
        "instance-stopped-by-price",
        "instance-stopped-no-capacity",
        "instance-stopped-capacity-oversubscribed",
    }
)
LIVE_INSTANCE = ["pending", "running", "stopping", "stopped"]

Ec2Factory = Callable[[str | None, str | None], "Ec2"]


def _failed(reason: str, message: str, retryable: bool, **kw: Any) -> Outcome:
    return Outcome(
        state=RunState.failed, retryable=retryable, error=RunError(message=message, reason=reason), **kw
    )


def _code(req: dict[str, Any]) -> str:
    return str((req.get("Status") or {}).get("Code") or "")


def _recorded_callback(previous: dict[str, Any]) -> dict[str, Any] | None:
    """The callback an attempt's container made, as recorded on the run before a restart: the
    engine's record (`callback`), else — FinishedOK / FinishedNOK recorded without it — that state."""
    called = previous.get("callback")
    if isinstance(called, dict):
        return called
    state = previous.get("state")
    if state in ("FinishedOK", "FinishedNOK"):
        history = previous.get("history") or [{}]
        return {"ok": state == "FinishedOK", "message": history[-1].get("reason"), "data": {}}
    return None


def _why(req: dict[str, Any]) -> str:
    status = req.get("Status") or {}
    text = f"{req.get('State')}/{status.get('Code') or '?'}"
    return f"{text}: {status['Message']}" if status.get("Message") else text


@dataclass
class _Attempt:
    ctx: RunContext
    ec2: Ec2
    status: dict[str, Any]
    request_id: str | None = None
    instance_id: str | None = None
    terminating: asyncio.Task[None] | None = None
    requesting: bool = False
    """A RequestSpotInstances was sent and its answer not read yet."""
    history: list[dict[str, Any]] = field(default_factory=list)
    called_back: dict[str, Any] | None = None
    """Resumed after a restart: the callback this attempt's container made before it (recorded on
    the run) — when the recorded status is this attempt's (`mine`) — and the instance it ran on."""
    previous_instance: str | None = None


class SpotTarget(Target):
    kind = "spot"
    survives_restart = True

    def __init__(self, settings: Settings, spot: SpotSettings | None = None) -> None:
        super().__init__(settings)
        self.spot = spot or SpotSettings()
        self.owner = self.spot.owner or (
            "jw-" + hashlib.sha256(str(settings.data_dir.resolve()).encode()).hexdigest()[:16]
        )
        self.ec2_factory: Ec2Factory | None = None
        """Makes the EC2 client for a region and endpoint (tests wrap it with a fault-injecting double)."""
        self._clients: dict[tuple[str | None, str | None], Ec2] = {}
        self._active: dict[str, _Attempt] = {}
        self._amis: dict[tuple[str | None, str | None, str], str] = {}
        self._suspects: set[str] = set()
        self._jobs: Callable[[], Iterable[Job]] | None = None
        self._reconcile_task: asyncio.Task[None] | None = None
        self._reconcile_error: str | None = None
        self.marker = settings.data_dir / "spot-instances"
        """Exists while instances this jobwire requested may be live: the reconciler keeps looking
        for them even when no spot job is defined any more (a job removed while jobwire was down)."""
        self._marked = False
        self.calls_sent: dict[str, float] = {}
        """Loop time at which the latest request / terminate call of each target name was sent (bench)."""

    # ------------------------------------------------------------------ wiring
    def bind(
        self,
        run_exists: Callable[[str], Awaitable[bool]] | None = None,
        jobs: Callable[[], Iterable[Job]] | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        if jobs is not None:
            self._jobs = jobs

    async def start(self) -> None:
        if self._reconcile_task is None and self.spot.reconcile_interval.total_seconds() > 0:
            self._reconcile_task = asyncio.create_task(self._reconcile_loop(), name="jobwire-spot-reconcile")

    async def close(self) -> None:
        if self._reconcile_task is not None:
            self._reconcile_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconcile_task
            self._reconcile_task = None
        clients, self._clients = self._clients, {}
        for client in clients.values():
            with contextlib.suppress(Exception):
                await client.close()

    def health(self) -> dict[str, str | None]:
        return {"jobwire-spot-reconcile": self._reconcile_error} if self._reconcile_task else {}

    def _client(self, region: str | None, endpoint: str | None) -> Ec2:
        key = (region, endpoint)
        client = self._clients.get(key)
        if client is None:
            if self.ec2_factory is not None:
                client = self.ec2_factory(region, endpoint)
            else:
                from jobwire.targets.spot.ec2 import Ec2  # the AWS library, only when used

                client = Ec2(region, endpoint)
            self._clients[key] = client
        return client

    def _where(self, spec: SpotSpec | None) -> tuple[str | None, str | None]:
        region = (spec.region if spec else None) or self.spot.region
        endpoint = (spec.endpoint_url if spec else None) or self.spot.endpoint_url
        return region, endpoint

    # ------------------------------------------------------------------ states
    async def _record(self, att: _Attempt, state: str, reason: str | None = None) -> None:
        """Seed 002's state: `target_status.state`, appended to its history, published."""
        entry = {"state": state, "at": utcnow().isoformat(), "reason": reason}
        history = [*att.status.get("history", []), entry]
        att.status = {**att.status, "state": state, "history": history}
        log.info("spot run state", run_id=att.ctx.run.id, state=state, reason=reason)
        running = state == "Running"
        block = StatusBlock(active=1 if running else 0, startTime=att.ctx.run.started_at)
        await att.ctx.report(block, target_status=dict(att.status))

    def _update(self, att: _Attempt, **fields: Any) -> None:
        att.status = {**att.status, **{k: v for k, v in fields.items() if v is not None}}

    # ------------------------------------------------------------------ execute
    async def execute(self, ctx: RunContext) -> Outcome:
        spec = ctx.job.target
        if not isinstance(spec, SpotSpec):
            return _failed("WrongTarget", f"job {ctx.job.name} has no spot target", retryable=False)
        name = ctx.target_name
        try:
            if self.ec2_factory is None and "jobwire.targets.spot.ec2" not in sys.modules:
                # the AWS library, only when used; its import takes a while: not in the event loop
                await asyncio.to_thread(importlib.import_module, "jobwire.targets.spot.ec2")
            ec2 = self._client(*self._where(spec))
        except ModuleNotFoundError as exc:
            return _failed("PlugMissing", missing_text("the spot target", str(exc.name), "aws"), False)
        previous = ctx.run.target_status if ctx.resumed else {}
        att = _Attempt(ctx, ec2, status={k: v for k, v in previous.items() if k != "callback"})
        if ctx.resumed and previous.get("target_name") == name and previous.get("instance_id"):
            # this attempt's own status (after a retry the run keeps the previous attempt's until
            # the new one reports)
            att.called_back = _recorded_callback(previous)
            att.previous_instance = str(previous["instance_id"])
        self._update(att, target_name=name)
        self._active[name] = att
        self._suspects.discard(name)
        try:
            outcome = await self._execute(att, spec)
        except asyncio.CancelledError:
            # kept for `cancel`, which the engine calls after a timeout has cancelled the task
            # (at shutdown the instance is left for adoption: the process is going anyway)
            raise
        except BaseException:
            self._active.pop(name, None)
            raise
        if self._active.get(name) is att:
            del self._active[name]
        return outcome

    async def _execute(self, att: _Attempt, spec: SpotSpec) -> Outcome:
        from jobwire.targets.spot.ec2 import AwsError, error_code

        ctx = att.ctx
        try:
            warm = getattr(att.ec2, "warm", None)
            if warm is not None:  # the first run in this region: its service model read in a thread
                await warm()
            launch, types = await self._launch_spec(att, spec)
        except ParamError as exc:
            return _failed("InvalidParameters", str(exc), retryable=False)
        except ValueError as exc:
            return _failed("InvalidSpotTarget", str(exc), retryable=False)
        except AwsError as exc:
            return _failed(error_code(exc), f"cannot resolve the AMI: {exc}", retryable=True)
        if "state" not in att.status:
            await self._record(
                att, "Scheduled", f"due at {(ctx.run.scheduled_at or ctx.run.created_at).isoformat()}"
            )
        try:
            req = await self._adopt(att) if ctx.resumed else None
            called = att.called_back
            if called is not None:
                # the container called back before the restart (and will not again): finish from
                # that — terminate its instance — and never request again
                log.info("spot callback recorded before the restart; finishing the run", run_id=ctx.run.id)
                att.instance_id = att.instance_id or att.previous_instance
                result = CallbackResult(
                    ok=bool(called.get("ok")), message=called.get("message"), data=called.get("data") or {}
                )
                return await self._finish_called_back(att, result, called)
            if att.instance_id is None:
                fulfilled = await self._request_until_fulfilled(att, spec, launch, types, req)
                if isinstance(fulfilled, Outcome):
                    return fulfilled
            return await self._follow(att)
        except AwsError as exc:
            log.warning("spot call failed", run_id=ctx.run.id, error=str(exc)[:300])
            await self._terminate(att, "Terminated", f"EC2 call failed: {error_code(exc)}")
            return _failed(error_code(exc), str(exc)[:500], retryable=True, target_status=dict(att.status))

    async def _launch_spec(self, att: _Attempt, spec: SpotSpec) -> tuple[dict[str, Any], list[str]]:
        ctx = att.ctx
        env = {k: str(v) for k, v in render(dict(spec.env), ctx.params).items()}
        env.update(param_env(ctx.params))
        env.update(
            JOBWIRE_RUN_ID=ctx.run.id,
            JOBWIRE_JOB=ctx.job.name,
            JOBWIRE_ATTEMPT=str(ctx.run.attempt),
            JOBWIRE_CALLBACK_URL=ctx.callback_url or "",
            JOBWIRE_CALLBACK_TOKEN=ctx.callback_token,
        )
        text = script(spec.image, spec.command, env)
        if len(text.encode()) > MAX_USER_DATA * 3 // 4:
            raise ValueError(f"the user data is {len(text.encode())} bytes; EC2 takes at most ~12 KiB here")
        types = spec.instance_types or self.spot.instance_types
        if not types:
            raise ValueError("no instance type (set instance_types or JOBWIRE_SPOT_INSTANCE_TYPES)")
        launch: dict[str, Any] = {
            "ImageId": await self._ami(att.ec2, spec),
            "UserData": base64.b64encode(text.encode()).decode("ascii"),
        }
        subnet = spec.subnet_id or self.spot.subnet_id
        groups = spec.security_group_ids or self.spot.security_group_ids
        key = spec.key_name or self.spot.key_name
        profile = spec.instance_profile or self.spot.instance_profile
        if subnet:
            launch["SubnetId"] = subnet
        if groups:
            launch["SecurityGroupIds"] = list(groups)
        if key:
            launch["KeyName"] = key
        if profile:
            launch["IamInstanceProfile"] = (
                {"Arn": profile} if profile.startswith("arn:") else {"Name": profile}
            )
        return launch, list(types)

    async def _ami(self, ec2: Ec2, spec: SpotSpec) -> str:
        ami = spec.ami or (None if spec.ami_parameter else self.spot.ami)
        if ami:
            return ami
        parameter = spec.ami_parameter or self.spot.ami_parameter
        if not parameter:
            raise ValueError("no AMI (set ami or ami_parameter, or JOBWIRE_SPOT_AMI)")
        key = (ec2.region, ec2.endpoint_url, parameter)
        if key not in self._amis:
            self._amis[key] = await ec2.ssm_parameter(parameter)
        return self._amis[key]

    def _tags(self, ctx: RunContext) -> dict[str, str]:
        return {
            TAG_RUN: ctx.run.id,
            TAG_TARGET: ctx.target_name,
            TAG_JOB: ctx.job.name,
            TAG_OWNER: self.owner,
        }

    async def _adopt(self, att: _Attempt) -> dict[str, Any] | None:
        """After a restart: this attempt's newest request, found by its tags (the ClientToken's
        name), with the instance it got; None when it never reached EC2."""
        found = await att.ec2.describe_requests(tags={TAG_TARGET: att.ctx.target_name, TAG_OWNER: self.owner})
        if not found:
            return None
        found.sort(key=lambda r: str(r.get("CreateTime") or ""))
        req = found[-1]
        att.request_id = str(req["SpotInstanceRequestId"])
        itype = (req.get("LaunchSpecification") or {}).get("InstanceType")
        self._update(
            att,
            spot_request_id=att.request_id,
            requests=max(len(found), att.status.get("requests", 0)),
            # the adopted request's own (unrecorded when its answer never came back before the restart)
            instance_type=str(itype) if itype else None,
        )
        if req.get("InstanceId") and req.get("State") == "active":
            att.instance_id = str(req["InstanceId"])
        log.info("adopting spot request after restart", run_id=att.ctx.run.id, request=att.request_id)
        return req

    async def _request_until_fulfilled(
        self,
        att: _Attempt,
        spec: SpotSpec,
        launch: dict[str, Any],
        types: list[str],
        req: dict[str, Any] | None,
    ) -> Outcome | None:
        ctx = att.ctx
        ec2 = att.ec2
        limit = spec.max_requests or self.spot.max_requests
        n = int(att.status.get("requests", 0))
        why: str | None = None
        loop = asyncio.get_running_loop()
        delay = self.spot.poll_min.total_seconds()
        while True:
            if req is None:
                if n >= limit:
                    await self._record(att, "Terminated", f"no instance after {n} spot request(s): {why}")
                    return _failed(
                        "SpotNotFulfilled",
                        f"no spot instance after {n} request(s); last: {why}",
                        retryable=True,
                        target_status=dict(att.status),
                    )
                if not self._marked:
                    self.marker.touch()
                    self._marked = True
                itype = types[n % len(types)]
                token = ctx.target_name if n == 0 else f"{ctx.target_name}-{n + 1}"
                self.calls_sent[ctx.target_name] = loop.time()
                att.requesting = True
                req = await ec2.request_spot(
                    token,
                    {**launch, "InstanceType": itype},
                    self._tags(ctx),
                    spec.max_price or self.spot.max_price,
                )
                att.requesting = False
                n += 1
                att.request_id = str(req["SpotInstanceRequestId"])
                self._update(att, spot_request_id=att.request_id, instance_type=itype, requests=n)
                text = f"spot request {att.request_id} for {itype}"
                await self._record(att, "Requested", f"{text} (again after {why})" if why else text)
                delay = self.spot.poll_min.total_seconds()
            state, code, iid = req.get("State"), _code(req), req.get("InstanceId")
            if iid and (state == "active" or code == "request-canceled-and-instance-running"):
                att.instance_id = str(iid)
                return None
            if code in HOPELESS:
                await self._terminate(att, "Terminated", f"spot request {_why(req)}")
                return _failed(
                    "SpotRequestRefused", _why(req), retryable=False, target_status=dict(att.status)
                )
            if state in ("cancelled", "closed", "failed") or (state == "open" and code in REQUEST_AGAIN):
                why = _why(req)
                log.info("spot request not fulfilled, requesting again", run_id=ctx.run.id, why=why)
                if state == "open":
                    await ec2.cancel_requests([str(req["SpotInstanceRequestId"])])
                if iid:
                    await ec2.terminate([str(iid)])
                req = None
                continue
            # open and pending: look again on a timer, sooner at first
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.spot.poll_max.total_seconds())
            again = await ec2.describe_requests(ids=[str(req["SpotInstanceRequestId"])])
            if again:
                if _code(again[0]) != code or again[0].get("State") != state:
                    log.debug("spot request changed", run_id=ctx.run.id, status=_why(again[0]))
                req = again[0]

    async def _follow(self, att: _Attempt) -> Outcome:
        ctx = att.ctx
        iid = att.instance_id
        assert iid is not None
        if ctx.run.state != RunState.running or ctx.run.target_ref != iid:
            try:
                await att.ec2.create_tags([iid], self._tags(ctx))
            except Exception as exc:  # the request keeps its tags: the reconciler still finds it
                log.warning(
                    "cannot tag the spot instance", run_id=ctx.run.id, instance=iid, error=str(exc)[:200]
                )
            self._update(att, instance_id=iid)
            if att.status.get("state") != "Running":
                await self._record(att, "Running", f"instance {iid} ({att.status.get('instance_type', '?')})")
            ctx.run.target_status = dict(att.status)
            await ctx.started(iid, StatusBlock(active=1, startTime=utcnow()))
        waiting = asyncio.ensure_future(ctx.callback())
        watch = self.spot.watch_interval.total_seconds()
        try:
            while True:
                done, _ = await asyncio.wait({waiting}, timeout=watch)
                if done:
                    break
                ended = await self._interrupted(att)
                if ended is not None:
                    return ended
        finally:
            if not waiting.done():
                waiting.cancel()
        result: CallbackResult = waiting.result()
        return await self._finish_called_back(att, result, ctx.run.target_status.get("callback"))

    async def _finish_called_back(
        self, att: _Attempt, result: CallbackResult, recorded: dict[str, Any] | None
    ) -> Outcome:
        """FinishedOK / FinishedNOK, the instance terminated, the outcome. The callback stays in
        the run's `target_status` (for `after` triggers, which pass on its `data`, and for a restart)."""
        message = result.message or ("the job reported success" if result.ok else "the job reported failure")
        self._update(
            att, callback=recorded or {"ok": result.ok, "message": result.message, "data": result.data}
        )
        finished = "FinishedOK" if result.ok else "FinishedNOK"
        if att.status.get("state") != finished:
            await self._record(att, finished, message)
        await self._terminate(att, "TerminatedOK" if result.ok else "Terminated", f"callback: {message}")
        if result.ok:
            return Outcome(
                state=RunState.succeeded, status=StatusBlock(succeeded=1), target_status=dict(att.status)
            )
        return _failed(
            "CallbackFailed",
            message,
            retryable=True,
            status=StatusBlock(failed=1),
            target_status=dict(att.status),
        )

    async def _interrupted(self, att: _Attempt) -> Outcome | None:
        """An interruption notice or an instance gone: the outcome, else None."""
        reqs = await att.ec2.describe_requests(ids=[att.request_id]) if att.request_id else []
        code = _code(reqs[0]) if reqs else ""
        if code in INTERRUPTION:
            why = f"spot interruption: {_why(reqs[0])}"
            await self._terminate(att, "Terminated", why)
            return Outcome(
                state=RunState.interrupted,
                retryable=True,
                error=RunError(message=why, reason="SpotInterruption", code=code),
                target_status=dict(att.status),
            )
        assert att.instance_id is not None
        found = await att.ec2.describe_instances(ids=[att.instance_id])
        state = str((found[0].get("State") or {}).get("Name")) if found else "gone"
        if state in ("shutting-down", "terminated", "stopping", "stopped", "gone"):
            reason = str((found[0].get("StateReason") or {}).get("Message") or "") if found else ""
            why = f"instance {att.instance_id} is {state} without a callback" + (
                f": {reason}" if reason else ""
            )
            await self._terminate(att, "Terminated", why)
            return _failed("InstanceTerminated", why, retryable=True, target_status=dict(att.status))
        return None

    # ------------------------------------------------------------------ terminate, cancel
    async def _terminate(self, att: _Attempt, state: str, reason: str) -> None:
        """Terminate the attempt's instance and cancel its request, once, whoever asks first (the
        attempt, a cancel, a failing callback); survives the cancellation of the asker."""
        if att.terminating is None:
            att.terminating = asyncio.create_task(self._do_terminate(att, state, reason))
        await asyncio.shield(att.terminating)

    async def _do_terminate(self, att: _Attempt, state: str, reason: str) -> None:
        name = att.ctx.target_name
        if att.instance_id is None and (att.request_id or att.requesting):
            # fulfilled since it was last looked at, or a request whose answer never came back
            with contextlib.suppress(Exception):
                if att.request_id:
                    found = await att.ec2.describe_requests(ids=[att.request_id])
                else:
                    tags = {TAG_TARGET: name, TAG_OWNER: self.owner}
                    found = [
                        r
                        for r in await att.ec2.describe_requests(tags=tags)
                        if r.get("State") in ("open", "active")
                    ]
                    att.request_id = str(found[-1]["SpotInstanceRequestId"]) if found else None
                if found and found[-1].get("InstanceId"):
                    att.instance_id = str(found[-1]["InstanceId"])
        if att.instance_id:
            self.calls_sent[name] = asyncio.get_running_loop().time()
            await att.ec2.terminate([att.instance_id])
            log.info("spot instance terminated", run_id=att.ctx.run.id, instance=att.instance_id)
        if att.request_id:
            with contextlib.suppress(Exception):
                await att.ec2.cancel_requests([att.request_id])
        if att.status.get("state") != state:
            await self._record(att, state, reason)

    async def cancel(self, ctx: RunContext) -> None:
        att = self._active.get(ctx.target_name)
        if att is None:
            return
        last = att.status.get("state")
        if last not in ("FinishedOK", "FinishedNOK") and att.terminating is None:
            callback = ctx.run.target_status.get("callback") or {}
            if callback:  # a failing callback stops the attempt through cancel
                self._update(att, callback=callback)
                await self._record(
                    att, "FinishedOK" if callback.get("ok") else "FinishedNOK", callback.get("message")
                )
        try:
            await self._terminate(att, "Terminated", "the run was cancelled, timed out or called back not OK")
        finally:
            if self._active.get(ctx.target_name) is att and att.terminating and att.terminating.done():
                del self._active[ctx.target_name]

    # ------------------------------------------------------------------ reconcile
    def _regions(self) -> set[tuple[str | None, str | None]]:
        where = {self._where(None)} | set(self._clients)
        for job in self._jobs() if self._jobs is not None else ():
            if isinstance(job.target, SpotSpec):
                where.add(self._where(job.target))
        return where

    def _spot_jobs(self) -> bool:
        return any(isinstance(j.target, SpotSpec) for j in (self._jobs() if self._jobs is not None else ()))

    def _has_spot_jobs(self) -> bool:
        return bool(self._active) or self._spot_jobs() or self.marker.exists()

    async def reconcile(self) -> list[str]:
        """One pass: instances and open/active requests of this owner whose attempt is not in
        progress here — seen so twice in a row — are terminated / cancelled. Returns what it ended."""
        ended: list[str] = []
        seen: set[str] = set()
        for region, endpoint in self._regions():
            ec2 = self._client(region, endpoint)
            owner = {TAG_OWNER: self.owner}
            instances = await ec2.describe_instances(tags=owner, states=LIVE_INSTANCE)
            requests = [
                r for r in await ec2.describe_requests(tags=owner) if r.get("State") in ("open", "active")
            ]
            doomed_instances: list[str] = []
            doomed_requests: list[str] = []
            for obj, ident, doomed in (
                *((i, str(i["InstanceId"]), doomed_instances) for i in instances),
                *((r, str(r["SpotInstanceRequestId"]), doomed_requests) for r in requests),
            ):
                tags = {t["Key"]: t["Value"] for t in obj.get("Tags") or []}
                name = tags.get(TAG_TARGET, "")
                if name in self._active:
                    continue
                seen.add(name)
                if name in self._suspects:
                    doomed.append(ident)
                    if obj is not None and doomed is doomed_requests and obj.get("InstanceId"):
                        doomed_instances.append(str(obj["InstanceId"]))
            if doomed_instances:
                log.warning("terminating spot instances of runs not in progress", instances=doomed_instances)
                await ec2.terminate(sorted(set(doomed_instances)))
            if doomed_requests:
                await ec2.cancel_requests(doomed_requests)
            ended += sorted(set(doomed_instances)) + doomed_requests
        self._suspects = {s for s in seen if s not in self._active}
        if not seen and not self._active and not self._spot_jobs():
            self.marker.unlink(missing_ok=True)  # nothing of ours is left in EC2
            self._marked = False
        return ended

    async def _warm(self) -> None:
        """Open the clients of the regions spot jobs use before their first run needs them."""
        if not self._has_spot_jobs():
            return
        if self.ec2_factory is None:  # aiobotocore and aiohttp take a while to import: not in the loop
            await asyncio.to_thread(importlib.import_module, "jobwire.targets.spot.ec2")
        for region, endpoint in self._regions():
            client = self._client(region, endpoint)
            warm = getattr(client, "warm", None)
            if warm is not None:
                await warm()

    async def _reconcile_loop(self) -> None:
        interval = self.spot.reconcile_interval.total_seconds()
        await asyncio.sleep(min(interval, 1.0))  # the engine loads its jobs after the targets start
        while True:
            try:
                await self._warm()
            except Exception as exc:  # a client that cannot open now is opened by the first run
                log.info("spot client not opened ahead of time", error=str(exc)[:200])
            await asyncio.sleep(interval)  # first after the engine has resumed its runs
            if not self._has_spot_jobs():
                continue
            try:
                await self.reconcile()
                self._reconcile_error = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._reconcile_error = f"{type(exc).__name__}: {str(exc)[:200]}"
                log.warning("spot reconcile failed", error=self._reconcile_error)
