"""jobwire.cron: syntax, semantics and errors, checked against cronsim and croniter as oracles."""

from __future__ import annotations

import pickle
import random
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter
from cronsim import CronSim, CronSimError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobwire.cron import CronError, CronExpr, parse

SETTINGS = settings(
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

MONTHS = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
DAYS = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"]

# Zones whose transitions are on the hour and not at midnight: there cronsim's step-by-step evaluation
# and ours agree exactly (see test_cron_dst.py for the zones where they do not).
ORACLE_ZONES: list[tzinfo] = [
    UTC,
    ZoneInfo("UTC"),
    ZoneInfo("Europe/London"),
    ZoneInfo("America/New_York"),
    ZoneInfo("Australia/Sydney"),
    ZoneInfo("Asia/Kolkata"),
    ZoneInfo("Europe/Dublin"),
]

LIMITS = {
    "second": (0, 59),
    "minute": (0, 59),
    "hour": (0, 23),
    "dom": (1, 31),
    "month": (1, 12),
    "dow": (0, 7),
}


def d(s: str, tz: str | None = None) -> datetime:
    """An aware datetime from ISO text (naive text is taken in `tz`, default UTC)."""
    dt = datetime.fromisoformat(s)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=ZoneInfo(tz) if tz else UTC)
    return dt


def chain(expr: str, start: datetime, tz: tzinfo, n: int) -> list[datetime]:
    e = parse(expr)
    out: list[datetime] = []
    t = start
    for _ in range(n):
        t = e.next_after(t, tz)
        out.append(t)
    return out


def cronsim_after(expr: str, start: datetime, tz: tzinfo, n: int) -> list[datetime] | None:
    """cronsim's first n fire times strictly after `start`, as UTC instants; None if it gives up."""
    it = CronSim(expr, start.astimezone(tz))
    out: list[datetime] = []
    try:
        while len(out) < n:
            x = next(it).astimezone(UTC)
            if x > start:
                out.append(x)
    except StopIteration:
        return None
    return out


# ---------------------------------------------------------------------------------------------------
# Strategies: random valid expressions


# Expressions are built from a hypothesis-controlled Random: much cheaper than composing hundreds of small
# strategies, still deterministic, and a failure prints the expression itself.


def _value(rnd: random.Random, field: str, v: int) -> str:
    if field == "month" and rnd.random() < 0.5:
        name = MONTHS[v - 1]
        return rnd.choice([name, name.lower(), name.title()])
    if field == "dow" and v < 7 and rnd.random() < 0.35:
        return rnd.choice([DAYS[v], DAYS[v].lower()])
    return str(v)


def _term(rnd: random.Random, field: str, croniter_safe: bool) -> str:
    lo, hi = LIMITS[field]
    kinds = ["value", "value", "range", "range_step", "start_step", "star_step"]
    if croniter_safe and field in ("dom", "dow"):
        kinds = ["value", "value", "range", "range_step"]
    kind = rnd.choice(kinds)
    if kind == "value":
        return _value(rnd, field, rnd.randint(lo, hi))
    if kind == "star_step":
        return f"*/{rnd.randint(1, hi + 5)}"
    if kind == "start_step":
        return f"{_value(rnd, field, rnd.randint(lo, hi))}/{rnd.randint(1, hi)}"
    a = rnd.randint(lo, hi - 1)
    # croniter reads a one-value range such as '0-0' in the seconds field as '*'.
    b = rnd.randint(a if kind == "range" and not croniter_safe else a + 1, hi)
    text = f"{_value(rnd, field, a)}-{_value(rnd, field, b)}"
    if kind == "range_step":
        text += f"/{rnd.randint(1, hi)}"
    return text


def _field(rnd: random.Random, field: str, croniter_safe: bool) -> str:
    if rnd.random() < 0.3:
        return "*"
    terms = [_term(rnd, field, croniter_safe) for _ in range(rnd.choice([1, 1, 1, 2, 3]))]
    if not croniter_safe:
        if field == "dom" and rnd.random() < 0.15:
            terms.append(rnd.choice(["L", "LW"]))
        if field == "dow" and rnd.random() < 0.2:
            w = rnd.randint(0, 7)
            terms.append(rnd.choice([f"{w}L", f"{w}#{rnd.randint(1, 5)}"]))
    return ",".join(terms)


