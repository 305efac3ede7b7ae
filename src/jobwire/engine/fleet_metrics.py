"""The fleet launcher's metrics (`engine/fleet.py`; docs/fleet.md, "Metrics")."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class FleetMetrics:
    def __init__(self, r: CollectorRegistry) -> None:
        self.outstanding = Gauge(
            "jobwire_fleet_outstanding", "Runs handed to the runner fleet and not ended", registry=r
        )
        self.ready = Gauge(
            "jobwire_fleet_queue_ready", "Messages ready in a fleet queue (at the last scrape)", ["queue"],
            registry=r,
        )
        self.consumers = Gauge(
            "jobwire_fleet_queue_consumers", "Consumers of a fleet queue (at the last scrape)", ["queue"],
            registry=r,
        )
        self.published = Counter(
            "jobwire_fleet_published_total", "Work messages RabbitMQ confirmed", registry=r
        )
        self.results = Counter(
            "jobwire_fleet_results_total", "Results applied from runners", ["kind"], registry=r
        )
        self.ignored = Counter(
            "jobwire_fleet_results_ignored_total",
            "Results for a run or attempt no longer in flight (redeliveries, cancelled runs)",
            registry=r,
        )
        self.forwarded = Counter(
            "jobwire_fleet_results_forwarded_total",
            "Results for a run another scheduler replica holds, forwarded to its own queue",
            registry=r,
        )
        self.cancels = Counter(
            "jobwire_fleet_cancels_total", "Cancels put on the cancels stream for the runners", registry=r
        )

__all__ = ["FleetMetrics"]
