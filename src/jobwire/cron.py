"""A pure, fast cron engine: parse an expression once, then ask for the next fire time.

Syntax (see ``docs/cron.md``): 5 fields ``minute hour day-of-month month day-of-week`` or 6 fields with
the seconds first (``second minute hour day-of-month month day-of-week``, as Quartz, Spring and
robfig/cron do); ``*``, ``?`` (day fields only), lists, ranges, steps (``*/5``, ``1-30/7``, ``5/15``),
``JAN``-``DEC`` and ``SUN``-``SAT`` names, day-of-week 0-7 (0 and 7 are Sunday), ``L`` and ``LW`` in
day-of-month, ``5L`` (last Friday) and ``MON#2`` (second Monday) in day-of-week, and the macros
``@yearly @annually @monthly @weekly @daily @midnight @hourly``.

Semantics follow Vixie/Debian cron as evaluated by *cronsim*: when both day fields are restricted
(neither starts with ``*``) a day matches if either matches, otherwise both must match.

Time zones and DST (Debian cron's rule, as cronsim implements it):

* A 5-field expression whose minute and hour fields both start with something other than ``*`` (a job
  "at a specific time") is evaluated on the local wall clock. A fire time that falls in a skipped
  interval (spring forward) runs at the first whole minute after the transition, i.e. at the moment
  the clocks jump; several such fire times collapse into that one run. A fire time in a repeated
  interval (fall back) runs once, at its first occurrence.
* Every other expression (a wildcard minute or hour such as ``*/15 * * * *`` or ``0 * * * *``, and
  every 6-field expression) is evaluated against the real passage of time: it fires at every instant
  whose local wall-clock time matches, so fire times inside a skipped interval do not happen and
  those inside a repeated interval happen twice (once per offset).

Speed: each field is a bitmask computed at parse time; :meth:`CronExpr.next_after` jumps field by
field over a local "naive" timeline and maps the result back to UTC with a per-zone table of UTC
offset spans, so a typical call costs a few microseconds. :func:`parse` is memoised.
"""

from __future__ import annotations

import functools
from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from typing import Final, NamedTuple

__all__ = ["CronError", "CronExpr", "parse"]

# --------------------------------------------------------------------------------------------------
# Errors


class CronError(ValueError):
    """Raised for a bad expression.

    ``str(e)`` names the expression, the field, the offending text and what was expected, e.g.
    ``cron '61 * * * *': minute field '61' is out of range 0-59``. ``field`` is the field's name
    (``second``, ``minute``, ``hour``, ``day-of-month``, ``month``, ``day-of-week``) or None when the
    problem is the expression as a whole (empty, wrong number of fields, unknown macro).
    """

    field: str | None
    expression: str

    def __init__(self, message: str, *, field: str | None = None, expression: str = "") -> None:
        super().__init__(message)
        self.field = field
        self.expression = expression

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_error, (str(self), self.field, self.expression))


def _rebuild_error(message: str, field: str | None, expression: str) -> CronError:
    return CronError(message, field=field, expression=expression)


# --------------------------------------------------------------------------------------------------
# Parsing

_MONTH_NAMES: Final = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_DOW_NAMES: Final = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")

_MACROS: Final = {
    "@YEARLY": "0 0 1 1 *",
    "@ANNUALLY": "0 0 1 1 *",
    "@MONTHLY": "0 0 1 * *",
    "@WEEKLY": "0 0 * * 0",
    "@DAILY": "0 0 * * *",
    "@MIDNIGHT": "0 0 * * *",
    "@HOURLY": "0 * * * *",
}


class _Spec(NamedTuple):
    name: str
    lo: int
    hi: int
    names: dict[str, int]
    names_hint: str  # "" or " or a name JAN-DEC"