def gen_expression(rnd: random.Random, seconds: bool, croniter_safe: bool = False) -> str:
    fields = ["minute", "hour", "dom", "month", "dow"]
    parts = [_field(rnd, f, croniter_safe) for f in fields]
    if croniter_safe and parts[2] != "*" and parts[4] != "*" and rnd.random() < 0.5:
        parts[rnd.choice([2, 4])] = "*"
    if seconds:
        parts.insert(0, _field(rnd, "second", croniter_safe))
    return " ".join(parts)


def expression(*, seconds: bool, croniter_safe: bool = False) -> st.SearchStrategy[str]:
    return st.randoms(use_true_random=False).map(lambda r: gen_expression(r, seconds, croniter_safe))


starts = st.datetimes(
    min_value=datetime(2020, 1, 1), max_value=datetime(2030, 12, 31), timezones=st.just(UTC)
)


def check_against_cronsim(expr: str, start: datetime, tz: tzinfo, n: int = 4) -> None:
    try:
        e = parse(expr)
    except CronError as exc:
        # We reject expressions that can never fire; cronsim rejects some and gives up on the others.
        assert " never match" in str(exc), str(exc)
        try:
            assert cronsim_after(expr, start, tz, 1) is None
        except CronSimError:
            pass
        return
    expected = cronsim_after(expr, start, tz, n)
    if expected is None:  # cronsim gives up after 50 years without a match; we keep looking
        first = e.next_after(start, tz)
        assert first - start > timedelta(days=365 * 28)
        return
    assert chain(expr, start, tz, n) == expected


@settings(SETTINGS, max_examples=400)
@given(expression(seconds=False), starts, st.sampled_from(ORACLE_ZONES))
def test_random_5_field_matches_cronsim(expr: str, start: datetime, tz: tzinfo) -> None:
    check_against_cronsim(expr, start, tz)


@settings(SETTINGS, max_examples=200)
@given(expression(seconds=True), starts, st.sampled_from(ORACLE_ZONES))
def test_random_6_field_matches_cronsim(expr: str, start: datetime, tz: tzinfo) -> None:
    check_against_cronsim(expr, start, tz)


@settings(SETTINGS, max_examples=250)
@given(expression(seconds=True, croniter_safe=True), starts)
def test_random_6_field_matches_croniter(expr: str, start: datetime) -> None:
    try:
        e = parse(expr)
    except CronError as exc:
        assert "never match" in str(exc)
        return
    it = croniter(expr, start, second_at_beginning=True)
    expected = [it.get_next(datetime) for _ in range(4)]
    got = []
    t = start
    for _ in range(4):
        t = e.next_after(t, UTC)
        got.append(t)
    assert got == expected


@settings(SETTINGS, max_examples=200)
@given(expression(seconds=False, croniter_safe=True), starts)
def test_random_5_field_matches_croniter(expr: str, start: datetime) -> None:
    try:
        e = parse(expr)
    except CronError:
        return
    it = croniter(expr, start)
    expected = [it.get_next(datetime) for _ in range(3)]
    assert chain(expr, start, UTC, 3) == expected
    assert e.has_seconds is False


@settings(SETTINGS, max_examples=150)
@given(
    expression(seconds=False),
    starts,
    st.integers(1, 3 * 24 * 3600),
    st.none() | st.integers(0, 5),
    st.sampled_from(ORACLE_ZONES),
)
def test_fire_times_is_the_chain_of_next_after(
    expr: str, start: datetime, span_s: int, limit: int | None, tz: tzinfo
) -> None:
    try:
        e = parse(expr)
    except CronError:
        return
    until = start + timedelta(seconds=span_s)
    got = list(e.fire_times(start, until, tz, limit=limit))
    expected: list[datetime] = []
    t = start
    while limit is None or len(expected) < limit:
        t = e.next_after(t, tz)
        if t > until:
            break
        expected.append(t)
    assert got == expected


@settings(SETTINGS, max_examples=300)
@given(st.text(alphabet=" */-,#?LW@0123456789abcdefghijklmnopqrstuvwxyzSUNMOFRIJA", max_size=24))
def test_junk_raises_only_cron_error(text: str) -> None:
    try:
        e = parse(text)
    except CronError as exc:
        assert str(exc).startswith(f"cron {text!r}: ")
        return
    e.next_after(datetime(2025, 1, 1, tzinfo=UTC), UTC)


# ---------------------------------------------------------------------------------------------------
# Explicit examples

START = d("2025-01-01T00:00:00")  # a Wednesday


