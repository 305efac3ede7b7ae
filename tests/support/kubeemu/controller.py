"""Job controller: reacts to Job/Pod store events (a work queue, no polling) and timers.

Status follows a 1.31+ kube-controller-manager: terminal conditions are preceded by an interim
``SuccessCriteriaMet`` / ``FailureTarget`` condition written in a separate status update.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime as dt
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import ApiError
from .resources import BY_PLURAL
from .store import Event, Obj, ObjKey, now_iso, obj_key

if TYPE_CHECKING:
    from .server import KubeEmulator

JOBS = BY_PLURAL["jobs"]
PODS = BY_PLURAL["pods"]
EVENTS = BY_PLURAL["events"]
TERMINAL_PHASES = ("Succeeded", "Failed")


@dataclass
class Tracking:
    succeeded: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    deadline_timer: asyncio.TimerHandle | None = None
    ttl_timer: asyncio.TimerHandle | None = None


def _parse(ts: str) -> dt.datetime:
    return dt.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)


def _cond(type_: str, reason: str, message: str) -> Obj:
    now = now_iso()
    return {
        "type": type_,
        "status": "True",
        "lastProbeTime": now,
        "lastTransitionTime": now,
        "reason": reason,
        "message": message,
    }


def _has(status: Obj, type_: str) -> Obj | None:
    for c in status.get("conditions") or []:
        if c.get("type") == type_ and c.get("status") == "True":
            cond: Obj = c
            return cond
    return None


def controller_uid(pod: Obj) -> tuple[str, str] | None:
    for ref in pod["metadata"].get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") == "Job":
            return ref.get("uid", ""), ref.get("name", "")
    return None


class JobController:
    def __init__(self, emu: KubeEmulator) -> None:
        self.emu = emu
        self.queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self.pending: set[tuple[str, str]] = set()
        self.tracking: dict[str, Tracking] = {}
        self.owned: dict[str, dict[ObjKey, Obj]] = {}
        """Pods by their controlling Job's uid (kept from store events): `reconcile` must not scan
        every pod in the namespace — with 1,000 Jobs that made the controller O(n²)."""
        self._owner_of: dict[ObjKey, str] = {}
        self.running = asyncio.Event()
        self.running.set()
        self.task: asyncio.Task[None] | None = None
        emu.store.listeners.append(self._on_event)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._worker())

    async def stop(self) -> None:
        for t in self.tracking.values():
            for h in (t.deadline_timer, t.ttl_timer):
                if h is not None:
                    h.cancel()
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    def pause(self) -> None:
        self.running.clear()

    def resume(self) -> None:
        self.running.set()

    # ------------------------------------------------------------------ queue
    def enqueue(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        if key not in self.pending:
            self.pending.add(key)
            self.queue.put_nowait(key)

    def _on_event(self, ev: Event) -> None:
        md = ev.obj["metadata"]
        if ev.plural == "jobs":
            if ev.type == "DELETED":
                t = self.tracking.pop(md["uid"], None)
                if t is not None:
                    for h in (t.deadline_timer, t.ttl_timer):
                        if h is not None:
                            h.cancel()
            else:
                self.enqueue(md.get("namespace", ""), md["name"])
        elif ev.plural == "pods":
            self._index(ev)
            owner = controller_uid(ev.obj) or (controller_uid(ev.old) if ev.old else None)
            if owner is not None:
                self.enqueue(md.get("namespace", ""), owner[1])

    def _index(self, ev: Event) -> None:
        """Re-index one pod from the store's current state (not from `ev`: listeners can write,
        so events may reach this one out of order)."""
        key = obj_key(ev.obj)
        prev = self._owner_of.pop(key, None)
        if prev is not None:
            bucket = self.owned.get(prev)
            if bucket is not None:
                bucket.pop(key, None)
                if not bucket:
                    del self.owned[prev]
        current = self.emu.store.get("pods", *key)
        owner = controller_uid(current) if current is not None else None
        if current is not None and owner is not None:
            self._owner_of[key] = owner[0]
            self.owned.setdefault(owner[0], {})[key] = current

    def _pods_of(self, namespace: str, uid: str) -> list[Obj]:
        """The pods controlled by the Job `uid`, in the store's (namespace, name) order."""
        bucket = self.owned.get(uid) or {}
        return [bucket[k] for k in sorted(bucket) if k[0] == namespace]

    async def _worker(self) -> None:
        while True:
            key = await self.queue.get()
            await self.running.wait()
            self.pending.discard(key)
            try:
                self.reconcile(*key)
            except ApiError:
                asyncio.get_running_loop().call_later(
                    0.05, self.enqueue, *key
                )  # retry like a rate-limited queue

    # ------------------------------------------------------------------ helpers
    def _event(self, job: Obj, reason: str, message: str, type_: str = "Normal") -> None:
        md = job["metadata"]
        now = now_iso()
        body = {
            "metadata": {"generateName": md["name"] + "."},
            "involvedObject": {
                "kind": "Job",
                "namespace": md["namespace"],
                "name": md["name"],
                "uid": md["uid"],
                "apiVersion": "batch/v1",
                "resourceVersion": md["resourceVersion"],
            },
            "reason": reason,
            "message": message,
            "source": {"component": "job-controller"},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "type": type_,
            "eventTime": None,
            "reportingComponent": "job-controller",
            "reportingInstance": "",
        }
        with contextlib.suppress(ApiError):
            self.emu.registry.create(EVENTS, md["namespace"], body)

    def _new_pod(self, job: Obj) -> None:
        md = job["metadata"]
        tmpl = copy.deepcopy(job["spec"]["template"])
        tmd = tmpl.get("metadata") or {}
        labels = dict(tmd.get("labels") or {})
        labels.update(
            {
                "batch.kubernetes.io/controller-uid": md["uid"],
                "batch.kubernetes.io/job-name": md["name"],
                "controller-uid": md["uid"],
                "job-name": md["name"],
            }
        )
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "generateName": md["name"] + "-",
                "labels": labels,
                "annotations": {**(tmd.get("annotations") or {}), "batch.kubernetes.io/job-tracking": ""},
                "ownerReferences": [
                    {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "name": md["name"],
                        "uid": md["uid"],
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": tmpl.get("spec") or {},
        }
        created = self.emu.registry.create(PODS, md["namespace"], pod)
        self._event(job, "SuccessfulCreate", f"Created pod: {created['metadata']['name']}")

    def _delete_pod(self, pod: Obj) -> None:
        with contextlib.suppress(ApiError):
            self.emu.registry.delete(
                PODS, pod["metadata"]["namespace"], pod["metadata"]["name"], propagation="Background"
            )

    # ------------------------------------------------------------------ reconcile
    def reconcile(self, namespace: str, name: str) -> None:
        job = self.emu.store.get("jobs", namespace, name)
        if job is None or job["metadata"].get("deletionTimestamp"):
            return
        md, spec = job["metadata"], job.get("spec") or {}
        status: Obj = copy.deepcopy(job.get("status") or {})
        track = self.tracking.setdefault(md["uid"], Tracking())
        pods = self._pods_of(namespace, md["uid"])
        restart_on_failure = (spec["template"].get("spec") or {}).get("restartPolicy") == "OnFailure"
        restarts = 0
        for p in pods:
            phase = (p.get("status") or {}).get("phase")
            if phase == "Succeeded":
                track.succeeded.add(p["metadata"]["uid"])
            elif phase == "Failed":
                track.failed.add(p["metadata"]["uid"])
            elif restart_on_failure:
                restarts += sum(
                    int(cs.get("restartCount", 0))
                    for cs in (p.get("status") or {}).get("containerStatuses") or []
                )

        def is_active(p: Obj) -> bool:
            return (p.get("status") or {}).get("phase") not in TERMINAL_PHASES and not p["metadata"].get(
                "deletionTimestamp"
            )

        active = [p for p in pods if is_active(p)]
        terminating = [
            p
            for p in pods
            if p["metadata"].get("deletionTimestamp")
            and (p.get("status") or {}).get("phase") not in TERMINAL_PHASES
        ]
        conds: list[Obj] = status.setdefault("conditions", [])
        finished = _has(status, "Complete") or _has(status, "Failed")

        if not finished:
            success_target = _has(status, "SuccessCriteriaMet")
            failure_target = _has(status, "FailureTarget")
            if spec.get("suspend") and not success_target and not failure_target:
                for p in active:
                    self._delete_pod(p)
                active = []
                if not _has(status, "Suspended"):
                    conds[:] = [c for c in conds if c["type"] != "Suspended"]
                    conds.append(_cond("Suspended", "JobSuspended", "Job suspended"))
                    self._event(job, "Suspended", "Job suspended")
                status.pop("startTime", None)
                if track.deadline_timer is not None:
                    track.deadline_timer.cancel()
                    track.deadline_timer = None
            else:
                if _has(status, "Suspended"):
                    for c in conds:
                        if c["type"] == "Suspended":
                            c.update(
                                status="False",
                                reason="JobResumed",
                                message="Job resumed",
                                lastTransitionTime=now_iso(),
                                lastProbeTime=now_iso(),
                            )
                    self._event(job, "Resumed", "Job resumed")
                status.setdefault("startTime", now_iso())
                if not success_target and not failure_target:
                    failure_target = self._check_failure(job, status, track, restarts)
                    if failure_target is None and len(track.succeeded) >= int(spec.get("completions") or 1):
                        conds.append(
                            _cond(
                                "SuccessCriteriaMet",
                                "CompletionsReached",
                                "Reached expected number of succeeded pods",
                            )
                        )
                        success_target = conds[-1]
                if failure_target is not None:
                    for p in active:
                        self._delete_pod(p)
                        track.failed.add(p["metadata"]["uid"])
                    terminating = terminating + active
                    active = []
                    if (
                        not terminating
                        and not _has(status, "Failed")
                        and _has(job.get("status") or {}, "FailureTarget")
                    ):
                        conds.append(_cond("Failed", failure_target["reason"], failure_target["message"]))
                        self._event(job, failure_target["reason"], failure_target["message"], "Warning")
                elif success_target is not None:
                    for p in active:
                        self._delete_pod(p)
                    terminating = terminating + active
                    active = []
                    if not terminating and _has(job.get("status") or {}, "SuccessCriteriaMet"):
                        conds.append(
                            _cond(
                                "Complete", "CompletionsReached", "Reached expected number of succeeded pods"
                            )
                        )
                        status["completionTime"] = now_iso()
                        self._event(job, "Completed", "Job completed")
                else:
                    completions = int(spec.get("completions") or 1)
                    par = spec.get("parallelism")
                    parallelism = int(par) if par is not None else 1
                    want = min(parallelism, completions - len(track.succeeded))
                    for _ in range(max(0, want - len(active))):
                        self._new_pod(job)
                    active = [p for p in self._pods_of(namespace, md["uid"]) if is_active(p)]
        if not conds:
            status.pop("conditions")
        self._write_status(job, status, active, terminating, track)
        self._schedule_ttl(job, track)

    def _check_failure(self, job: Obj, status: Obj, track: Tracking, restarts: int) -> Obj | None:
        spec = job["spec"]
        conds: list[Obj] = status["conditions"]
        ads = spec.get("activeDeadlineSeconds")
        if ads is not None and status.get("startTime"):
            remaining = (
                _parse(status["startTime"]) + dt.timedelta(seconds=int(ads)) - dt.datetime.now(dt.UTC)
            ).total_seconds()
            if remaining <= 0:
                conds.append(
                    _cond(
                        "FailureTarget", "DeadlineExceeded", "Job was active longer than specified deadline"
                    )
                )
                return conds[-1]
            if track.deadline_timer is None:
                ns, name = job["metadata"]["namespace"], job["metadata"]["name"]
                track.deadline_timer = asyncio.get_running_loop().call_later(
                    remaining + 0.01, self.enqueue, ns, name
                )
        if len(track.failed) + restarts > int(spec.get("backoffLimit", 6)):
            conds.append(
                _cond("FailureTarget", "BackoffLimitExceeded", "Job has reached the specified backoff limit")
            )
            return conds[-1]
        return None

    def _write_status(
        self, job: Obj, status: Obj, active: list[Obj], terminating: list[Obj], track: Tracking
    ) -> None:
        ready = sum(1 for p in active if (p.get("status") or {}).get("phase") == "Running")
        new: dict[str, Any] = {}
        for k in ("conditions", "startTime", "completionTime"):
            if k in status:
                new[k] = status[k]
        if active:
            new["active"] = len(active)
        if track.succeeded:
            new["succeeded"] = len(track.succeeded)
        if track.failed:
            new["failed"] = len(track.failed)
        new["terminating"] = len(terminating)
        new["uncountedTerminatedPods"] = {}
        new["ready"] = ready
        if new != (job.get("status") or {}):
            md = job["metadata"]
            with contextlib.suppress(ApiError):
                self.emu.registry.update(
                    JOBS, md["namespace"], md["name"], {**job, "status": new}, status=True
                )

    def _schedule_ttl(self, job: Obj, track: Tracking) -> None:
        cur = self.emu.store.get("jobs", job["metadata"]["namespace"], job["metadata"]["name"]) or job
        st = cur.get("status") or {}
        ttl = (cur.get("spec") or {}).get("ttlSecondsAfterFinished")
        done = _has(st, "Complete") or _has(st, "Failed")
        if ttl is None or done is None or track.ttl_timer is not None:
            return
        finished_at = _parse(st.get("completionTime") or done["lastTransitionTime"])
        delay = max(
            0.0, (finished_at + dt.timedelta(seconds=int(ttl)) - dt.datetime.now(dt.UTC)).total_seconds()
        )
        md = cur["metadata"]
        track.ttl_timer = asyncio.get_running_loop().call_later(
            delay, self._ttl_expired, md["namespace"], md["name"], md["uid"]
        )

    def _ttl_expired(self, namespace: str, name: str, uid: str) -> None:
        job = self.emu.store.get("jobs", namespace, name)
        if job is not None and job["metadata"]["uid"] == uid:
            with contextlib.suppress(ApiError):
                self.emu.registry.delete(JOBS, namespace, name, propagation="Foreground")
