"""The job registry: the definitions in force (in memory, `jobs`; stored in the store), from job
files (`settings.jobs`) and the API; pause and resume; re-reading the files when they change.

A job defined in a file (origin `file:<path>`) is changed by editing that file, never by the API.

Seed 004's `jobs.csv` (a `.csv` path, or one in a folder): its bad rows are skipped and logged, the
other rows load; and its files are re-read when they change unless `reload` was set to false
(seed 004 edits its CSV while the listener runs). A job whose row is removed (or turns bad) is
deleted: its trigger stops, while its runs in progress go on to their end (each holds its
definition) and stay in the history. A file in S3 (`s3://bucket/key`, `engine/s3jobs.py`) counts
as such a file, CSV or YAML: re-read when its ETag changes (origin `file:s3://bucket/key`).
"""

from __future__ import annotations

import asyncio
import time
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import structlog
from pydantic import BaseModel

from jobwire.config import S3Url, Settings
from jobwire.engine.chains import find_cycle
from jobwire.engine.errors import ChainLoop, Conflict, JobNotFound
from jobwire.engine.metrics import Metrics
from jobwire.engine.s3jobs import S3JobFiles
from jobwire.engine.scheduler import TimeScheduler
from jobwire.jobfile import DefinitionError, JobFileError, load_paths
from jobwire.model import AfterTrigger, Job
from jobwire.store import Store, StoredJob
from jobwire.targets.base import Target

log = structlog.get_logger(__name__)

SAVE_NOTICE = 1000
"""Saving at least this many definitions at start is said first (100,000 on PostgreSQL: a minute)."""
REFRESH_ONE_BY_ONE = 100
"""Jobs another replica changed that are re-read one by one; more (over a tenth of the catalogue
too) and the whole catalogue is read once, reusing what is held."""
LOGGED_ONE_BY_ONE = 20
"""Jobs changed by another replica logged a line each; more: one line with their number."""


def share_fields_sets(jobs: Iterable[Job]) -> None:
    """Give every model in these definitions the one shared copy of its set of explicitly given
    field names. Pydantic keeps a set per model instance (216 bytes for a few names); 100,000 jobs
    of four models each held 86 MB of equal sets. Safe because definitions are frozen: pydantic
    changes the set only on assignment, which they refuse, and `model_copy` copies it first.
    Only the fields whose type can hold a model are walked, and a field holding its class default
    (one shared instance) is not: 100,000 jobs in 0.7 s here, 1.3 s when every field was."""
    shared: dict[frozenset[str], set[str]] = {}
    seen: set[int] = set()  # models met before (shared ones, e.g. a trigger list's model)
    kinds: dict[type, int] = {}  # 1 model, 2 list or tuple, 3 dict, 0 other (isinstance is slow)
    walk: dict[type, tuple[tuple[str, Any], ...]] = {}  # per model class: (field, its default)
    stack: list[Any] = list(jobs)
    pop, push, extend = stack.pop, stack.append, stack.extend
    while stack:
        value = pop()
        t = type(value)
        kind = kinds.get(t)
        if kind is None:
            kind = kinds[t] = _kind(t)
        if kind == 1:
            if id(value) in seen:
                continue
            seen.add(id(value))
            names = value.__pydantic_fields_set__
            one = shared.setdefault(frozenset(names), names)
            if one is not names:
                object.__setattr__(value, "__pydantic_fields_set__", one)
            attrs = value.__dict__
            fields = walk.get(t)
            if fields is None:
                fields = walk[t] = tuple((f, t.model_fields[f].default) for f in _model_fields(t))
            for f, default in fields:
                v = attrs.get(f)
                if v is default or v is None:
                    continue
                tv = type(v)
                if tv is list or tv is tuple:
                    extend(v)
                elif tv is dict:
                    extend(v.values())
                else:
                    push(v)
        elif kind == 2:
            extend(value)
        elif kind == 3:
            extend(value.values())


def _kind(t: type) -> int:
    return (
        1
        if issubclass(t, BaseModel)
        else 2
        if issubclass(t, list | tuple)
        else 3
        if issubclass(t, dict)
        else 0
    )