_SECOND: Final = _Spec("second", 0, 59, {}, "")
_MINUTE: Final = _Spec("minute", 0, 59, {}, "")
_HOUR: Final = _Spec("hour", 0, 23, {}, "")
_DOM: Final = _Spec("day-of-month", 1, 31, {}, "")
_MONTH: Final = _Spec("month", 1, 12, {n: i + 1 for i, n in enumerate(_MONTH_NAMES)}, " or a name JAN-DEC")
_DOW: Final = _Spec("day-of-week", 0, 7, {n: i for i, n in enumerate(_DOW_NAMES)}, " or a name SUN-SAT")


class _Field(NamedTuple):
    mask: int  # bit v set when value v matches (day-of-week: 0-6, 7 folded into 0)
    nth: tuple[tuple[int, int], ...] = ()  # day-of-week (weekday, k) for "weekday#k"
    last_dow: tuple[int, ...] = ()  # day-of-week weekdays for "weekdayL"
    last_day: bool = False  # day-of-month "L"
    last_weekday: bool = False  # day-of-month "LW"


class _FieldParser:
    """Parses one field's text; every error names the expression, the field and the bad piece."""

    __slots__ = ("source", "spec", "text")

    def __init__(self, source: str, spec: _Spec, text: str) -> None:
        self.source = source
        self.spec = spec
        self.text = text

    def error(self, detail: str, token: str | None = None) -> CronError:
        head = f"cron {self.source!r}: {self.spec.name} field {self.text!r}"
        msg = f"{head} {detail}" if token is None or token == self.text else f"{head}: {token!r} {detail}"
        return CronError(msg, field=self.spec.name, expression=self.source)

    def expected(self) -> str:
        return f"expected a number {self.spec.lo}-{self.spec.hi}{self.spec.names_hint}"

    def value(self, token: str, context: str) -> int:
        spec = self.spec
        if token.isdigit() and token.isascii():
            v = int(token)
            if not spec.lo <= v <= spec.hi:
                raise self.error(f"is out of range {spec.lo}-{spec.hi}", token)
            return v
        name = spec.names.get(token.upper())
        if name is not None:
            return name
        if token == "":
            raise self.error(f"is missing a value; {self.expected()}", context)
        if spec.names and token.isalpha():
            raise self.error(f"is an unknown name; {self.expected()}", token)
        raise self.error(f"is not a number; {self.expected()}", token)

    def parse(self) -> _Field:
        spec = self.spec
        text = self.text
        if text == "":
            raise self.error(f"is empty; {self.expected()}")
        if text == "?":
            if spec is _DOM or spec is _DOW:
                text = "*"
            else:
                raise self.error("'?' is only allowed in the day-of-month and day-of-week fields")
        mask = 0
        nth: list[tuple[int, int]] = []
        last_dow: list[int] = []
        last_day = last_weekday = False
        for term in text.split(","):
            if term == "":
                raise self.error(f"has an empty list item; {self.expected()}")
            upper = term.upper()
            if spec is _DOM and upper in ("L", "LW"):
                if upper == "L":
                    last_day = True
                else:
                    last_weekday = True
                continue
            if spec is _DOW and "#" in term:
                day_text, _, k_text = term.partition("#")
                weekday = self.value(day_text, term) % 7
                if not (k_text.isdigit() and k_text.isascii()) or not 1 <= int(k_text) <= 5:
                    raise self.error(
                        "has a bad occurrence after '#'; expected 'weekday#k' with k 1-5, e.g. 'MON#2'", term
                    )
                nth.append((weekday, int(k_text)))
                continue
            if spec is _DOW and upper.endswith("L") and upper not in spec.names:
                day_text = term[:-1]
                if day_text == "":
                    raise self.error(
                        "needs a weekday before 'L'; expected e.g. '5L' or 'FRIL' (the last Friday)", term
                    )
                last_dow.append(self.value(day_text, term) % 7)
                continue
            if "L" in upper and spec in (_DOM, _DOW) and not term.isalpha():
                raise self.error(
                    "uses 'L' in a way that is not supported; expected 'L' or 'LW' alone in day-of-month, "
                    "or 'weekdayL' in day-of-week",
                    term,
                )
            mask |= self.term(term)
        if spec is _DOW:
            mask = (mask | (mask >> 7)) & 0x7F  # 7 is Sunday too
        return _Field(mask, tuple(nth), tuple(last_dow), last_day, last_weekday)

    def term(self, term: str) -> int:
        spec = self.spec
        base, slash, step_text = term.partition("/")
        step = 1
        if slash:
            if not (step_text.isdigit() and step_text.isascii()) or int(step_text) == 0:
                raise self.error(f"has a bad step {step_text!r}; expected a positive integer after '/'", term)
            step = int(step_text)
        if base == "*":
            lo, hi = spec.lo, spec.hi
        elif "-" in base:
            lo_text, _, hi_text = base.partition("-")
            lo = self.value(lo_text, term)
            hi = self.value(hi_text, term)
            if hi < lo:
                hint = "; write Sunday as 7 to end a range, e.g. 'FRI-7'" if spec is _DOW and hi == 0 else ""
                raise self.error(
                    f"is a reversed range ({lo} > {hi}); expected start <= end, "
                    f"ranges do not wrap around{hint}",
                    base,
                )
        else:
            lo = self.value(base, term)
            # "a/n" means a, a+n, ... up to the field's maximum; a plain "a" is just a.
            hi = spec.hi if slash else lo
        mask = 0
        for v in range(lo, hi + 1, step):
            mask |= 1 << v
        return mask


