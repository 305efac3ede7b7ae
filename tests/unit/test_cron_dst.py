"""jobwire.cron across DST transitions, compared with cronsim step by step, plus the documented examples.

Policy (docs/cron.md, "Time zones and DST"): a 5-field expression whose minute and hour fields do not start
with '*' runs on the local wall clock; a time the clocks skip runs at the first minute after the jump, a
time the clocks repeat runs once (first occurrence). Every other expression (wildcard minute or hour, all
6-field expressions) fires at each real instant whose local time matches: skipped times don't happen,
repeated times happen twice.
"""

from __future__ import annotations

import functools
import random
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from cronsim import CronSim
from hypothesis import given, settings
from hypothesis import strategies as st

from jobwire.cron import CronError, parse

ZONES = [
    "Europe/London",
    "America/New_York",
    "Australia/Sydney",  # southern hemisphere: DST from October to April
    "Asia/Kolkata",  # no DST
    "Pacific/Chatham",  # +12:45/+13:45, transitions at 02:45/03:45
    "America/Santiago",  # transitions at midnight
    "Europe/Dublin",  # "negative DST" in tzdata (IST is standard time, GMT in winter)
]

WALL_CLOCK = [  # jobs at a specific time: Debian cron's DST rule
    "30 1 * * *",
    "0 2 * * *",
    "30 2 * * *",
    "45 2 * * *",
    "59 2 * * *",
    "0 3 * * *",
    "15 3 * * *",
    "50 3 * * *",
    "0 0 * * *",
    "30 0 * * *",
    "0 23 * * *",
    "30 23 * * *",
    "0,30 1,2 * * *",
    "0 1-3 * * *",
    "10-50/20 0-3 * * *",
    "0 0 * * SUN",
    "30 2 * * SUN",
    "0 0 * * SAT",
]
REAL_TIME = [  # wildcard minute or hour, and the seconds form: real elapsed time
    "*/15 * * * *",
    "0 * * * *",
    "30 * * * *",
    "45 * * * *",
    "*/20 1 * * *",
    "*/15 2 * * *",
    "* 2 * * *",
    "0 */2 * * *",
    "*/30 0-3 * * SUN",
    "*/30 23 * * SAT",
    "0 30 1 * * *",
    "0 0 2 * * *",
    "30 45 2 * * *",
    "0 */30 * * * *",
    "0 0 0 * * *",
    "15 59 * * * *",
]

# Where cronsim 2.8's step-by-step evaluation departs from its own rule ("jobs that run more frequently
# [than hourly] are scheduled normally"). Each is pinned down by an explicit test below.
CRONSIM_ARTIFACTS = {
    ("Pacific/Chatham", "*/15 2 * * *"),  # skips the repeated 02:45-02:59 in April
    ("Pacific/Chatham", "* 2 * * *"),
}


@functools.cache
def transitions(zone: str, first: int = 2024, last: int = 2027) -> tuple[datetime, ...]:
    """The instants (UTC) at which `zone` changes its UTC offset, found by daily probes and bisection."""
    tz = ZoneInfo(zone)
    found = []
    t = datetime(first, 1, 1, tzinfo=UTC)
    end = datetime(last + 1, 1, 1, tzinfo=UTC)
    while t < end:
        t2 = t + timedelta(days=1)
        if t.astimezone(tz).utcoffset() != t2.astimezone(tz).utcoffset():
            lo, hi = t, t2
            while hi - lo > timedelta(seconds=1):
                mid = lo + (hi - lo) / 2
                if mid.astimezone(tz).utcoffset() == lo.astimezone(tz).utcoffset():
                    lo = mid
                else:
                    hi = mid
            found.append(hi)
        t = t2
    return tuple(found)


def windows(zone: str) -> tuple[datetime, ...]:
    """Transition instants, or (no DST) a few ordinary instants."""
    return transitions(zone) or tuple(datetime(y, m, 1, tzinfo=UTC) for y in (2024, 2027) for m in (3, 10))