@pytest.mark.parametrize(
    ("expr", "start", "expected"),
    [
        ("* * * * *", "2025-01-01T00:00:00", ["00:01", "00:02", "00:03"]),
        ("*/15 * * * *", "2025-01-01T00:07:00", ["00:15", "00:30", "00:45", "01:00"]),
        ("5/15 * * * *", "2025-01-01T00:00:00", ["00:05", "00:20", "00:35", "00:50", "01:05"]),
        ("0 1-23/7 * * *", "2025-01-01T00:00:00", ["01:00", "08:00", "15:00", "22:00", "+1 01:00"]),
        ("30 2 * * *", "2025-01-01T02:30:00", ["+1 02:30", "+2 02:30"]),
        ("0 9 * * MON-FRI", "2025-01-03T10:00:00", ["+3 09:00", "+4 09:00"]),  # Fri -> Mon, Tue
        ("0 0 * * 0", "2025-01-01T00:00:00", ["+4 00:00", "+11 00:00"]),  # Sundays
        ("0 0 * * 7", "2025-01-01T00:00:00", ["+4 00:00", "+11 00:00"]),  # 7 is Sunday too
        ("0 0 * * sun", "2025-01-01T00:00:00", ["+4 00:00"]),
        ("0 0 13 * FRI", "2025-01-01T00:00:00", ["+2 00:00", "+9 00:00", "+12 00:00", "+16 00:00"]),  # OR
        ("0 0 */10 * MON", "2025-06-01T00:00:00", ["+50 00:00", "+71 00:00"]),  # AND: '*'-prefixed
        ("0 0 ? * MON", "2025-06-01T00:00:00", ["+1 00:00", "+8 00:00"]),
        ("0 12 L * *", "2025-02-01T00:00:00", ["+27 12:00", "+58 12:00"]),  # Feb 28, Mar 31
        ("0 12 L 2 *", "2028-01-01T00:00:00", ["+59 12:00"]),  # 2028-02-29
        ("0 12 LW * *", "2025-05-01T00:00:00", ["+29 12:00", "+60 12:00"]),  # Fri 30 May, Mon 30 Jun
        ("0 12 * * 5L", "2025-01-01T00:00:00", ["+30 12:00", "+58 12:00"]),  # last Fridays
        ("0 12 * * MON#2", "2025-01-01T00:00:00", ["+12 12:00", "+40 12:00"]),  # 13 Jan, 10 Feb
        ("0 12 * * 0#5", "2025-01-01T00:00:00", ["+88 12:00"]),  # 30 Mar: first month with 5 Sundays
        ("0 0 29 2 *", "2025-01-01T00:00:00", ["+1154 00:00"]),  # 2028-02-29
        ("0 0 1 jan,Jul *", "2025-01-01T00:00:00", ["+181 00:00", "+365 00:00"]),
        ("*/20 * * * * *", "2025-01-01T00:00:00", ["00:00:20", "00:00:40", "00:01:00"]),
        ("30 0 0 * * *", "2025-01-01T00:00:00", ["00:00:30", "+1 00:00:30"]),
        ("@hourly", "2025-01-01T00:00:00", ["01:00", "02:00"]),
        ("@daily", "2025-01-01T00:00:00", ["+1 00:00"]),
        ("@midnight", "2025-01-01T00:00:00", ["+1 00:00"]),
        ("@weekly", "2025-01-01T00:00:00", ["+4 00:00"]),
        ("@monthly", "2025-01-01T00:00:00", ["+31 00:00"]),
        ("@yearly", "2025-01-01T00:00:00", ["+365 00:00"]),
        ("@ANNUALLY", "2025-01-01T00:00:00", ["+365 00:00"]),
    ],
)
def test_examples(expr: str, start: str, expected: list[str]) -> None:
    begin = d(start)
    base = begin.replace(hour=0, minute=0, second=0)
    want = []
    for item in expected:
        days = 0
        if item.startswith("+"):
            day_text, item = item[1:].split(" ")
            days = int(day_text)
        parts = [int(p) for p in item.split(":")] + [0]
        want.append(base + timedelta(days=days, hours=parts[0], minutes=parts[1], seconds=parts[2]))
    assert chain(expr, begin, UTC, len(want)) == want
    if not expr.startswith("@"):
        assert cronsim_after(expr.replace("?", "*"), begin, UTC, len(want)) == want


