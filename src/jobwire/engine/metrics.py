"""Prometheus metrics. Labels are job names, sources, states and sink kinds — never parameters,
payloads or anything a secret could hide in."""

from __future__ import annotations

import math
from bisect import bisect_left
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client import Counter as _Counter
from prometheus_client import Gauge as _Gauge
from prometheus_client import Histogram as _Histogram

_FAST = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class _Value:
    """A metric's value without prometheus-client's lock: jobwire changes its metrics on the event
    loop's thread only, and a scrape reads them (a float read is atomic). The lock, and the two
    checks around it, made each `inc` 0.7–1.7 µs and each `observe` 2.2 µs on the build machine —
    ~10 of them per run."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float) -> None:
        self.value += amount

    def set(self, value: float, timestamp: float | None = None) -> None:
        self.value = value

    def get(self) -> float:
        return self.value

    def set_exemplar(self, exemplar: Any) -> None:
        raise NotImplementedError("jobwire's metrics keep no exemplars")

    def get_exemplar(self) -> None:
        return None


class _Unobservable:
    """Where a labelled metric's own value would be. prometheus-client makes values only for a
    metric without labels and for its `labels(...)` children (`_metric_init`), so changing the
    labelled metric itself reaches this class attribute and is refused with prometheus-client's
    error type — no check per call."""

    @property
    def value(self) -> float:
        raise ValueError("a metric with labels is changed through its labels(...) child")

    @value.setter
    def value(self, _: float) -> None:
        raise ValueError("a metric with labels is changed through its labels(...) child")


_UNOBSERVABLE: Any = _Unobservable()


class Counter(_Counter):
    """prometheus-client's Counter, exposed the same, on a `_Value`."""

    _value = _UNOBSERVABLE

    def _metric_init(self) -> None:
        super()._metric_init()
        self._value = _Value()

    def inc(self, amount: float = 1, exemplar: dict[str, str] | None = None) -> None:
        if amount < 0 or exemplar is not None:
            super().inc(amount, exemplar)  # its error (a negative amount) or its exemplar
            return
        self._value.value += amount


class Gauge(_Gauge):
    """prometheus-client's Gauge (live values, no multiprocess mode), on a `_Value`."""

    _value = _UNOBSERVABLE

    def _metric_init(self) -> None:
        super()._metric_init()
        self._value = _Value()

    def inc(self, amount: float = 1) -> None:
        self._value.value += amount

    def dec(self, amount: float = 1) -> None:
        self._value.value -= amount

    def set(self, value: float) -> None:
        self._value.value = float(value)