def cronsim_between(expr: str, start: datetime, until: datetime, tz: ZoneInfo) -> list[datetime]:
    it = CronSim(expr, start.astimezone(tz))
    out: list[datetime] = []
    for x in it:
        t = x.astimezone(UTC)
        if t > until:
            return out
        if t > start:
            out.append(t)
    return out  # pragma: no cover


def cronsim_next(expr: str, start: datetime, tz: ZoneInfo) -> datetime:
    """cronsim's first fire time strictly after `start` (cronsim itself may yield an earlier one when
    `start` is in a repeated interval: it runs on the wall clock)."""
    for x in CronSim(expr, start.astimezone(tz)):
        t = x.astimezone(UTC)
        if t > start:
            return t
    raise AssertionError("unreachable")  # pragma: no cover


def test_zones_have_the_expected_transitions() -> None:
    assert len(transitions("Asia/Kolkata")) == 0
    for zone in ZONES:
        if zone != "Asia/Kolkata":
            assert len(transitions(zone)) == 8, zone


@pytest.mark.parametrize("zone", ZONES)
@pytest.mark.parametrize("kind", ["wall_clock", "real_time"])
def test_sequences_across_transitions_match_cronsim(zone: str, kind: str) -> None:
    tz = ZoneInfo(zone)
    exprs = WALL_CLOCK if kind == "wall_clock" else REAL_TIME
    for center in windows(zone):
        start, until = center - timedelta(hours=27), center + timedelta(hours=27)
        for expr in exprs:
            if (zone, expr) in CRONSIM_ARTIFACTS:
                continue
            e = parse(expr)
            ours = list(e.fire_times(start, until, tz))
            assert ours == cronsim_between(expr, start, until, tz), (zone, center, expr)
            # fire_times is the chain of next_after: a scheduler that re-arms from each fire agrees.
            t, chained = start, []
            while (t := e.next_after(t, tz)) <= until:
                chained.append(t)
            assert chained == ours


@pytest.mark.parametrize("zone", ZONES)
def test_next_after_from_any_instant_near_transitions_matches_cronsim(zone: str) -> None:
    """Starts at odd instants before, inside and after each gap/overlap (including the second pass of a
    repeated hour, where cronsim's wall clock can yield a time before the start; we never do)."""
    tz = ZoneInfo(zone)
    exprs = [
        "30 1 * * *",
        "0 2 * * *",
        "50 3 * * *",
        "0 0 * * *",
        "0,30 1,2 * * *",
        "*/15 * * * *",
        "0 * * * *",
        "*/20 1 * * *",
        "0 30 1 * * *",
        "*/40 * * * * *",
    ]
    for center in windows(zone):
        for k in range(-11, 12):
            start = center + timedelta(seconds=k * 1019 + 0.25)
            for expr in exprs:
                if (zone, expr) in CRONSIM_ARTIFACTS:
                    continue
                got = parse(expr).next_after(start, tz)
                assert got > start
                assert got == cronsim_next(expr, start, tz), (zone, start.isoformat(), expr)


def biased_expression(rnd: random.Random) -> str:
    """A random expression whose times cluster where the clocks change (late evening to early morning)."""
    minute = rnd.choice(["0", "30", "45", "59", "*/15", "*/20", "*", "0,30", "15-45/15", "5/25"])
    hour = rnd.choice(["*", "0", "1", "2", "3", "23", "0-3", "*/2", "1,2", "2-3", "22-23", "1-4/3"])
    dom = rnd.choice(["*", "*", "*", "1-15", "L", "*/2", "LW", "20-31"])
    month = rnd.choice(["*", "*", "3,4,9,10,11", "MAR-APR", "OCT-NOV"])
    dow = rnd.choice(["*", "*", "*", "SUN", "SAT,SUN", "0L", "SUN#1", "MON-FRI", "6-7"])
    parts = [minute, hour, dom, month, dow]
    if rnd.random() < 0.3:
        parts.insert(0, rnd.choice(["0", "30", "*/20", "59"]))
    return " ".join(parts)