def test_parse_is_cached_and_exposes_source() -> None:
    e = parse("*/5 * * * *")
    assert e is parse("*/5 * * * *")
    assert CronExpr.parse("*/5 * * * *") is e
    assert e.source == "*/5 * * * *"
    assert e.has_seconds is False
    assert parse("0 */5 * * * *").has_seconds is True
    assert parse("@daily").has_seconds is False
    assert CronExpr("*/5 * * * *") == e
    assert hash(CronExpr("*/5 * * * *")) == hash(e)
    assert "*/5 * * * *" in repr(e)
    assert pickle.loads(pickle.dumps(e)).next_after(START, UTC) == e.next_after(START, UTC)


def test_next_after_is_strictly_after_and_ignores_microseconds() -> None:
    e = parse("*/10 * * * * *")
    assert e.next_after(d("2025-01-01T00:00:10"), UTC) == d("2025-01-01T00:00:20")
    assert e.next_after(d("2025-01-01T00:00:09.999999"), UTC) == d("2025-01-01T00:00:10")
    assert e.next_after(d("2025-01-01T00:00:10.000001"), UTC) == d("2025-01-01T00:00:20")
    m = parse("0 * * * *")
    assert m.next_after(d("2025-01-01T00:59:59.5"), UTC) == d("2025-01-01T01:00:00")
    assert m.next_after(d("2025-01-01T01:00:00"), UTC) == d("2025-01-01T02:00:00")


def test_next_after_accepts_any_zone_and_returns_utc() -> None:
    e = parse("0 9 * * *")
    tokyo = ZoneInfo("Asia/Tokyo")
    after = d("2025-01-01T12:00:00", "America/Los_Angeles")  # 20:00Z = 05:00 JST on the 2nd
    got = e.next_after(after, tokyo)
    assert got == d("2025-01-02T00:00:00")  # 09:00 JST
    assert got.tzinfo is UTC
    assert got == e.next_after(after.astimezone(UTC), tokyo)


def test_naive_datetimes_are_rejected() -> None:
    e = parse("* * * * *")
    with pytest.raises(ValueError, match="timezone-aware"):
        e.next_after(datetime(2025, 1, 1), UTC)
    with pytest.raises(ValueError, match="timezone-aware"):
        list(e.fire_times(START, datetime(2025, 1, 2), UTC))


def test_fire_times_bounds_and_limit() -> None:
    e = parse("0 * * * *")
    after, until = d("2025-01-01T00:00:00"), d("2025-01-01T03:00:00")
    hours = [d(f"2025-01-01T0{h}:00:00") for h in (1, 2, 3)]
    assert list(e.fire_times(after, until, UTC)) == hours  # (after, until]: until included
    assert list(e.fire_times(after, until - timedelta(microseconds=1), UTC)) == hours[:2]
    assert list(e.fire_times(after, until, UTC, limit=2)) == hours[:2]
    assert list(e.fire_times(after, until, UTC, limit=0)) == []
    assert list(e.fire_times(until, after, UTC)) == []
    assert list(e.fire_times(after, after, UTC)) == []
    with pytest.raises(ValueError, match="limit"):
        e.fire_times(after, until, UTC, limit=-1)
    year = list(parse("0 0 1 * *").fire_times(d("2024-12-31T00:00:00"), d("2025-12-31T00:00:00"), UTC))
    assert [t.month for t in year] == list(range(1, 13))


def test_end_of_time() -> None:
    e = parse("0 0 1 1 *")
    late = d("9998-06-01T00:00:00")
    assert list(e.fire_times(late, datetime.max.replace(tzinfo=UTC), UTC)) == [d("9999-01-01T00:00:00")]
    with pytest.raises(OverflowError):
        e.next_after(d("9999-06-01T00:00:00"), UTC)


def test_rare_expressions_are_found_far_ahead() -> None:
    # cronsim's README example: Mondays that are Feb 29, every 28 (or 40) years.
    assert chain("0 0 * 2 MON#5", d("2020-01-01T00:00:00"), UTC, 3) == [
        d("2044-02-29T00:00:00"),
        d("2072-02-29T00:00:00"),
        d("2112-02-29T00:00:00"),
    ]


# ---------------------------------------------------------------------------------------------------
# Errors: each names the field, the offending text and what was expected