_FIELD_COUNT_HINT: Final = (
    "expected 5 fields (minute hour day-of-month month day-of-week), "
    "6 fields with seconds first (second minute hour day-of-month month day-of-week), "
    "or a macro (@yearly @annually @monthly @weekly @daily @midnight @hourly)"
)

_MONTH_LENGTHS: Final = (0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)  # most days a month can have
_VALID_DAYS: Final = tuple((1 << (n + 1)) - 2 for n in range(32))  # bits 1..n
_WEEK_REPEAT: Final = 1 | 1 << 7 | 1 << 14 | 1 << 21 | 1 << 28  # a 7-bit week pattern, five times
_EPOCH_ORDINAL: Final = date(1970, 1, 1).toordinal()
_date_fromordinal = date.fromordinal


def _low(x: int) -> int:
    """Index of the lowest set bit of x (x > 0)."""
    return (x & -x).bit_length() - 1


class _Program:
    """The compiled form of an expression: one bitmask per field plus the day rules."""

    __slots__ = (
        "_day_cache",
        "_day_cache_next",
        "day_and",
        "dom",
        "dom_last",
        "dom_lw",
        "dow",
        "dow_last",
        "dow_nth",
        "first_hour",
        "first_minute",
        "first_month",
        "first_second",
        "first_tod",
        "hours",
        "minutes",
        "months",
        "seconds",
        "simple_days",
        "wall_clock",
    )

    def __init__(
        self,
        seconds: _Field,
        minutes: _Field,
        hours: _Field,
        dom: _Field,
        months: _Field,
        dow: _Field,
        day_and: bool,
        wall_clock: bool,
    ) -> None:
        self.seconds = seconds.mask
        self.minutes = minutes.mask
        self.hours = hours.mask
        self.months = months.mask
        self.dom = dom.mask & _VALID_DAYS[31]
        self.dom_last = dom.last_day
        self.dom_lw = dom.last_weekday
        self.dow = dow.mask
        self.dow_nth = dow.nth
        self.dow_last = dow.last_dow
        self.day_and = day_and
        self.wall_clock = wall_clock
        self.first_second = _low(self.seconds)
        self.first_minute = _low(self.minutes)
        self.first_hour = _low(self.hours)
        self.first_month = _low(self.months)
        dow_all = self.dow == 0x7F and not self.dow_nth and not self.dow_last
        # When the day-of-week part is "every day" and must be AND-ed, the day mask does not depend on
        # the weekday of the 1st (unless LW is used) and can skip the cache.
        self.simple_days = day_and and dow_all and not self.dom_lw
        self.first_tod = self.first_hour * 3600 + self.first_minute * 60 + self.first_second
        self._day_cache: dict[int, int] = {}
        self._day_cache_next: dict[int, int] = {}

    def compute_day_mask(self, first_dow: int, mlen: int) -> int:
        """Matching days (bits 1..mlen) of a month of `mlen` days whose 1st is weekday `first_dow` (0=Sun)."""
        valid = _VALID_DAYS[mlen]
        dom = self.dom & valid
        last_dow = (first_dow + mlen - 1) % 7
        if self.dom_last:
            dom |= 1 << mlen
        if self.dom_lw:
            lw = mlen - 2 if last_dow == 0 else mlen - 1 if last_dow == 6 else mlen
            dom |= 1 << lw
        w = self.dow
        week = ((w >> first_dow) | (w << (7 - first_dow))) & 0x7F  # bit i: weekday of day i+1 matches
        dow = ((week * _WEEK_REPEAT) << 1) & valid
        for weekday, k in self.dow_nth:
            day = 1 + (weekday - first_dow) % 7 + 7 * (k - 1)
            if day <= mlen:
                dow |= 1 << day
        for weekday in self.dow_last:
            dow |= 1 << (mlen - (last_dow - weekday) % 7)
        return dom & dow if self.day_and else dom | dow

    def day_mask(self, year: int, month: int) -> int:
        if month == 2:
            mlen = 29 if year % 4 == 0 and (year % 100 != 0 or year % 400 == 0) else 28
        else:
            mlen = _MONTH_LENGTHS[month]
        if self.simple_days:
            simple = self.dom & _VALID_DAYS[mlen]
            return simple | (1 << mlen) if self.dom_last else simple
        first_dow = (date(year, month, 1).weekday() + 1) % 7
        key = first_dow << 5 | mlen
        mask = self._day_cache.get(key)
        if mask is None:
            mask = self._day_cache[key] = self.compute_day_mask(first_dow, mlen)
        return mask

    def can_fire(self) -> bool:
        """Whether some day of some allowed month ever matches (every weekday/length combination of a
        month occurs over the Gregorian cycle, so checking those is exact)."""
        months = self.months
        for month in range(1, 13):
            if not months >> month & 1:
                continue
            for mlen in (28, 29) if month == 2 else (_MONTH_LENGTHS[month],):
                for first_dow in range(7):
                    if self.compute_day_mask(first_dow, mlen):
                        return True
        return False

    def search(self, n: int) -> int:
        """The first local wall-clock second >= n (seconds since 1970-01-01T00:00 local) that matches.

        Jumps field by field: the first matching day (memoised per day), then hour, minute and second
        within it.
        """
        days, sod = divmod(n, 86400)
        cache = self._day_cache_next
        d = cache.get(days)
        if d is None:
            d = self._first_day(days)
        if d == days:
            hours, minutes = self.hours, self.minutes
            hour, rem = divmod(sod, 3600)
            minute, second = divmod(rem, 60)
            if hours >> hour & 1:
                if minutes >> minute & 1:
                    x = self.seconds >> second
                    if x:
                        return n + _low(x)
                x = minutes >> (minute + 1)
                if x:
                    return n - rem + (minute + 1 + _low(x)) * 60 + self.first_second
            x = hours >> (hour + 1)
            if x:
                return n - sod + (hour + 1 + _low(x)) * 3600 + self.first_minute * 60 + self.first_second
            nxt = cache.get(days + 1)
            d = self._first_day(days + 1) if nxt is None else nxt
        return d * 86400 + self.first_tod

    def _first_day(self, days: int) -> int:
        """The first matching day (days since 1970-01-01) on or after `days`; memoised."""
        cache = self._day_cache_next
        if len(cache) >= 256:
            cache.clear()
        d0 = _date_fromordinal(days + _EPOCH_ORDINAL)
        year, month, day = d0.year, d0.month, d0.day
        while True:
            x = self.months >> month
            if not x:
                year += 1
                month, day = self.first_month, 1
            elif not x & 1:
                month += _low(x)
                day = 1
            if year > 9999:
                raise OverflowError("cron expression has no fire time before year 10000")
            x = self.day_mask(year, month) >> day
            if x:
                day += _low(x)
                break
            month += 1
            day = 1
            if month > 12:
                month = 1
                year += 1
        found = date(year, month, day).toordinal() - _EPOCH_ORDINAL
        cache[days] = found
        return found