@settings(derandomize=True, database=None, deadline=None, max_examples=150)
@given(st.randoms(use_true_random=False))
def test_random_expressions_across_transitions_match_cronsim(rnd: random.Random) -> None:
    zone = rnd.choice(["Europe/London", "America/New_York", "Australia/Sydney", "Europe/Dublin"])
    tz = ZoneInfo(zone)
    center = rnd.choice(transitions(zone))
    expr = biased_expression(rnd)
    hours = 2 if len(expr.split()) == 6 else 8
    start = center - timedelta(seconds=rnd.randint(0, hours * 3600), microseconds=rnd.randint(0, 999999))
    until = center + timedelta(hours=hours)
    try:
        e = parse(expr)
    except CronError:
        return
    assert list(e.fire_times(start, until, tz)) == cronsim_between(expr, start, until, tz), (expr, zone)
    probe = center + timedelta(seconds=rnd.randint(-3 * 3600, 3 * 3600))
    assert e.next_after(probe, tz) == cronsim_next(expr, probe, tz), (expr, zone, probe)


# ---------------------------------------------------------------------------------------------------
# The documented examples (docs/cron.md, "Time zones and DST")


def fires(expr: str, zone: str, start: str, until: str) -> list[str]:
    """Fire times in (start, until], both given as local wall times in `zone`, as local ISO strings."""
    tz = ZoneInfo(zone)
    a = datetime.fromisoformat(start).replace(tzinfo=tz)
    b = datetime.fromisoformat(until).replace(tzinfo=tz)
    return [t.astimezone(tz).isoformat(timespec="minutes") for t in parse(expr).fire_times(a, b, tz)]


LONDON = "Europe/London"
NEW_YORK = "America/New_York"