@pytest.mark.parametrize(
    ("expr", "field", "fragments"),
    [
        ("", None, ["cron '': the expression is empty", "expected 5 fields"]),
        ("   ", None, ["is empty"]),
        ("* * * *", None, ["has 4 fields", "expected 5 fields", "6 fields"]),
        ("* * * * * * *", None, ["has 7 fields"]),
        ("*", None, ["has 1 field;"]),
        ("61 * * * *", "minute", ["cron '61 * * * *': minute field '61' is out of range 0-59"]),
        ("1,61 * * * *", "minute", ["minute field '1,61': '61' is out of range 0-59"]),
        ("* 24 * * *", "hour", ["hour field '24' is out of range 0-23"]),
        ("* * 0 * *", "day-of-month", ["day-of-month field '0' is out of range 1-31"]),
        ("* * 32 * *", "day-of-month", ["day-of-month field '32' is out of range 1-31"]),
        ("* * * 13 *", "month", ["month field '13' is out of range 1-12"]),
        ("* * * 0 *", "month", ["month field '0' is out of range 1-12"]),
        ("* * * * 8", "day-of-week", ["day-of-week field '8' is out of range 0-7"]),
        ("60 * * * * *", "second", ["second field '60' is out of range 0-59"]),
        ("*/0 * * * *", "minute", ["minute field '*/0'", "bad step '0'", "positive integer"]),
        ("0 1-20/0 * * *", "hour", ["hour field '1-20/0'", "bad step '0'"]),
        ("0 0 * * */x", "day-of-week", ["bad step 'x'"]),
        ("5-2 * * * *", "minute", ["minute field '5-2' is a reversed range (5 > 2)", "start <= end"]),
        ("* * * DEC-JAN *", "month", ["month field 'DEC-JAN' is a reversed range (12 > 1)"]),
        ("* * * * SAT-SUN", "day-of-week", ["reversed range (6 > 0)", "'FRI-7'"]),
        ("* * * FOO *", "month", ["month field 'FOO' is an unknown name", "1-12 or a name JAN-DEC"]),
        ("* * * * FOO", "day-of-week", ["day-of-week field 'FOO' is an unknown name", "SUN-SAT"]),
        ("* * * JANUARY *", "month", ["'JANUARY' is an unknown name"]),
        ("MON * * * *", "minute", ["minute field 'MON' is not a number; expected a number 0-59"]),
        ("* * * 1.5 *", "month", ["'1.5' is not a number"]),
        ("1- * * * *", "minute", ["minute field '1-' is missing a value"]),
        ("1,,2 * * * *", "minute", ["has an empty list item"]),
        ("? * * * *", "minute", ["'?' is only allowed in the day-of-month and day-of-week fields"]),
        ("* * * * L", "day-of-week", ["needs a weekday before 'L'"]),
        ("* * L/2 * *", "day-of-month", ["'L' in a way that is not supported"]),
        ("* * * * MON#6", "day-of-week", ["bad occurrence after '#'", "k 1-5"]),
        ("* * * * MON#0", "day-of-week", ["bad occurrence"]),
        ("* * * * 8#1", "day-of-week", ["'8' is out of range 0-7"]),
        (
            "0 0 30 2 *",
            "day-of-month",
            ["day-of-month field '30' never matches a day that exists in month field '2'"],
        ),
        ("0 0 31 4,6,9,11 *", "day-of-month", ["never match"]),
        ("* * */20 * 1L", "day-of-month", ["'*/20' and day-of-week field '1L' never match the same day"]),
        ("@every 5m", None, ["'@every' is not a cron expression", "interval trigger"]),
        ("@reboot", None, ["unknown macro '@reboot'", "@daily"]),
        ("@daily 5", None, ["unknown macro"]),
    ],
)
def test_errors(expr: str, field: str | None, fragments: list[str]) -> None:
    with pytest.raises(CronError) as info:
        parse(expr)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.field == field
    message = str(err)
    assert message.startswith(f"cron {expr!r}: ")
    for fragment in fragments:
        assert fragment in message
    if field is not None:
        assert f"{field} field" in message
    clone = pickle.loads(pickle.dumps(err))
    assert (str(clone), clone.field) == (message, field)


def test_day_of_month_31_in_some_months_is_fine() -> None:
    assert [t.month for t in chain("0 0 31 * *", START, UTC, 3)] == [1, 3, 5]
    assert chain("0 0 29 2 *", START, UTC, 1) == [d("2028-02-29T00:00:00")]
    assert chain("0 0 30 2 MON", START, UTC, 1) == [d("2025-02-03T00:00:00")]  # OR: Mondays in Feb


def test_range_with_a_step_stays_in_the_range() -> None:
    # cronsim 2.8 treats a one-value range with a step ('5-5/10') like '5/10'; Vixie cron and we don't.
    assert chain("5-5/10 * * * *", START, UTC, 2) == [d("2025-01-01T00:05:00"), d("2025-01-01T01:05:00")]
