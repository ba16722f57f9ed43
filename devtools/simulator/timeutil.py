"""Times as WeChat Pay writes them: RFC 3339 in Beijing time, bill days in UTC+8."""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone

# WeChat Pay's clock is Asia/Shanghai (no daylight saving, so a fixed offset is exact).
CST = timezone(timedelta(hours=8), "Asia/Shanghai")

_RFC3339_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})$")
_DATE_RE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")


def rfc3339(timestamp: float) -> str:
    """`2024-05-01T12:00:00+08:00` (whole seconds, as WeChat Pay sends them)."""
    return datetime.fromtimestamp(int(timestamp), CST).isoformat()


def parse_rfc3339(text: object) -> float | None:
    """Epoch seconds of an RFC 3339 date-time with an offset, or None when malformed.

    Parsed by hand: `datetime.fromisoformat` accepts different inputs on 3.10 and 3.11.
    """
    if not isinstance(text, str):
        return None
    match = _RFC3339_RE.match(text)
    if not match:
        return None
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    fraction, offset = match.group(7), match.group(8)
    if offset == "Z":
        tz = timezone.utc
    else:
        sign = 1 if offset[0] == "+" else -1
        hours, minutes = int(offset[1:3]), int(offset[4:6])
        if hours > 23 or minutes > 59:
            return None
        tz = timezone(sign * timedelta(hours=hours, minutes=minutes))
    try:
        moment = datetime(year, month, day, hour, minute, second, tzinfo=tz)
    except ValueError:
        return None
    return moment.timestamp() + (float("0." + fraction) if fraction else 0.0)


def parse_date(text: object) -> date | None:
    """A `YYYY-MM-DD` date, or None."""
    if not isinstance(text, str) or not _DATE_RE.match(text):
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        return None


def cst_date(timestamp: float) -> date:
    """The calendar day of `timestamp` in Beijing (what a bill date means)."""
    return datetime.fromtimestamp(timestamp, CST).date()


def cst_datetime_text(timestamp: float) -> str:
    """`2024-05-01 12:00:00`, the bill's 交易时间 format."""
    return datetime.fromtimestamp(int(timestamp), CST).strftime("%Y-%m-%d %H:%M:%S")


def cst_compact(timestamp: float) -> str:
    """`20240501120000`, as embedded in prepay ids."""
    return datetime.fromtimestamp(int(timestamp), CST).strftime("%Y%m%d%H%M%S")
