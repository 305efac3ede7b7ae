"""Background cleanup of the Jobs jobwire made, from what the cluster says (labels), not the store.

Per namespace and per `jobwire.io/job` label, each sweep:
* keeps the newest `cleanup_min` Jobs (`CLEANUP_MIN`, default 3; per job `target.cleanup_min`),
  finished or not;
* deletes, of the others, the finished ones that finished more than `cleanup_ttl` ago (default
  8 hours, seed 001; per job `target.cleanup_ttl`) — with `propagationPolicy: Background`, so
  the garbage collector removes their pods — and the ConfigMaps labelled with their run;
* records orphans — Jobs with jobwire labels whose run jobwire has no record of (only known when
  the engine binds `run_exists`) — and deletes them once they are older than the TTL. Orphans
  never count toward `cleanup_min`.
A Job still running is never deleted by the cleanup (cancel and timeouts do that). Each sweep is
logged (`kubernetes cleanup sweep`) and counted in metrics.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import httpx2
import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from jobwire.model import utcnow
from jobwire.targets.kubernetes import build
from jobwire.targets.kubernetes.client import Kube
from jobwire.targets.kubernetes.errors import is_not_found

log = structlog.get_logger(__name__)

RunExists = Callable[[str], Awaitable[bool]]


@dataclass(frozen=True, slots=True)
class Policy:
    keep: int
    ttl: timedelta


@dataclass(slots=True)
class SweepResult:
    namespaces: int = 0
    seen: int = 0
    deleted_jobs: list[str] = field(default_factory=list)
    deleted_configmaps: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    deleted_orphans: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class CleanupMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.deleted = Counter(
            "jobwire_kube_cleanup_deleted_total",
            "Kubernetes objects deleted by the cleanup",
            ["kind"],
            registry=registry,
        )
        self.sweeps = Counter(
            "jobwire_kube_cleanup_sweeps_total", "Kubernetes cleanup sweeps", ["result"], registry=registry
        )
        self.orphans = Gauge(
            "jobwire_kube_orphan_jobs", "Jobs with jobwire labels but no run record", registry=registry
        )
        self.seconds = Histogram(
            "jobwire_kube_cleanup_seconds",
            "Duration of one cleanup sweep",
            registry=registry,
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 30),
        )


def _created(obj: Mapping[str, Any]) -> datetime | None:
    return build._time((obj.get("metadata") or {}).get("creationTimestamp"))


class Cleanup:
    def __init__(self, metrics: CleanupMetrics) -> None:
        self.metrics = metrics
        self.orphans: dict[tuple[str, str], datetime] = {}
        """(namespace, Job name) → when the cleanup first saw it as an orphan."""

    async def sweep(
        self,
        kube: Kube,
        namespaces: Iterable[str],
        policies: Mapping[str, Policy],
        default: Policy,
        run_exists: RunExists | None,
        now: datetime | None = None,
    ) -> SweepResult:
        t0 = time.monotonic()
        now = now or utcnow()
        res = SweepResult()
        for ns in sorted(set(namespaces)):
            res.namespaces += 1
            try:
                await self._namespace(kube, ns, policies, default, run_exists, now, res)
            except httpx2.HTTPError as exc:
                res.errors.append(f"{ns}: {type(exc).__name__}: {str(exc)[:200]}")
        self.metrics.sweeps.labels("error" if res.errors else "ok").inc()
        self.metrics.seconds.observe(time.monotonic() - t0)
        self.metrics.orphans.set(len(self.orphans))
        log.info(
            "kubernetes cleanup sweep",
            namespaces=res.namespaces,
            jobs_seen=res.seen,
            jobs_deleted=len(res.deleted_jobs),
            configmaps_deleted=len(res.deleted_configmaps),
            orphans=len(res.orphans),
            orphans_deleted=len(res.deleted_orphans),
            errors=res.errors or None,
            seconds=round(time.monotonic() - t0, 3),
        )
        return res

    async def _namespace(
        self,
        kube: Kube,
        ns: str,
        policies: Mapping[str, Policy],
        default: Policy,
        run_exists: RunExists | None,
        now: datetime,
        res: SweepResult,
    ) -> None:
        jobs, _ = await kube.list_jobs(ns, build.SELECTOR)
        res.seen += len(jobs)
        known: dict[str, bool] = {}
        groups: dict[str, list[dict[str, Any]]] = {}
        doomed: list[tuple[dict[str, Any], str]] = []
        present = set()
        for job in jobs:
            md = job["metadata"]
            labels = md.get("labels") or {}
            run_id = labels.get(build.LABEL_RUN, "")
            present.add((ns, md["name"]))
            if run_exists is not None:
                if run_id not in known:
                    known[run_id] = await run_exists(run_id)
                if not known[run_id]:
                    key = (ns, md["name"])
                    if key not in self.orphans:
                        self.orphans[key] = now
                        log.warning(
                            "orphan kubernetes job: jobwire has no record of its run",
                            namespace=ns,
                            job=md["name"],
                            run_id=run_id,
                        )
                    res.orphans.append(md["name"])
                    policy = policies.get(labels.get(build.LABEL_JOB, ""), default)
                    born = build.finish_time(job) or _created(job)
                    if born is not None and born < now - policy.ttl:
                        doomed.append((job, "orphan"))
                    continue
            groups.setdefault(labels.get(build.LABEL_JOB, ""), []).append(job)
        for key in [k for k in self.orphans if k[0] == ns and k not in present]:
            del self.orphans[key]

        for label, members in groups.items():
            policy = policies.get(label, default)
            members.sort(key=build.age_key, reverse=True)
            for job in members[policy.keep :]:
                done = build.finish_time(job)
                if done is not None and done < now - policy.ttl:
                    doomed.append((job, "job"))

        gone_runs: set[str] = set()
        for job, kind in doomed:
            name = job["metadata"]["name"]
            try:
                await kube.delete_job(ns, name)
            except httpx2.HTTPError as exc:
                if not is_not_found(exc):
                    res.errors.append(f"{ns}/{name}: {str(exc)[:200]}")
                    continue
            self.metrics.deleted.labels(kind).inc()
            self.orphans.pop((ns, name), None)
            (res.deleted_orphans if kind == "orphan" else res.deleted_jobs).append(name)
            gone_runs.add((job["metadata"].get("labels") or {}).get(build.LABEL_RUN, ""))
            log.info("deleted kubernetes job", namespace=ns, job=name, why=kind)

        if gone_runs:
            doomed_names = {j["metadata"]["name"] for j, _ in doomed}
            still = {
                (j["metadata"].get("labels") or {}).get(build.LABEL_RUN)
                for j in jobs
                if j["metadata"]["name"] not in doomed_names
            }
            gone_runs -= {r for r in still if r}
            for cm in await kube.list_configmaps(ns, build.SELECTOR):
                if (cm["metadata"].get("labels") or {}).get(build.LABEL_RUN) in gone_runs:
                    try:
                        await kube.delete_configmap(ns, cm["metadata"]["name"])
                    except httpx2.HTTPError as exc:
                        if not is_not_found(exc):
                            res.errors.append(f"{ns}/configmap/{cm['metadata']['name']}: {str(exc)[:200]}")
                            continue
                    self.metrics.deleted.labels("configmap").inc()
                    res.deleted_configmaps.append(cm["metadata"]["name"])