def _compile(source: str) -> tuple[bool, _Program]:
    if not isinstance(source, str):
        raise TypeError(f"a cron expression must be a str, got {type(source).__name__}")
    text = source.strip()
    if not text:
        raise CronError(f"cron {source!r}: the expression is empty; {_FIELD_COUNT_HINT}", expression=source)
    if text.startswith("@"):
        macro = text.split()[0].upper()
        if macro == "@EVERY":
            raise CronError(
                f"cron {source!r}: '@every' is not a cron expression; use an interval trigger instead",
                expression=source,
            )
        if macro not in _MACROS or len(text.split()) != 1:
            raise CronError(
                f"cron {source!r}: unknown macro {text!r}; expected one of "
                "@yearly @annually @monthly @weekly @daily @midnight @hourly",
                expression=source,
            )
        text = _MACROS[macro]
    parts = text.split()
    if len(parts) == 5:
        has_seconds = False
        parts.insert(0, "0")
    elif len(parts) == 6:
        has_seconds = True
    else:
        raise CronError(
            f"cron {source!r}: has {len(parts)} field{'s' if len(parts) != 1 else ''}; {_FIELD_COUNT_HINT}",
            expression=source,
        )
    fields = [
        _FieldParser(source, spec, part).parse()
        for spec, part in zip((_SECOND, _MINUTE, _HOUR, _DOM, _MONTH, _DOW), parts, strict=True)
    ]
    # Vixie cron: if either day field starts with '*' both must match; otherwise either may.
    day_and = parts[3].startswith(("*", "?")) or parts[5].startswith(("*", "?"))
    # Debian cron's DST rule applies to jobs at a specific time: neither minute nor hour starts with '*'.
    wall_clock = not has_seconds and not parts[1].startswith("*") and not parts[2].startswith("*")
    sec, minute, hour, dom, month, dow = fields
    program = _Program(sec, minute, hour, dom, month, dow, day_and=day_and, wall_clock=wall_clock)
    if not program.can_fire():
        if program.simple_days:
            detail = (
                f"day-of-month field {parts[3]!r} never matches a day that exists in month field "
                f"{parts[4]!r}; expected a day those months have (e.g. not 30 in FEB)"
            )
        else:
            detail = (
                f"day-of-month field {parts[3]!r} and day-of-week field {parts[5]!r} never match the same "
                f"day in month field {parts[4]!r} (both must match because one starts with '*'); "
                "expected a combination that occurs"
            )
        raise CronError(f"cron {source!r}: {detail}", field="day-of-month", expression=source)
    return has_seconds, program


