"""The `kubernetes` target: one Kubernetes Job per run attempt, watched to its end.

* The Job is built from a template in the namespace (`template: NAME`: a CronJob's jobTemplate or
  a suspended Job labelled `jobwire.io/template: "true"`) or from the short spec (`image` +
  requests/limits); see `build`.
* Its name is derived from the run key and attempt (`build.job_name`): a create that meets
  AlreadyExists adopts the existing Job — after a crash between "Job created" and "run recorded
  as running", the restarted jobwire finds it and watches it, never making a second one.
* Runs are watched through one Job watch and one Pod watch per namespace (`watch`), not a poll
  per Job. Each JobStatus change is published (`ctx.report`) with seed 000's status block.
* Cancel and timeouts delete the Job with `propagationPolicy: Background` (its pods go too).
  Shutdown leaves Jobs running (`survives_restart`); they are adopted after restart.
* A background sweep deletes old finished Jobs (`cleanup`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from datetime import datetime
from typing import Any

import httpx2
import structlog
from prometheus_client import CollectorRegistry

from jobwire.config import Settings
from jobwire.model import Job, Run, RunError, RunState
from jobwire.model import KubernetesTarget as KubeSpec
from jobwire.params import ParamError
from jobwire.targets.base import Outcome, RunContext, Target
from jobwire.targets.kubernetes import build
from jobwire.targets.kubernetes.cleanup import Cleanup, CleanupMetrics, Policy, SweepResult
from jobwire.targets.kubernetes.client import API_CALLS, Kube, KubeUnavailable, exists, resolve_config
from jobwire.targets.kubernetes.errors import is_already_exists, is_not_found, retryable, run_error
from jobwire.targets.kubernetes.podlog import PodLogs
from jobwire.targets.kubernetes.watch import Inbox, NamespaceWatch

__all__ = ["API_CALLS", "KubernetesJobTarget", "KubernetesTarget"]

log = structlog.get_logger(__name__)

RunExists = Callable[[str], Awaitable[bool]]


def _failed(reason: str, message: str, retry: bool, code: int | str | None = None, **kw: Any) -> Outcome:
    return Outcome(
        state=RunState.failed,
        retryable=retry,
        error=RunError(message=message, reason=reason, code=code),
        **kw,
    )


class TemplateMissing(LookupError):
    pass


class KubernetesJobTarget(Target):
    kind = "kubernetes"
    survives_restart = True

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._kube: Kube | None = None
        self._job_watches: dict[str, NamespaceWatch] = {}
        self._pod_watches: dict[str, NamespaceWatch] = {}
        self._run_ns: dict[str, str] = {}
        self._namespaces: set[str] = {settings.kube_namespace}
        self._deleting: set[tuple[str, str]] = set()
        self._run_exists: RunExists | None = None
        self._jobs: Callable[[], Iterable[Job]] | None = None
        self._registry: CollectorRegistry | None = None
        self._cleanup: Cleanup | None = None
        self._cleanup_task: asyncio.Task[None] | None = None
        self._cleanup_error: str | None = None
        self._leader: Callable[[], bool] = lambda: True
        """Only the leader sweeps (several replicas on one database, docs/replicas.md)."""

    # ------------------------------------------------------------------ wiring
    def bind(
        self,
        run_exists: RunExists | None = None,
        jobs: Callable[[], Iterable[Job]] | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        """What the engine provides: whether a run id is recorded (orphan detection), the job
        definitions (per-job cleanup settings and namespaces), and the metrics registry."""
        if run_exists is not None:
            self._run_exists = run_exists
        if jobs is not None:
            self._jobs = jobs
        if registry is not None and self._cleanup is None:
            self._registry = registry

    def bind_leader(self, leader: Callable[[], bool]) -> None:
        self._leader = leader

    @property
    def cleanup(self) -> Cleanup:
        if self._cleanup is None:
            self._cleanup = Cleanup(CleanupMetrics(self._registry or CollectorRegistry()))
        return self._cleanup

    async def start(self) -> None:
        try:
            self._connect()
        except KubeUnavailable as exc:
            log.info("kubernetes target not configured", reason=str(exc))
            return
        if self._cleanup_task is None and self.settings.kube_cleanup_interval.total_seconds() > 0:
            self._cleanup_task = asyncio.create_task(self._cleanup_loop(), name="jobwire-kube-cleanup")

    async def close(self) -> None:
        if self._cleanup_task is not None:
            self._cleanup_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._cleanup_task
            self._cleanup_task = None
        for w in [*self._job_watches.values(), *self._pod_watches.values()]:
            await w.close()
        self._job_watches.clear()
        self._pod_watches.clear()
        if self._kube is not None:
            await self._kube.close()
            self._kube = None

    def health(self) -> dict[str, str | None]:
        """The namespace watches and the cleanup loop (each retries on its own, with backoff)."""
        out: dict[str, str | None] = {
            f"jobwire-kube-watch-{w.what}-{w.namespace}": w.last_error
            for w in [*self._job_watches.values(), *self._pod_watches.values()]
        }
        if self._cleanup_task is not None:
            out["jobwire-kube-cleanup"] = self._cleanup_error
        return out

    def _connect(self) -> Kube:
        if self._kube is None:
            config, origin = resolve_config(self.settings)
            self._kube = Kube(config)
            log.info("kubernetes target connected", server=config.cluster.server, config=origin)
        return self._kube

    def job_watch(self, namespace: str) -> NamespaceWatch:
        w = self._job_watches.get(namespace)
        if w is None:
            kube = self._connect()
            w = self._job_watches[namespace] = NamespaceWatch(
                "jobs",
                namespace,
                lambda: kube.list_jobs(namespace, build.SELECTOR),
                lambda rv: kube.watch_jobs(namespace, build.SELECTOR, rv),
                lambda o: str(o["metadata"]["name"]),
                lambda o: build.finished(o.get("status") or {}) is not None,
            )
        return w

    def pod_watch(self, namespace: str) -> NamespaceWatch:
        w = self._pod_watches.get(namespace)
        if w is None:
            kube = self._connect()
            w = self._pod_watches[namespace] = NamespaceWatch(
                "pods",
                namespace,
                lambda: kube.list_pods(namespace, {build.SELECTOR: exists()}),
                lambda rv: kube.watch_pods(namespace, build.SELECTOR, rv),
                lambda o: (o["metadata"].get("labels") or {}).get("job-name"),
                lambda o: (o.get("status") or {}).get("phase") in ("Succeeded", "Failed"),
            )
        return w

    # ------------------------------------------------------------------ execute
    async def execute(self, ctx: RunContext) -> Outcome:
        spec = ctx.job.target
        if not isinstance(spec, KubeSpec):
            return _failed("WrongTarget", f"job {ctx.job.name} has no kubernetes target", retry=False)
        try:
            kube = self._connect()
        except KubeUnavailable as exc:
            return _failed("KubernetesUnavailable", str(exc), retry=False)
        ns = spec.namespace or self.settings.kube_namespace
        info = build.RunInfo(
            job=ctx.job.name,
            run_id=ctx.run.id,
            target_name=ctx.target_name,
            attempt=ctx.run.attempt,
            event_id=ctx.run.event_id,
            params=ctx.params,
            environment=ctx.run.environment if ctx.run.environment is not None else ctx.job.environment,
            input_location=ctx.run.input_location,
            callback_url=ctx.callback_url,
            callback_token=ctx.callback_token,
            created_at=ctx.run.created_at,
        )
        name = info.name
        self._run_ns[ctx.run.id] = ns
        self._namespaces.add(ns)
        queue = Inbox()
        # subscribe before creating, so not even the first event can be missed
        try:
            with self.job_watch(ns).subscribe(name, queue), self.pod_watch(ns).subscribe(name, queue):
                failed = await self._launch(kube, ctx, spec, ns, info)
                if failed is not None:
                    return failed
                return await self._follow(kube, ctx, spec, ns, name, queue)
        finally:
            self._deleting.discard((ns, name))

    async def _launch(
        self, kube: Kube, ctx: RunContext, spec: KubeSpec, ns: str, info: build.RunInfo
    ) -> Outcome | None:
        """Create the Job (or find it): None when there is one to watch, else the failed outcome."""
        name = info.name
        if ctx.resumed:
            try:
                await kube.get_job(ns, name)
                log.info("adopting kubernetes job after restart", run_id=ctx.run.id, job=name, namespace=ns)
                return None
            except httpx2.HTTPError as exc:
                if not is_not_found(exc):
                    log.warning("cannot look up job after restart", job=name, error=str(exc)[:200])
                elif ctx.run.target_ref == name:
                    return _failed(
                        "JobDeleted", f"Job {ns}/{name} was deleted while jobwire was down", retry=True
                    )
        template: dict[str, Any] | None = None
        try:
            if spec.template is not None:
                template = await self._template(kube, ns, spec.template)
            # built once a creation slot is free, not before: 10,000 runs waiting for one held
            # their built manifests (~3 KB each) meanwhile
            await kube.create_job(ns, lambda: self._manifest(spec, info, template))
            log.debug("kubernetes job created", run_id=ctx.run.id, job=name, namespace=ns)
        except ParamError as exc:
            return _failed("InvalidParameters", str(exc), retry=False)
        except TemplateMissing as exc:
            return _failed("TemplateNotFound", str(exc), retry=False, code=404)
        except build.TemplateError as exc:
            return _failed("InvalidTemplate", str(exc), retry=False)
        except httpx2.HTTPError as exc:
            if template is None and spec.template is not None:
                tmpl = f"get template {ns}/{spec.template}"
                return Outcome(state=RunState.failed, error=run_error(exc, tmpl), retryable=retryable(exc))
            if is_already_exists(exc):
                log.info("kubernetes job exists, adopting it", run_id=ctx.run.id, job=name, namespace=ns)
                return None
            log.warning("kubernetes job create failed", run_id=ctx.run.id, job=name, error=str(exc)[:300])
            return Outcome(
                state=RunState.failed,
                error=run_error(exc, f"create Job {ns}/{name}"),
                retryable=retryable(exc),
            )
        return None

    async def template_exists(self, namespace: str | None, name: str) -> bool:
        """Whether `name` is a Job template in `namespace` (default: the `NAMESPACE` setting): a
        CronJob of that name or a Job labelled `jobwire.io/template: "true"`. Raises on API errors."""
        try:
            await self._template(self._connect(), namespace or self.settings.kube_namespace, name)
        except TemplateMissing:
            return False
        return True

    @staticmethod
    def _manifest(spec: KubeSpec, info: build.RunInfo, template: dict[str, Any] | None) -> dict[str, Any]:
        if template is None:
            return build.from_short_spec(spec, info)
        return build.from_template(template, spec, info)

    async def _template(self, kube: Kube, ns: str, name: str) -> dict[str, Any]:
        try:
            tmpl = await kube.get_cronjob(ns, name)
            tmpl.setdefault("kind", "CronJob")
        except httpx2.HTTPError as exc:
            if not is_not_found(exc):
                raise
            try:
                tmpl = await kube.get_job(ns, name)
                tmpl.setdefault("kind", "Job")
            except httpx2.HTTPError as exc2:
                if not is_not_found(exc2):
                    raise
                tmpl = {}
            labels = (tmpl.get("metadata") or {}).get("labels") or {}
            if labels.get(build.LABEL_TEMPLATE) != "true":
                hint = (
                    ' (a Job of that name exists but is not labelled jobwire.io/template: "true")'
                    if tmpl
                    else ""
                )
                raise TemplateMissing(
                    f"no job template {name!r} in namespace {ns!r}: expected a CronJob of that name "
                    f'or a suspended Job labelled jobwire.io/template: "true"{hint}'
                ) from None
        return tmpl

    async def _follow(
        self, kube: Kube, ctx: RunContext, spec: KubeSpec, ns: str, name: str, queue: Inbox
    ) -> Outcome:
        logs = PodLogs(kube, ns)
        try:
            return await self._follow_events(kube, ctx, spec, ns, name, queue, logs)
        finally:
            logs.close()

    async def _follow_events(
        self,
        kube: Kube,
        ctx: RunContext,
        spec: KubeSpec,
        ns: str,
        name: str,
        queue: Inbox,
        logs: PodLogs,
    ) -> Outcome:
        loop = asyncio.get_running_loop()
        grace = spec.image_pull_grace.total_seconds()
        started = ctx.run.state == RunState.running and ctx.run.target_ref == name
        last_status: dict[str, Any] | None = None
        pulling: dict[str, tuple[float, str, str]] = {}  # pod → (since, reason, message)
        while True:
            timeout = None
            if pulling:
                timeout = max(0.0, min(since for since, _, _ in pulling.values()) + grace - loop.time())
            try:
                what, ev_type, obj = await asyncio.wait_for(queue.get(), timeout)
            except TimeoutError:
                _, reason, message = min(pulling.values())
                await self._delete(kube, ns, name, "ImagePullTimeout", f"{reason} for more than {grace:g}s")
                return _failed(reason, message, retry=True)
            if ev_type == "ERROR":
                err: RunError = obj["error"]
                return Outcome(state=RunState.failed, error=err, retryable=False)
            if what == "pods":
                pod = obj["metadata"]["name"]
                problem = build.pull_problem(obj) if ev_type != "DELETED" else None
                if ev_type != "DELETED":
                    logs.seen(obj)
                if problem is None:
                    pulling.pop(pod, None)
                elif problem[0] in build.PULL_FATAL:
                    await self._delete(kube, ns, name, "ImagePullFailed", problem[1])
                    return _failed(problem[0], problem[1], retry=False)
                elif pod not in pulling:
                    log.info(
                        "kubernetes pod waits on its image", run_id=ctx.run.id, pod=pod, reason=problem[0]
                    )
                    pulling[pod] = (loop.time(), *problem)
                continue
            # a Job event
            if ev_type == "DELETED":
                if (ns, name) in self._deleting:
                    continue  # jobwire's own cancel: the engine ends this task and records why
                return _failed("JobDeleted", f"Job {ns}/{name} was deleted before it finished", retry=False)
            labels = obj["metadata"].get("labels") or {}
            if labels.get(build.LABEL_RUN) != ctx.run.id:
                return _failed(
                    "NameConflict",
                    f"a Job named {ns}/{name} exists that jobwire did not make for this run",
                    retry=False,
                    code=409,
                )
            status: dict[str, Any] = dict(obj.get("status") or {})
            if status == last_status:
                continue
            last_status = status
            block = build.status_block(status)
            end = build.finished(status)
            if not started:
                if block.active or block.startTime or block.succeeded or block.failed:
                    ctx.run.target_status = status
                    await ctx.started(name, block)
                    started = True
            elif end is None:  # a final status is told once, by the run's end (its outcome carries it)
                await ctx.report(block, target_status=status)
            if end is None:
                continue
            pods = await self._pods(kube, ns, name, need_final=end == "failed")
            await logs.copy(ctx, pods)
            if end == "succeeded":
                return Outcome(state=RunState.succeeded, exit_code=0, status=block, target_status=status)
            error, exit_code = self._failure(status, pods)
            return Outcome(
                state=RunState.failed,
                exit_code=exit_code,
                error=error,
                retryable=True,
                status=block,
                target_status=status,
            )

    @staticmethod
    def _failure(status: dict[str, Any], pods: list[dict[str, Any]]) -> tuple[RunError, int | None]:
        cond = build.condition(status, "Failed") or {}
        reason = str(cond.get("reason") or "Failed")
        message = str(cond.get("message") or "Job failed")
        ends = [t for t in (build.terminated(p) for p in pods) if t is not None]
        if ends:
            container, why, code = ends[-1]
            if why == "OOMKilled":
                return RunError(
                    message=f"container {container} was OOMKilled (exit code {code}); {message}",
                    reason="OOMKilled",
                    code=code,
                ), code
            return RunError(
                message=f"{message}: container {container} exited with code {code} ({why})",
                reason=reason,
                code=code,
            ), code
        return RunError(message=message, reason=reason, code=None), None

    async def _pods(self, kube: Kube, ns: str, name: str, need_final: bool) -> list[dict[str, Any]]:
        """The Job's pods, oldest first, from the watch cache — or from one list when the cache has
        none, or (`need_final`: to tell why it failed) none in a final phase yet: pod and Job events
        travel on different connections."""
        pods = self.pod_watch(ns).objects(name)
        final = any((p.get("status") or {}).get("phase") in ("Succeeded", "Failed") for p in pods)
        if not pods or (need_final and not final):
            with contextlib.suppress(httpx2.HTTPError):
                pods, _ = await kube.list_pods(ns, {"job-name": name})
        return sorted(pods, key=build.age_key)

    async def _delete(self, kube: Kube, ns: str, name: str, reason: str, message: str) -> None:
        """Delete the Job (Background: pods too) and leave a Kubernetes Event saying why."""
        self._deleting.add((ns, name))
        obj = self.job_watch(ns).cache.get(name)  # before the watch sees it go
        try:
            await kube.delete_job(ns, name)
            log.info("kubernetes job deleted", job=name, namespace=ns, reason=reason)
        except httpx2.HTTPError as exc:
            if not is_not_found(exc):
                log.warning("kubernetes job delete failed", job=name, namespace=ns, error=str(exc)[:300])
                raise
        finally:
            if obj is not None:
                with contextlib.suppress(httpx2.HTTPError):
                    await kube.create_event(ns, obj, f"Jobwire{reason}", message, "Warning")

    # ------------------------------------------------------------------ cancel, logs
    async def cancel(self, ctx: RunContext) -> None:
        spec = ctx.job.target
        if not isinstance(spec, KubeSpec) or self._kube is None:
            return
        ns = self._run_ns.get(ctx.run.id) or spec.namespace or self.settings.kube_namespace
        name = build.job_name(ctx.job.name, ctx.target_name)
        await self._delete(self._kube, ns, name, "Cancelled", "run cancelled in jobwire")

    def _namespaces_of(self, run: Run) -> list[str]:
        first = self._run_ns.get(run.id)
        rest = sorted(self._namespaces - {first} if first else self._namespaces)
        return [first, *rest] if first else rest

    async def logs(self, run: Run, follow: bool = False) -> AsyncIterator[bytes] | None:
        """The pod log of the run's (latest attempt's) Job — None when there is no such pod (not a
        Kubernetes run, the Job was cleaned up, not configured): jobwire's captured log is used."""
        if self._kube is None:
            return None
        target_name = run.id if run.attempt == 1 else f"{run.id}-{run.attempt}"
        name = build.job_name(run.job, target_name)
        for ns in self._namespaces_of(run):
            pods = self.pod_watch(ns).objects(name) if ns in self._pod_watches else []
            if not pods:
                try:
                    pods, _ = await self._kube.list_pods(ns, {"job-name": name})
                except httpx2.HTTPError:
                    continue
            pod = build.newest(pods)
            if pod is not None:
                return self._stream(self._kube, ns, name, pod["metadata"]["name"], follow)
        return None

    async def _stream(self, kube: Kube, ns: str, job: str, pod: str, follow: bool) -> AsyncIterator[bytes]:
        for _ in range(600):  # a container that has not started yet: wait for it (follow only)
            try:
                async with contextlib.aclosing(kube.pod_log(ns, pod, follow=follow)) as lines:
                    async for line in lines:
                        yield line.encode()
                return
            except httpx2.HTTPStatusError as exc:
                if not follow or exc.response.status_code != 400:
                    return
            with self.pod_watch(ns).subscribe(job) as sub, contextlib.suppress(TimeoutError):
                sub.queue.clear()  # what the cache already held: wait for a change
                await asyncio.wait_for(sub.get(), 1.0)

    # ------------------------------------------------------------------ cleanup
    def _policies(self) -> tuple[dict[str, Policy], Policy, set[str]]:
        default = Policy(self.settings.kube_cleanup_min, self.settings.kube_cleanup_ttl)
        policies: dict[str, Policy] = {}
        namespaces = set(self._namespaces)
        for job in self._jobs() if self._jobs is not None else ():
            spec = job.target
            if not isinstance(spec, KubeSpec):
                continue
            namespaces.add(spec.namespace or self.settings.kube_namespace)
            policies[build.label_value(job.name)] = Policy(
                spec.cleanup_min if spec.cleanup_min is not None else default.keep,
                spec.cleanup_ttl if spec.cleanup_ttl is not None else default.ttl,
            )
        return policies, default, namespaces

    async def sweep(self, now: datetime | None = None) -> SweepResult:
        """One cleanup pass over every namespace jobwire knows (`now` for tests)."""
        kube = self._connect()
        policies, default, namespaces = self._policies()
        return await self.cleanup.sweep(kube, namespaces, policies, default, self._run_exists, now)

    async def _cleanup_loop(self) -> None:
        interval = self.settings.kube_cleanup_interval.total_seconds()
        while True:
            if not self._leader():
                # a follower, or a replica still electing at start (targets start before the
                # election): look again soon rather than a whole interval later
                await asyncio.sleep(min(interval, 2.0))
                continue
            try:
                await self.sweep()
                self._cleanup_error = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._cleanup_error = f"{type(exc).__name__}: {str(exc)[:200]}"
                log.exception("kubernetes cleanup sweep failed")
            await asyncio.sleep(interval)


KubernetesTarget = KubernetesJobTarget
"""Exported under the target's name; its job-definition model is `jobwire.model.KubernetesTarget`."""
