"""engine/metrics.py's Counter, Gauge and Histogram keep their values without prometheus-client's
lock: what a scrape shows, and what they refuse, must be what prometheus-client's own classes give
for the same calls."""

from __future__ import annotations

import random
from typing import Any

import prometheus_client as stock
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from jobwire.engine import metrics as ours

BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


def build(mod: Any) -> tuple[CollectorRegistry, Any, Any, Any, Any]:
    r = CollectorRegistry()
    return (
        r,
        mod.Counter("t_events_total", "events", ["source"], registry=r),
        mod.Gauge("t_active", "active", ["state"], registry=r),
        mod.Histogram("t_seconds", "seconds", ["target"], registry=r, buckets=BUCKETS),
        mod.Histogram("t_plain_seconds", "unlabelled", registry=r, buckets=BUCKETS),
    )


def exposition(r: CollectorRegistry) -> list[str]:
    """The scrape without its `_created` lines (the time each child was made differs)."""
    return [line for line in generate_latest(r).decode().splitlines() if "_created" not in line]


def test_the_same_calls_give_the_same_scrape() -> None:
    rng = random.Random(7)
    both = [build(stock), build(ours)]
    values = [rng.choice([0.0, 0.0005, 0.001, 2.5, 3.0]) for _ in range(50)]  # bounds exactly, and above
    values += [rng.uniform(0, 4) for _ in range(2000)] + [float("nan"), float("inf")]
    for v in values:
        label = rng.choice(["cron", "api", "amqp"])
        amount = rng.choice([1, 2, 0.5])
        for _, counter, gauge, hist, plain in both:
            counter.labels(label).inc(amount)
            gauge.labels(label).inc(amount)
            gauge.labels(label).dec(amount / 2)
            hist.labels(label).observe(v)
            plain.observe(v)
    for _, _, gauge, _, _ in both:
        gauge.labels("set").set(42)
    assert exposition(both[1][0]) == exposition(both[0][0])
    assert len(exposition(both[0][0])) > 50


@pytest.mark.parametrize("mod", [stock, ours], ids=["prometheus-client", "jobwire"])
def test_the_same_calls_are_refused(mod: Any) -> None:
    _, counter, gauge, hist, _ = build(mod)
    for call in (counter.inc, gauge.inc, gauge.dec, lambda: gauge.set(1), lambda: hist.observe(1)):
        with pytest.raises(ValueError):
            call()  # a labelled metric changed without labels(...)
    with pytest.raises(ValueError):
        counter.labels("api").inc(-1)