@pytest.mark.parametrize(
    ("expr", "zone", "window", "expected"),
    [
        # Europe/London, Sunday 29 March 2026: 01:00 GMT -> 02:00 BST (01:00-01:59 does not exist).
        ("30 1 * * *", LONDON, ("2026-03-28T12:00", "2026-03-30T12:00"), ["2026-03-29T02:00+01:00", "2026-03-30T01:30+01:00"]),
        ("0 1 * * *", LONDON, ("2026-03-29T00:00", "2026-03-29T12:00"), ["2026-03-29T02:00+01:00"]),
        ("0,30 1 * * *", LONDON, ("2026-03-29T00:00", "2026-03-29T12:00"), ["2026-03-29T02:00+01:00"]),
        ("30 2 * * *", LONDON, ("2026-03-29T00:00", "2026-03-29T12:00"), ["2026-03-29T02:30+01:00"]),
        ("*/30 * * * *", LONDON, ("2026-03-29T00:00", "2026-03-29T02:30"), ["2026-03-29T00:30+00:00", "2026-03-29T02:00+01:00", "2026-03-29T02:30+01:00"]),
        ("0 * * * *", LONDON, ("2026-03-28T23:30", "2026-03-29T03:00"), ["2026-03-29T00:00+00:00", "2026-03-29T02:00+01:00", "2026-03-29T03:00+01:00"]),
        ("*/20 1 * * *", LONDON, ("2026-03-29T00:00", "2026-03-29T12:00"), []),
        ("0 30 1 * * *", LONDON, ("2026-03-29T00:00", "2026-03-29T12:00"), []),
        # Europe/London, Sunday 25 October 2026: 02:00 BST -> 01:00 GMT (01:00-01:59 happens twice).
        ("30 1 * * *", LONDON, ("2026-10-25T00:00", "2026-10-25T12:00"), ["2026-10-25T01:30+01:00"]),
        ("*/30 * * * *", LONDON, ("2026-10-25T00:45", "2026-10-25T02:00"), ["2026-10-25T01:00+01:00", "2026-10-25T01:30+01:00", "2026-10-25T01:00+00:00", "2026-10-25T01:30+00:00", "2026-10-25T02:00+00:00"]),
        ("0 * * * *", LONDON, ("2026-10-24T23:30", "2026-10-25T02:00"), ["2026-10-25T00:00+01:00", "2026-10-25T01:00+01:00", "2026-10-25T01:00+00:00", "2026-10-25T02:00+00:00"]),
        ("0 30 1 * * *", LONDON, ("2026-10-25T00:00", "2026-10-25T12:00"), ["2026-10-25T01:30+01:00", "2026-10-25T01:30+00:00"]),
        ("0,30 1 * * *", LONDON, ("2026-10-25T00:00", "2026-10-25T12:00"), ["2026-10-25T01:00+01:00", "2026-10-25T01:30+01:00"]),
        ("30 2 * * *", LONDON, ("2026-10-25T00:00", "2026-10-25T12:00"), ["2026-10-25T02:30+00:00"]),
        ("*/20 1 * * *", LONDON, ("2026-10-25T00:00", "2026-10-25T12:00"), ["2026-10-25T01:00+01:00", "2026-10-25T01:20+01:00", "2026-10-25T01:40+01:00", "2026-10-25T01:00+00:00", "2026-10-25T01:20+00:00", "2026-10-25T01:40+00:00"]),
        # America/New_York, Sunday 8 March 2026: 02:00 EST -> 03:00 EDT.
        ("30 1 * * *", NEW_YORK, ("2026-03-08T00:00", "2026-03-08T12:00"), ["2026-03-08T01:30-05:00"]),
        ("0 * * * *", NEW_YORK, ("2026-03-08T00:30", "2026-03-08T03:00"), ["2026-03-08T01:00-05:00", "2026-03-08T03:00-04:00"]),
        ("*/20 1 * * *", NEW_YORK, ("2026-03-08T00:00", "2026-03-08T12:00"), ["2026-03-08T01:00-05:00", "2026-03-08T01:20-05:00", "2026-03-08T01:40-05:00"]),
        ("30 2 * * *", NEW_YORK, ("2026-03-08T00:00", "2026-03-08T12:00"), ["2026-03-08T03:00-04:00"]),
        ("0 2 * * *", NEW_YORK, ("2026-03-08T00:00", "2026-03-08T12:00"), ["2026-03-08T03:00-04:00"]),
        ("30 3 * * *", NEW_YORK, ("2026-03-08T00:00", "2026-03-08T12:00"), ["2026-03-08T03:30-04:00"]),
        ("*/30 * * * *", NEW_YORK, ("2026-03-08T01:00", "2026-03-08T03:30"), ["2026-03-08T01:30-05:00", "2026-03-08T03:00-04:00", "2026-03-08T03:30-04:00"]),
        # America/New_York, Sunday 1 November 2026: 02:00 EDT -> 01:00 EST.
        ("30 2 * * *", NEW_YORK, ("2026-11-01T00:00", "2026-11-01T12:00"), ["2026-11-01T02:30-05:00"]),
        ("0 2 * * *", NEW_YORK, ("2026-11-01T00:00", "2026-11-01T12:00"), ["2026-11-01T02:00-05:00"]),
        ("30 3 * * *", NEW_YORK, ("2026-11-01T00:00", "2026-11-01T12:00"), ["2026-11-01T03:30-05:00"]),
        ("*/30 * * * *", NEW_YORK, ("2026-11-01T00:45", "2026-11-01T02:00"), ["2026-11-01T01:00-04:00", "2026-11-01T01:30-04:00", "2026-11-01T01:00-05:00", "2026-11-01T01:30-05:00", "2026-11-01T02:00-05:00"]),
        ("30 1 * * *", NEW_YORK, ("2026-11-01T00:00", "2026-11-01T12:00"), ["2026-11-01T01:30-04:00"]),
        ("0 1 * * *", NEW_YORK, ("2026-11-01T00:00", "2026-11-01T12:00"), ["2026-11-01T01:00-04:00"]),
        ("*/20 1 * * *", NEW_YORK, ("2026-11-01T00:00", "2026-11-01T12:00"), ["2026-11-01T01:00-04:00", "2026-11-01T01:20-04:00", "2026-11-01T01:40-04:00", "2026-11-01T01:00-05:00", "2026-11-01T01:20-05:00", "2026-11-01T01:40-05:00"]),
        ("0 * * * *", NEW_YORK, ("2026-11-01T00:30", "2026-11-01T02:00"), ["2026-11-01T01:00-04:00", "2026-11-01T01:00-05:00", "2026-11-01T02:00-05:00"]),
        # Australia/Sydney: 5 April 2026 03:00 AEDT -> 02:00 AEST; 4 October 2026 02:00 AEST -> 03:00 AEDT.
        ("30 2 * * *", "Australia/Sydney", ("2026-04-05T00:00", "2026-04-05T12:00"), ["2026-04-05T02:30+11:00"]),
        ("30 2 * * *", "Australia/Sydney", ("2026-10-04T00:00", "2026-10-04T12:00"), ["2026-10-04T03:00+11:00"]),
        # Pacific/Chatham: 27 September 2026 02:45 -> 03:45 (+12:45 -> +13:45).
        ("0 3 * * *", "Pacific/Chatham", ("2026-09-27T00:00", "2026-09-27T12:00"), ["2026-09-27T03:45+13:45"]),
        ("50 3 * * *", "Pacific/Chatham", ("2026-09-27T00:00", "2026-09-27T12:00"), ["2026-09-27T03:50+13:45"]),
        ("0 * * * *", "Pacific/Chatham", ("2026-09-27T01:30", "2026-09-27T04:00"), ["2026-09-27T02:00+12:45", "2026-09-27T04:00+13:45"]),
        # America/Santiago: Sunday 6 September 2026, 00:00 -> 01:00 (-04 -> -03).
        ("0 0 * * *", "America/Santiago", ("2026-09-05T12:00", "2026-09-06T12:00"), ["2026-09-06T01:00-03:00"]),
        ("30 0 * * SUN", "America/Santiago", ("2026-09-05T12:00", "2026-09-06T12:00"), ["2026-09-06T01:00-03:00"]),
        ("0 0 0 * * *", "America/Santiago", ("2026-09-05T12:00", "2026-09-07T12:00"), ["2026-09-07T00:00-03:00"]),
        # Europe/Dublin behaves like London (tzdata's negative DST changes nothing on the clock).
        ("30 1 * * *", "Europe/Dublin", ("2026-03-29T00:00", "2026-03-29T12:00"), ["2026-03-29T02:00+01:00"]),
        ("30 1 * * *", "Europe/Dublin", ("2026-10-25T00:00", "2026-10-25T12:00"), ["2026-10-25T01:30+01:00"]),
        # Asia/Kolkata: no DST, +05:30 all year.
        ("30 2 * * *", "Asia/Kolkata", ("2026-03-29T00:00", "2026-03-30T12:00"), ["2026-03-29T02:30+05:30", "2026-03-30T02:30+05:30"]),
    ],
)  # fmt: skip
def test_documented_examples(expr: str, zone: str, window: tuple[str, str], expected: list[str]) -> None:
    assert fires(expr, zone, *window) == expected


