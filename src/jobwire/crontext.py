"""A cron expression in words, for people: `30 2 * * 1-5` → "at 02:30 on Monday through Friday".

Covers what `jobwire.cron` accepts (5 or 6 fields, lists, ranges, steps, month and weekday names,
`?`, `L`, `LW`, `5L`, `MON#2`, the macros). A field it cannot put in words is quoted as it is, so
the text is never wrong, at worst terse. The expression must already be valid (`CronExpr.parse`).
"""

from __future__ import annotations

__all__ = ["describe"]

_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_MONTHS = [
    "January", "February", "March", "April", "May", "June", "July", "August", "September",
    "October", "November", "December",
]  # fmt: skip
_DAYS = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"]
_ORDINAL = {1: "first", 2: "second", 3: "third", 4: "fourth", 5: "fifth"}


def _any(f: str) -> bool:
    return f in ("*", "?")


def _num(f: str) -> bool:
    return f.isdigit()


def _name(token: str, names: list[str], base: int) -> str:
    """A month or weekday number or abbreviation as its name (`1`/`JAN` → January)."""
    t = token.upper()
    for n in names:
        if n[:3].upper() == t:
            return n
    if t.isdigit():
        i = int(t) - base
        if names is _DAYS:
            i %= 7
        if 0 <= i < len(names):
            return names[i]
    return token


def _list(field: str, one: str, many: str, name: list[str] | None = None, base: int = 0) -> str:
    """A list/range/step field as text: `1-5` → "Monday through Friday", `*/10` → "every 10th"."""

    def item(t: str) -> str:
        return _name(t, name, base) if name is not None else t

    parts: list[str] = []
    for term in field.split(","):
        rng, _, step = term.partition("/")
        if rng in ("*", "?"):
            text = f"every {step} {many}" if step else f"every {one}"
        elif "-" in rng:
            lo, hi = rng.split("-", 1)
            text = f"{item(lo)} through {item(hi)}"
            if step:
                text = f"every {step} {many} from {item(lo)} through {item(hi)}"
        else:
            text = item(rng)
            if step:
                text = f"every {step} {many} from {item(rng)}"
        parts.append(text)
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def _weekday(field: str) -> str:
    if "#" in field:
        day, _, nth = field.partition("#")
        return f"on the {_ORDINAL.get(int(nth), nth + 'th')} {_name(day, _DAYS, 0)} of the month"
    if field.upper().endswith("L") and len(field) > 1:
        return f"on the last {_name(field[:-1], _DAYS, 0)} of the month"
    return "on " + _list(field, "day", "days", _DAYS, 0)


def _monthday(field: str) -> str:
    f = field.upper()
    if f == "L":
        return "on the last day of the month"
    if f == "LW":
        return "on the last weekday of the month"
    text = _list(field, "day", "days")
    return f"on day {text} of the month" if text[0].isdigit() else f"on {text} of the month"


def _clock(sec: str, minute: str, hour: str) -> str:
    """The time-of-day part."""
    if _num(minute) and _num(hour) and _num(sec):
        text = f"at {int(hour):02d}:{int(minute):02d}"
        return text + (f":{int(sec):02d}" if int(sec) else "")
    if sec != "0":
        if sec == "*":
            prefix = "every second"
        elif "/" in sec and "," not in sec:
            prefix = _list(sec, "second", "seconds")
        else:
            prefix = f"at second {_list(sec, 'second', 'seconds')}"
    else:
        prefix = ""
    if _any(minute) and _any(hour):
        text = f"{prefix} of every minute" if prefix.startswith("at") else (prefix or "every minute")
    elif minute.startswith("*/") and _any(hour):
        text = f"every {minute[2:]} minutes"
        text = f"{prefix} {text}" if prefix else text
    elif _num(minute) and _any(hour):
        text = f"at minute {int(minute)} of every hour"
    elif _num(minute) and hour.startswith("*/"):
        text = f"at minute {int(minute)} of every {hour[2:]} hours"
    elif _num(minute) and _num(hour):
        text = f"at {int(hour):02d}:{int(minute):02d}"
    elif _num(minute) and "," not in minute and all(p.isdigit() for p in hour.split(",")):
        text = "at " + _list(",".join(f"{int(h):02d}:{int(minute):02d}" for h in hour.split(",")), "", "")
    else:
        m = "every minute" if _any(minute) else _list(minute, "minute", "minutes")
        m = m if m.startswith("every") else f"at minute {m}"
        h = "of every hour" if _any(hour) else f"past hour {_list(hour, 'hour', 'hours')}"
        text = f"{m} {h}"
    if prefix and not text.startswith(prefix) and sec != "0":
        text = f"{prefix}, {text}"
    return text


def describe(expression: str) -> str:
    """The expression in English; the expression itself when it is not one `jobwire.cron` reads."""
    text = expression.strip()
    if text.startswith("@"):
        text = _MACROS.get(text.lower(), text)
    fields = text.split()
    if len(fields) == 5:
        fields.insert(0, "0")
    if len(fields) != 6:
        return expression
    try:
        sec, minute, hour, dom, month, dow = fields
        out = [_clock(sec, minute, hour)]
        if not _any(dom) and not _any(dow):
            out.append(f"{_monthday(dom)} or {_weekday(dow)}")
        elif not _any(dom):
            out.append(_monthday(dom))
        elif not _any(dow):
            out.append(_weekday(dow))
        elif out[0].startswith("at ") and _num(minute) and _num(hour):
            out.append("every day")
        if not _any(month):
            out.append("in " + _list(month, "month", "months", _MONTHS, 1))
        return " ".join(out)
    except (ValueError, IndexError):
        return expression