def _model_fields(cls: type[BaseModel]) -> tuple[str, ...]:
    """The fields of `cls` whose declared type may hold a model (in a list, dict, union, Any)."""
    return tuple(name for name, f in cls.model_fields.items() if _may_hold_model(f.annotation))


def _may_hold_model(ann: Any) -> bool:
    if ann is Any or ann is object:
        return True
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return True
    return any(_may_hold_model(a) for a in typing.get_args(ann))


class JobRegistry:
    def __init__(self, settings: Settings, store: Store, scheduler: TimeScheduler, metrics: Metrics) -> None:
        self.settings = settings
        self.store = store
        self.scheduler = scheduler
        self.metrics = metrics
        self.jobs: dict[str, StoredJob] = {}
        """The definitions in force by name; the same dict for the whole engine's life."""
        self.file_mtimes: dict[Path, float] = {}
        self.paths = [p for p in settings.jobs if isinstance(p, Path)]
        """The local job files and folders of `settings.jobs`."""
        urls = [p for p in settings.jobs if isinstance(p, S3Url)]
        self.s3_files = S3JobFiles(urls) if urls else None
        """The job files of `settings.jobs` in S3, with their texts and ETags."""

    def _texts(self) -> list[tuple[str, str]]:
        return self.s3_files.items() if self.s3_files is not None else []

    # ------------------------------------------------------------------ job files
    async def load(self) -> None:
        """At start: the job files' definitions saved over the store's, file jobs no longer in a
        file deleted. Raises JobFileError listing every problem. Not scheduled here: the engine
        does that once it knows whether it leads (the leader's heap counts from after catch-up;
        building it here too cost 1.1 s of CPU with 100,000 jobs, all thrown away)."""
        if self.s3_files is not None:
            await self.s3_files.load()  # raises JobFileError naming each URL it cannot read
        t0 = time.monotonic()
        # raises JobFileError listing every problem
        file_jobs, skipped = load_paths(self.paths, self._texts())
        _log_skipped(skipped)
        if file_jobs:  # a start with 100,000 jobs takes seconds here: say what it is doing
            files, took = len({origin for _, origin in file_jobs}), round(time.monotonic() - t0, 1)
            log.info("job files read", files=files, jobs=len(file_jobs), seconds=took)
        if not self.settings.reload and "reload" not in self.settings.model_fields_set:
            csv_files = [str(p) for p in self.paths if _csv_files(p)]
            csv_files += [str(u) for u in (self.s3_files.urls if self.s3_files else [])]
            if csv_files:
                # read by the engine right after this load: it starts the reload loop
                self.settings.reload = True
                log.info(
                    "job files re-read when they change, as a CSV registry is among them",
                    off="JOBWIRE_RELOAD=false",
                    csv=csv_files,
                )
        if self.settings.reload:
            for path in self.paths:
                self.file_mtimes.update(_mtimes(path))
        elif self.s3_files is not None:
            await self.s3_files.close()  # not asked again: no client kept open
        _refuse_loops([job for job, _ in file_jobs])
        known = {job.name: job for job, _ in file_jobs}
        stored = {s.job.name: s for s in await self.store.list_jobs_reusing(known)}
        changed = []
        for job, origin in file_jobs:
            prev = stored.get(job.name)
            if prev is None or (prev.job is not job and prev.job != job) or prev.origin != origin:
                changed.append((job, origin))
        if len(changed) >= SAVE_NOTICE:
            log.info("saving new and changed job definitions to the store", jobs=len(changed))
        for s in await self.store.save_jobs(changed):  # one transaction (SQLite)
            stored[s.job.name] = s
        seen = known.keys()
        gone = [name for name, s in stored.items() if s.origin.startswith("file:") and name not in seen]
        await self.store.delete_jobs(gone)  # one transaction (a removed file of 100,000 jobs)
        for name in gone:
            del stored[name]
        share_fields_sets(s.job for s in stored.values())
        self.jobs.clear()  # in place: the intake, the run states and the targets hold this dict
        self.jobs.update(stored)
        self.metrics.jobs.set(len(self.jobs))

    async def reload_files(self) -> list[str]:
        """Re-read job files; on errors keep the current definitions and return the messages.
        The files are read and validated on a worker thread: a large registry takes seconds, and
        meanwhile the loop must keep answering and writing this replica's heartbeat (expired, a
        replica on PostgreSQL exits as declared dead)."""
        try:
            file_jobs, skipped = await asyncio.to_thread(load_paths, self.paths, self._texts())
            _refuse_loops([job for job, _ in file_jobs])
        except JobFileError as exc:
            msgs = [str(e) for e in exc.errors]
            log.error("job files have errors; keeping the current definitions", errors=msgs)
            return msgs
        _log_skipped(skipped)
        names = set()
        changed = []
        for job, origin in file_jobs:
            names.add(job.name)
            cur = self.jobs.get(job.name)
            if cur is None or cur.job != job or cur.origin != origin:  # moved to another file too
                changed.append((job, origin))
        for stored in await self.store.save_jobs(changed):  # one transaction, as at start
            self._install(stored)
        gone = [name for name, s in self.jobs.items() if s.origin.startswith("file:") and name not in names]
        await self.store.delete_jobs(gone)  # one transaction, as the saves
        for name in gone:
            self.jobs.pop(name, None)
            self.scheduler.remove_job(name)
        self.metrics.jobs.set(len(self.jobs))
        log.info("job files reloaded", jobs=len(names))
        return []

    def files_changed(self) -> bool:
        """Whether a job file changed (by mtime) since the last look. Development mode (`reload`)
        checks this once a second — the only periodic check in jobwire. The new mtimes are
        remembered at once: a file that breaks the reload is not re-read until it changes again."""
        current: dict[Path, float] = {}
        for path in self.paths:
            current.update(_mtimes(path))
        if current == self.file_mtimes:
            return False
        self.file_mtimes = current
        return True

    async def changed(self) -> bool:
        """`files_changed`, and whether a job file in S3 changed (its ETag; HeadObject only). S3
        is asked first: when it fails (S3Error raised), the local files are looked at next time."""
        remote = await self.s3_files.changed() if self.s3_files is not None else False
        return self.files_changed() or remote

    async def close(self) -> None:
        """Release the S3 client, if any (opened again when needed)."""
        if self.s3_files is not None:
            await self.s3_files.close()

    # ------------------------------------------------------------------ definitions
    def _install(self, stored: StoredJob) -> None:
        self.jobs[stored.job.name] = stored
        self.scheduler.set_job(stored.job, stored.paused)

    async def put_job(self, job: Job, origin: str = "api") -> StoredJob:
        cur = self.jobs.get(job.name)
        if cur is not None and cur.origin.startswith("file:") and origin == "api":
            raise Conflict(
                f"job {job.name!r} is defined in {cur.origin[5:]}; edit that file, not the API definition"
            )
        # only a job that runs after another can close a loop (the others cannot hold one)
        chained = any(isinstance(t, AfterTrigger) for t in job.triggers)
        defs = {name: s.job for name, s in self.jobs.items()} | {job.name: job} if chained else {}
        loop = find_cycle(defs.values())
        if loop is not None:
            raise ChainLoop(
                f"job {job.name!r}: its after triggers make a loop ({' → '.join(loop)}): "
                "a chain must end; remove one of these after triggers"
            )
        stored = await self.store.save_job(job, origin)
        self._install(stored)
        self.metrics.jobs.set(len(self.jobs))
        return stored

    def get_job(self, name: str) -> StoredJob:
        stored = self.jobs.get(name)
        if stored is None:
            raise JobNotFound(f"no job named {name!r}")
        return stored

    async def delete_job(self, name: str) -> None:
        cur = self.get_job(name)
        if cur.origin.startswith("file:"):
            raise Conflict(f"job {name!r} is defined in {cur.origin[5:]}; remove it from that file")
        await self.store.delete_job(name)
        self.jobs.pop(name, None)
        self.scheduler.remove_job(name)
        self.metrics.jobs.set(len(self.jobs))

    async def set_paused(self, name: str, paused: bool) -> StoredJob:
        self.get_job(name)
        stored = await self.store.set_paused(name, paused)
        if stored is None:
            raise JobNotFound(f"no job named {name!r}")
        self._install(stored)
        return stored

    # ------------------------------------------------------------------ other replicas' changes
    async def refresh(self, names: set[str]) -> bool:
        """Re-read these jobs from the store (another replica changed them): installed, changed
        or removed here. Whether anything changed. Many names at once (a replica's first start
        saving 100,000 job-file jobs; a reload of a large CSV registry) are one read of the whole
        catalogue, reusing the definitions held, not a round trip and a parse per job."""
        if len(names) > max(REFRESH_ONE_BY_ONE, len(self.jobs) // 10):
            return await self.resync()
        changed = [name for name in sorted(names) if self._adopt(name, await self.store.get_job(name))]
        self._changed_by_others(changed)
        return bool(changed)

    async def resync(self) -> bool:
        """Re-read every job from the store (after the notifications may have been missed): at
        every start on a shared store, so a definition equal to the one held is taken as it is,
        not parsed and validated again (100,000 jobs: seconds of the loop, with no heartbeat)."""
        known = {name: s.job for name, s in self.jobs.items()}
        stored = {s.job.name: s for s in await self.store.list_jobs_reusing(known)}
        names = sorted(stored.keys() | self.jobs.keys())
        changed = [name for name in names if self._adopt(name, stored.get(name))]
        self._changed_by_others(changed)
        return bool(changed)

    def _adopt(self, name: str, stored: StoredJob | None) -> bool:
        cur = self.jobs.get(name)
        if stored is None:
            if cur is None:
                return False
            self.jobs.pop(name, None)
            self.scheduler.remove_job(name)
        elif cur is not None and (cur.job, cur.origin, cur.paused) == (
            stored.job,
            stored.origin,
            stored.paused,
        ):
            return False
        else:
            self._install(stored)
        return True

    def _changed_by_others(self, names: list[str]) -> None:
        if not names:
            return
        self.metrics.jobs.set(len(self.jobs))
        if len(names) <= LOGGED_ONE_BY_ONE:
            for name in names:
                log.info("job changed by another replica", job=name, deleted=name not in self.jobs)
        else:  # 100,000 lines for one start of another replica said nothing more than this one
            log.info("jobs changed by another replica", jobs=len(names), first=names[:LOGGED_ONE_BY_ONE])

    def time_job(self, name: str) -> tuple[Job, bool] | None:
        """A job's definition and whether it is paused (for fires kept while the store was failing)."""
        stored = self.jobs.get(name)
        return (stored.job, stored.paused) if stored is not None else None

    def job_defs(self) -> list[Job]:
        return [s.job for s in self.jobs.values()]


def _refuse_loops(jobs: list[Job]) -> None:
    loop = find_cycle(jobs)
    if loop is not None:
        message = f"after triggers make a loop ({' → '.join(loop)}): a chain must end"
        raise JobFileError([DefinitionError("job files", None, "triggers", message, loop[0])])


def _log_skipped(skipped: list[DefinitionError]) -> None:
    if skipped:
        log.error(
            "job file rows skipped (the other rows are loaded)",
            errors=[str(e) for e in skipped],
            hint="jobwire check <file> lists them",
        )


def _csv_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(path.rglob("*.csv"))
    return [path] if path.suffix == ".csv" else []


def _mtimes(path: Path) -> dict[Path, float]:
    if path.is_dir():
        files = [*path.rglob("*.y*ml"), *path.rglob("*.json"), *path.rglob("*.csv")]  # .json: seed 003's form
        return {p: p.stat().st_mtime for p in sorted(files)}
    return {path: path.stat().st_mtime} if path.exists() else {}



async def warm(
    jobs: Mapping[str, StoredJob], targets: Mapping[str, Target], names: list[str], due: float
) -> None:
    """Ahead of a time trigger's due time (`TimeScheduler` → `Engine`), each due job's target warms
    what its run will need (`Target.prepare`), a hundred jobs per turn of the loop, stopping at the
    due time: 1,000 HTTP jobs due at one second each built its request in the burst before."""
    for i, name in enumerate(names):
        if i % 100 == 99:
            await asyncio.sleep(0)
            if time.time() >= due:
                return
        stored = jobs.get(name)
        target = targets.get(stored.job.target.type) if stored is not None else None
        if stored is not None and target is not None:
            target.prepare(stored.job)


__all__ = ["JobRegistry", "warm"]
