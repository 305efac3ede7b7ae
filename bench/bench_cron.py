"""Microbenchmark: microseconds per "next fire time after t" for jobwire.cron, cronsim and croniter.

Each call starts from a fresh instant (what the scheduler does when it re-arms a trigger after it fires),
so cronsim and croniter are constructed per call, as they would have to be. The instants walk forward
through a year so caches see realistic traffic. Run: .venv/bin/python bench/bench_cron.py
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo

from croniter import croniter
from cronsim import CronSim

from jobwire.cron import CronExpr, parse

EXPRESSIONS = [
    "*/5 * * * *",
    "0 * * * *",
    "30 2 * * *",
    "0 9 * * MON-FRI",
    "0 0 1 * *",
    "0 9 * * MON#2",
    "*/10 * * * * *",
]
ZONES: list[tzinfo] = [UTC, ZoneInfo("America/New_York")]
N = 1000  # calls per timed run for jobwire (the others are slower: a fifth of the instants)
REPEATS = 25  # timed runs for jobwire, the best one counts (5 for the others)


def instants(n: int, tz: tzinfo) -> list[datetime]:
    base = datetime(2025, 1, 1, tzinfo=UTC)
    step = timedelta(days=365) / n
    return [(base + i * step + timedelta(seconds=i % 60)).astimezone(tz) for i in range(n)]


def per_call_us(fn: Callable[[datetime], object], starts: list[datetime], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for t in starts:
            fn(t)
        best = min(best, (time.perf_counter() - t0) / len(starts))
    return best * 1e6


def ours(e: CronExpr, tz: tzinfo) -> Callable[[datetime], object]:
    return lambda t: e.next_after(t, tz)


def with_cronsim(expr: str) -> Callable[[datetime], object]:
    return lambda t: next(CronSim(expr, t))


def with_croniter(expr: str) -> Callable[[datetime], object]:
    six = len(expr.split()) == 6
    return lambda t: croniter(expr, t, second_at_beginning=six).get_next(datetime)


def main() -> None:
    print(
        f"microseconds per next-fire-time call (best of {REPEATS} runs of {N} calls for jobwire, 5 x {N // 5})\n"
    )
    header = f"{'zone':<18} {'expression':<18} {'jobwire':>8} {'cronsim':>8} {'croniter':>8} {'speed-up':>8}"
    print(header)
    print("-" * len(header))
    speedups = []
    for tz in ZONES:
        starts = instants(N, tz)
        for expr in EXPRESSIONS:
            a = per_call_us(ours(parse(expr), tz), starts, REPEATS)
            b = per_call_us(with_cronsim(expr), starts[::5], 5)
            c = per_call_us(with_croniter(expr), starts[::5], 5)
            speedups.append(min(b, c) / a)
            print(f"{tz!s:<18} {expr:<18} {a:>8.2f} {b:>8.1f} {c:>8.1f} {min(b, c) / a:>7.0f}x")
    print(f"\nmedian speed-up over the faster of cronsim and croniter: {statistics.median(speedups):.0f}x")


if __name__ == "__main__":
    main()
