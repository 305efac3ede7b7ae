"""Cron in words (`jobwire.crontext.describe`), as the dashboard's jobs page shows it."""

from __future__ import annotations

import pytest

from jobwire.cron import CronExpr
from jobwire.crontext import describe

CASES = [
    ("* * * * *", "every minute"),
    ("*/5 * * * *", "every 5 minutes"),
    ("0 * * * *", "at minute 0 of every hour"),
    ("30 2 * * *", "at 02:30 every day"),
    ("0 9 * * 1-5", "at 09:00 on Monday through Friday"),
    ("0 9 * * MON-FRI", "at 09:00 on Monday through Friday"),
    ("0 0 1 * *", "at 00:00 on day 1 of the month"),
    ("0 0 1 1 *", "at 00:00 on day 1 of the month in January"),
    ("@weekly", "at 00:00 on Sunday"),
    ("@hourly", "at minute 0 of every hour"),
    ("*/10 * * * * *", "every 10 seconds"),
    ("5 * * * * *", "at second 5 of every minute"),
    ("0 0 12 * * MON#2", "at 12:00 on the second Monday of the month"),
    ("0 0 L * *", "at 00:00 on the last day of the month"),
    ("0 0 LW * *", "at 00:00 on the last weekday of the month"),
    ("0 0 * * 5L", "at 00:00 on the last Friday of the month"),
    ("15 8,20 * * *", "at 08:15 and 20:15"),
    ("0 */3 * * *", "at minute 0 of every 3 hours"),
    ("0 9-17 * * *", "at minute 0 past hour 9 through 17"),
    ("0 12 1,15 * MON", "at 12:00 on day 1 and 15 of the month or on Monday"),
    ("0 0 * JAN-MAR SUN", "at 00:00 on Sunday in January through March"),
    ("0 0 * * 7", "at 00:00 on Sunday"),
    ("*/15 8-18 * * 1-5", "every 15 minutes past hour 8 through 18 on Monday through Friday"),
    ("30 15 10 * * *", "at 10:15:30 every day"),
]


@pytest.mark.parametrize(("expr", "words"), CASES)
def test_describe(expr: str, words: str) -> None:
    CronExpr.parse(expr)  # every case is a valid expression
    assert describe(expr) == words


def test_what_it_cannot_read_comes_back_as_it_is() -> None:
    assert describe("not a cron") == "not a cron"
    assert describe("1 2 3") == "1 2 3"