def test_brief_example_london_0130_fires_at_0100_utc() -> None:
    tz = ZoneInfo(LONDON)
    got = parse("30 1 * * *").next_after(datetime(2026, 3, 28, 12, tzinfo=UTC), tz)
    assert got == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)


def test_start_inside_the_repeated_hour_never_goes_back() -> None:
    """cronsim yields 01:45 EDT from 01:15 EST (its wall clock doesn't know which 01:15 it is); a fire
    time must be after the start, and the first pass of 01:xx has already happened."""
    tz = ZoneInfo(NEW_YORK)
    start = datetime(2026, 11, 1, 1, 15, fold=1, tzinfo=tz)  # 01:15 EST, second pass
    assert start.utcoffset() == timedelta(hours=-5)
    assert parse("45 1 * * *").next_after(start, tz) == datetime(2026, 11, 2, 6, 45, tzinfo=UTC)
    two_est = datetime(2026, 11, 1, 7, 0, tzinfo=UTC)
    assert parse("0-59 0-2 * * *").next_after(start, tz) == two_est
    one_thirty_est = datetime(2026, 11, 1, 6, 30, tzinfo=UTC)
    assert parse("*/30 1 * * *").next_after(start, tz) == one_thirty_est  # real time: the second pass


# ---------------------------------------------------------------------------------------------------
# Where we deliberately differ from cronsim 2.8's step-by-step evaluation (its README's own rule is that
# such jobs "are scheduled normally"; these results are what that rule gives, consistently with the other
# zones). cronsim's output is noted in each comment.