# --------------------------------------------------------------------------------------------------
# Time zones: spans of constant UTC offset

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_SEC: Final = timedelta(seconds=1)
_MIN_TS: Final = (datetime(1, 1, 2, tzinfo=UTC) - _EPOCH) // _SEC
_MAX_TS: Final = (datetime(9999, 12, 30, tzinfo=UTC) - _EPOCH) // _SEC
_CHUNK: Final = 1 << 25  # seconds (~388 days) of offsets sampled at a time
_SAMPLE: Final = 12 * 3600  # sampling step: a change and its reversal closer than this are not seen
_INF: Final = 1 << 62
_NEAR: Final = 30 * 3600  # more than any difference between two UTC offsets of one zone
_fromtimestamp = datetime.fromtimestamp


class _Span(NamedTuple):
    start: int  # first instant (UTC epoch seconds) with this offset
    end: int  # first instant after the span (a transition, or an artificial chunk edge)
    offset: int  # UTC offset in seconds
    naive_lo: int  # local wall-clock seconds from which local times in this span are unambiguous


class _Zone:
    """UTC offsets of a tzinfo as spans, found by sampling the zone and bisecting each change."""

    __slots__ = ("chunks", "last", "tz")

    def __init__(self, tz: tzinfo) -> None:
        self.tz = tz
        self.chunks: dict[int, tuple[list[int], list[_Span]]] = {}
        if isinstance(tz, timezone):
            off = _offset(tz, 0)
            self.last = _Span(-_INF, _INF, off, -_INF)
        else:
            self.last = _Span(0, 0, 0, 0)

    def span(self, u: int) -> _Span:
        s = self.last
        if s.start <= u < s.end:
            return s
        k = u // _CHUNK
        chunk = self.chunks.get(k)
        if chunk is None:
            chunk = self.chunks[k] = self._build(k)
        starts, spans = chunk
        s = spans[bisect_right(starts, u) - 1]
        self.last = s
        return s

    def _build(self, k: int) -> tuple[list[int], list[_Span]]:
        lo, hi = k * _CHUNK, (k + 1) * _CHUNK
        if lo < _MIN_TS or hi > _MAX_TS:
            raise OverflowError("date is out of the range this cron engine supports (years 1-9999)")
        tz = self.tz
        prev_off = _offset(tz, lo - 1)
        off = _offset(tz, lo)
        points = [(lo, off)]  # (start, offset); the first start is the chunk's edge
        t = lo
        while t < hi - 1:
            t2 = min(t + _SAMPLE, hi - 1)
            if _offset(tz, t2) != off:
                a, b = t, t2  # offset(a) == off, offset(b) != off
                while b - a > 1:
                    mid = (a + b) // 2
                    if _offset(tz, mid) == off:
                        a = mid
                    else:
                        b = mid
                off = _offset(tz, b)
                points.append((b, off))
                t = b
            else:
                t = t2
        spans: list[_Span] = []
        before = prev_off
        for i, (start, offset) in enumerate(points):
            end = points[i + 1][0] if i + 1 < len(points) else hi
            spans.append(_Span(start, end, offset, start + max(offset, before)))
            before = offset
        return [s.start for s in spans], spans