class Histogram(_Histogram):
    """prometheus-client's Histogram, exposed the same, on `_Value`s; the bucket found by bisection."""

    _sum = _UNOBSERVABLE

    def _metric_init(self) -> None:
        super()._metric_init()
        self._sum = _Value()
        self._buckets = [_Value() for _ in self._upper_bounds]

    def observe(self, amount: float, exemplar: dict[str, str] | None = None) -> None:
        if exemplar is not None:
            super().observe(amount, exemplar)
            return
        self._sum.value += amount
        if not math.isnan(amount):  # in no bucket, as prometheus-client does (NaN <= bound is false)
            self._buckets[bisect_left(self._upper_bounds, amount)].value += 1


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.events = Counter("jobwire_events_total", "Events recorded", ["source", "outcome"], registry=r)
        self.runs_finished = Counter(
            "jobwire_runs_finished_total", "Runs ended", ["job", "state"], registry=r
        )
        self.runs_active = Gauge(
            "jobwire_runs_active", "Runs queued, pending or running", ["state"], registry=r
        )
        # by target kind, not by job: a histogram per job is 12 series each (120,000 with 10,000
        # jobs) and its first observation costs ~0.1 ms; per-job counts are in runs_finished
        self.run_seconds = Histogram(
            "jobwire_run_duration_seconds",
            "Run wall time",
            ["target"],
            registry=r,
            buckets=(0.01, 0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600),
        )
        self.dispatch_seconds = Histogram(
            "jobwire_dispatch_latency_seconds", "Event received → target started", registry=r, buckets=_FAST
        )
        self.lateness_seconds = Histogram(
            "jobwire_schedule_lateness_seconds", "Time trigger fired − due", registry=r, buckets=_FAST
        )
        self.commit_seconds = Histogram(
            "jobwire_store_commit_seconds", "One group commit", registry=r, buckets=_FAST
        )
        self.batch_size = Histogram(
            "jobwire_store_batch_size",
            "Writes per group commit",
            registry=r,
            buckets=(1, 2, 5, 10, 50, 100, 500, 1000, 2000, 5000),
        )
        self.store_items_refused = Counter(
            "jobwire_store_items_refused_total",
            "Events or run updates the store refused on their own (their batch was committed without them)",
            registry=r,
        )
        self.outbox_pending = Gauge(
            "jobwire_outbox_pending", "Status documents waiting in the outbox for a durable sink", ["sink"],
            registry=r,
        )
        self.outbox_published = Counter(
            "jobwire_outbox_published_total", "Outbox documents the sink confirmed", ["sink"], registry=r
        )
        self.sink_failures = Counter("jobwire_sink_failures_total", "Failed publishes", ["sink"], registry=r)
        self.sink_dropped = Counter(
            "jobwire_sink_dropped_total", "Documents given up on", ["sink"], registry=r
        )
        # the live stream (`GET /stream`)
        self.stream_clients = Gauge("jobwire_stream_clients", "Connected status-stream clients", registry=r)
        self.stream_missed = Counter(
            "jobwire_stream_missed_total",
            "Status documents stream clients fell too far behind to get (each told in `event: lagged`)",
            registry=r,
        )
        self.stream_stalled = Counter(
            "jobwire_stream_stalled_total", "Stream clients disconnected because they stopped reading",
            registry=r,
        )
        self.retention_deleted = Counter(
            "jobwire_retention_deleted_total", "Deleted by retention", ["kind"], registry=r
        )
        self.jobs = Gauge("jobwire_jobs", "Jobs defined", registry=r)
        # supervision of background tasks (engine/supervisor.py) and store-write health: the task
        # label is a fixed task name (jobwire-committer, jobwire-reload, ...), never user input
        self.task_up = Gauge(
            "jobwire_task_up", "1 while a supervised background task runs, 0 while it is down", ["task"],
            registry=r,
        )
        self.task_restarts = Counter(
            "jobwire_task_restarts_total", "Restarts of a background task after it failed", ["task"],
            registry=r,
        )
        self.task_failures = Counter(
            "jobwire_task_failures_total", "One-shot background tasks that raised", ["task"], registry=r
        )
        self.store_write_failures = Counter(
            "jobwire_store_write_failures_total", "Group commits that failed (nothing in them acknowledged)",
            registry=r,
        )
        self.store_write_failing = Gauge(
            "jobwire_store_write_failing", "1 while store writes fail (e.g. a full disk), else 0", registry=r
        )
        self.launch_backlog = Gauge(
            "jobwire_launch_backlog",
            "Recorded runs waiting for a place on their target (engine/backlog.py)",
            ["target"],
            registry=r,
        )
        self.fires_pending = Gauge(
            "jobwire_fires_pending", "Time-trigger fires waiting to be recorded (retried with backoff)",
            registry=r,
        )
        # replicas (engine/replicas.py, docs/replicas.md); replica ids are uuids or the operator's
        # JOBWIRE_REPLICA_ID, never user input
        self.replica_info = Gauge(
            "jobwire_replica_info", "This replica: 1, labelled with its id and role", ["replica", "role"],
            registry=r,
        )
        self.leader = Gauge("jobwire_leader", "1 while this replica holds the leader lease", registry=r)
        self.lease_token = Gauge(
            "jobwire_replica_lease_token", "Fencing token of the leader lease this replica holds (0: none)",
            registry=r,
        )
        self.replica_heartbeat = Gauge(
            "jobwire_replica_heartbeat_timestamp_seconds", "When this replica last wrote its heartbeat",
            registry=r,
        )
        self.replicas = Gauge(
            "jobwire_replicas", "Replicas in the store's registry, alive or dead (as of the last heartbeat)",
            ["state"], registry=r,
        )
        self.leader_changes = Counter(
            "jobwire_replica_leader_acquired_total", "Times this replica took the leader lease", registry=r
        )
        self.runs_taken_over = Counter(
            "jobwire_replica_runs_taken_over_total", "Active runs of dead replicas claimed by this one",
            registry=r,
        )
        self.fires_fenced = Counter(
            "jobwire_replica_fires_refused_total",
            "Time-trigger fires refused because this replica was not (or no longer) the leader",
            registry=r,
        )


class Children:
    """A labelled metric's children by label values, each made once: `labels()` per event or run
    was ~1–4 µs on the hot path (~4 % of a 10,000-run burst). At most `limit` kept (labels with job
    names come and go), then forgotten all at once and made again."""

    def __init__(self, metric: Any, limit: int = 10_000) -> None:
        self._metric = metric
        self._limit = limit
        self._made: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self._made.get(values)
        if child is None:
            if len(self._made) >= self._limit:
                self._made.clear()
            child = self._made[values] = self._metric.labels(*values)
        return child