def test_chatham_repeated_quarter_hour_runs_twice_like_any_repeated_time() -> None:
    # Pacific/Chatham, 5 April 2026: 03:45 +13:45 -> 02:45 +12:45, so 02:45-03:44 happens twice.
    # cronsim skips the second 02:45 (it jumps from 03:00 +13:45 by whole hours to 04:00 +12:45);
    # New York's '*/15 1 * * *' does fire both passes of its repeated hour, in cronsim too.
    got = fires("*/15 2 * * *", "Pacific/Chatham", "2026-04-05T01:00", "2026-04-05T12:00")
    assert got == [
        "2026-04-05T02:00+13:45",
        "2026-04-05T02:15+13:45",
        "2026-04-05T02:30+13:45",
        "2026-04-05T02:45+13:45",
        "2026-04-05T02:45+12:45",
    ]


def test_santiago_missing_midnight_is_skipped_for_real_time_jobs() -> None:
    # America/Santiago, Sunday 6 September 2026: 00:00 -03... does not exist (clocks go 23:59:59 -> 01:00).
    # A 6-field job at 00:00:00 does not run that day; cronsim runs '0 0 0 * * SUN' at 01:00 but not
    # '0 0 0 * * *' (which it skips that Sunday, as we do).
    assert fires("0 0 0 * * SUN", "America/Santiago", "2026-09-05T12:00", "2026-09-13T12:00") == [
        "2026-09-13T00:00-03:00"
    ]
    # ... and a real-time job in the hour after the jump runs normally; cronsim misses this hour when the
    # day field is restricted ('*/30 1 * * SUN') but not when it is '*' ('*/30 1 * * *').
    assert fires("*/30 1 * * SUN", "America/Santiago", "2026-09-05T12:00", "2026-09-06T12:00") == [
        "2026-09-06T01:00-03:00",
        "2026-09-06T01:30-03:00",
    ]


def test_lord_howe_half_hour_shift() -> None:
    # Australia/Lord_Howe moves by 30 minutes: 4 October 2026 02:00 +10:30 -> 02:30 +11:00.
    # An hourly job at :30 runs at 02:30 +11:00, the first instant after the jump (cronsim: 03:30).
    assert fires("30 * * * *", "Australia/Lord_Howe", "2026-10-04T01:00", "2026-10-04T03:30") == [
        "2026-10-04T01:30+10:30",
        "2026-10-04T02:30+11:00",
        "2026-10-04T03:30+11:00",
    ]
    # 5 April 2026 02:00 +11:00 -> 01:30 +10:30: 01:30-01:59 happens twice.
    assert fires("30 * * * *", "Australia/Lord_Howe", "2026-04-05T00:00", "2026-04-05T02:30") == [
        "2026-04-05T00:30+11:00",
        "2026-04-05T01:30+11:00",
        "2026-04-05T01:30+10:30",
        "2026-04-05T02:30+10:30",
    ]
    # Jobs at a specific time follow the wall-clock rule there too (and agree with cronsim).
    assert fires("15 2 * * *", "Australia/Lord_Howe", "2026-10-04T00:00", "2026-10-04T12:00") == [
        "2026-10-04T02:30+11:00"
    ]