def _offset(tz: tzinfo, u: int) -> int:
    off = _fromtimestamp(u, tz).utcoffset()
    assert off is not None
    return int(off.total_seconds())


_ZONES: dict[tzinfo, _Zone] = {}


def _zone(tz: tzinfo) -> _Zone:
    z = _ZONES.get(tz)
    if z is None:
        if len(_ZONES) > 4096:
            _ZONES.clear()
        z = _ZONES[tz] = _Zone(tz)
    return z


def _to_ts(dt: datetime, name: str) -> int:
    """Whole seconds since the epoch, rounded down; `dt` must be aware."""
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got {dt!r}")
    return (dt - _EPOCH) // _SEC


def _from_ts(u: int) -> datetime:
    return _fromtimestamp(u, UTC)


# --------------------------------------------------------------------------------------------------
# The public expression type


@dataclass(frozen=True, slots=True)
class CronExpr:
    """A parsed cron expression. Build it with :meth:`parse` (memoised) or ``CronExpr(text)``."""

    source: str
    """The original text."""
    has_seconds: bool = field(init=False)
    """True for the 6-field form (seconds first)."""
    _program: _Program = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        has_seconds, program = _compile(self.source)
        object.__setattr__(self, "has_seconds", has_seconds)
        object.__setattr__(self, "_program", program)

    @classmethod
    def parse(cls, text: str) -> CronExpr:
        """Parse `text` (memoised: the same text returns the same object). Raises CronError."""
        return parse(text)

    def next_after(self, after: datetime, tz: tzinfo) -> datetime:
        """The first fire time strictly after `after` (an aware datetime, any zone), evaluated in local
        time of `tz`, returned as an aware datetime in UTC."""
        return _from_ts(self._next_ts(_to_ts(after, "after"), _zone(tz)))

    def fire_times(
        self, after: datetime, until: datetime, tz: tzinfo, limit: int | None = None
    ) -> Iterator[datetime]:
        """All fire times in (after, until], UTC, ascending — for catch-up/backfill.

        At most `limit` of them (the earliest) when `limit` is given.
        """
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0 or None, got {limit}")
        start = _to_ts(after, "after")
        end = _to_ts(until, "until")
        return self._fire_times(start, end, _zone(tz), limit)

    def _fire_times(self, u: int, end: int, zone: _Zone, limit: int | None) -> Iterator[datetime]:
        count = 0
        while (limit is None or count < limit) and u < end:
            try:
                u = self._next_ts(u, zone)
            except OverflowError:
                return
            if u > end:
                return
            yield _from_ts(u)
            count += 1

    def _next_ts(self, u: int, zone: _Zone) -> int:
        """The first fire time (epoch seconds) > u (epoch seconds)."""
        program = self._program
        s = zone.span(u)
        off = s.offset
        # Both modes start at the next local second; on the common path the candidate lies in the same
        # span of constant offset as `u`, where local time and UTC differ by `off` and nothing is
        # skipped or repeated.
        c = program.search(u + off + 1)
        if c - off < s.end and (c >= s.naive_lo or not program.wall_clock):
            return c - off
        if program.wall_clock:
            return self._next_wall_clock(u, c, zone)
        # Real-time mode: move span by span.
        u0 = s.end
        while True:
            s = zone.span(u0)
            off = s.offset
            c = program.search(u0 + off)
            if c - off < s.end:
                return c - off
            u0 = s.end

    def _next_wall_clock(self, u: int, c: int, zone: _Zone) -> int:
        """Debian/cronsim handling for jobs at a specific time: `c` is the first matching local wall
        time after `u`'s local time; map it to an instant (first occurrence if repeated, the end of the
        gap if skipped), skipping occurrences not after `u` (when `u` is inside a repeated interval)."""
        program = self._program
        while True:
            t = _map_wall_clock(c, zone)
            if t > u:
                return t
            c = program.search(c + 1)


def _map_wall_clock(c: int, zone: _Zone) -> int:
    """The instant at which cronsim fires the local wall-clock time `c` (local seconds since
    1970-01-01T00:00): its first occurrence if the clocks repeat it, and if the clocks skip it, the
    first whole minute after `c` that exists (the moment the clocks jump)."""
    guess = c - zone.span(c).offset
    spans: list[_Span] = []
    s = zone.span(guess - _NEAR)
    while True:
        spans.append(s)
        if s.end > guess + _NEAR or s.end >= _INF:
            break
        s = zone.span(s.end)
    for s in spans:  # in time order, so the first hit is the first occurrence
        t = c - s.offset
        if s.start <= t < s.end:
            return t
    for s in spans:  # c is skipped: it lies just before the local start of the span after the gap
        gap_end = s.start + s.offset
        if gap_end > c:
            n = c - (c - gap_end) // 60 * 60  # c rounded up to gap_end in whole minutes
            return n - s.offset
    raise AssertionError("unreachable: a skipped wall time with no span after it")  # pragma: no cover


@functools.lru_cache(maxsize=65536)
def parse(text: str) -> CronExpr:
    """Parse a cron expression, memoised. Raises CronError."""
    return CronExpr(text)
