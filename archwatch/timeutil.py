"""Time helpers: RFC 3339 parsing to epoch milliseconds, ISO 8601 durations, Asia/Shanghai.

Everything inside the engine is an ``int`` of milliseconds since the Unix epoch (UTC):
comparisons and heaps over ints are cheap and exact, and the contract keeps timestamps
to the millisecond ("finer digits are dropped").
"""

from __future__ import annotations

import re
import time
from datetime import UTC, date, datetime, timedelta, timezone
from functools import lru_cache

SHANGHAI = timezone(timedelta(hours=8), "Asia/Shanghai")  # no DST since 1991
_SH_OFFSET_MS = 8 * 3600 * 1000
DAY_MS = 86_400_000
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()

# RFC 3339 date-time with a mandatory offset ("Z" or ±hh:mm); fraction of any length.
_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})$"
)


class TimeFormatError(ValueError):
    """A timestamp or duration that the contract does not accept."""


@lru_cache(maxsize=4096)
def _epoch_day(y: int, mo: int, d: int) -> int:
    return date(y, mo, d).toordinal() - _EPOCH_ORDINAL


@lru_cache(maxsize=256)
def _offset_ms(off: str) -> int:
    if off in ("Z", "z"):
        return 0
    oh, om = int(off[1:3]), int(off[4:6])
    if oh > 23 or om > 59:
        raise ValueError("offset out of range")
    return (1 if off[0] == "+" else -1) * (oh * 60 + om) * 60_000


@lru_cache(maxsize=16_384)
def _hour_ms(head: str, off: str) -> int:
    """Epoch ms of ``YYYY-MM-DDTHH`` at offset ``off`` (ranges checked; cached: a stream's
    timestamps share few hours, and this is most of the arithmetic)."""
    hh = int(head[11:13])
    if hh > 23:
        raise ValueError("time out of range")
    day = _epoch_day(int(head[0:4]), int(head[5:7]), int(head[8:10]))
    return (day * 24 + hh) * 3_600_000 - _offset_ms(off)


def parse_ts(text: str) -> int:
    """Parse an RFC 3339 timestamp with offset into epoch milliseconds (sub-ms digits dropped).

    The pattern decides what is accepted; once it matched, every field sits at a fixed
    position (``\\d`` is one character), so the arithmetic works on slices, with the
    date, hour and offset part cached: this runs for every timestamp of every
    event, and ``datetime.timestamp()`` is slow.
    """
    if _RFC3339.match(text) is None:
        raise TimeFormatError(f"not an RFC 3339 timestamp with offset: {text!r}")
    return matched_ts(text)


def matched_ts(text: str) -> int:
    """The arithmetic of :func:`parse_ts` for a ``text`` already known to match the
    RFC 3339 pattern (the parser checks the pattern in pydantic-core, in Rust, then calls
    this); range errors raise :class:`TimeFormatError` as in :func:`parse_ts`.

    The epoch ms of the minute (date, hour, minute, offset) is looked up in a dict: a
    stream's timestamps share few minutes, and a dict hit is cheaper than the checks and
    the ``lru_cache`` call behind it."""
    if len(text) == 29 and text[23] in "+-":
        # the usual spelling, YYYY-MM-DDTHH:MM:SS.fff+hh:mm: the hour's epoch ms from a
        # dict (a replay's timestamps mostly fall in a new minute, but in few hours),
        # seconds and milliseconds in one int(); a leap second or a minute out of range
        # takes the general path below
        mm = int(text[14:16])
        sms = int(text[17:19] + text[20:23])
        if mm < 60 and sms < 60_000:
            key = text[:13] + text[23:]
            hour = _HOUR_MS.get(key)
            if hour is None:
                try:
                    hour = _hour_ms(text[:13], text[23:])
                except ValueError as exc:
                    raise TimeFormatError(f"invalid timestamp {text!r}: {exc}") from None
                if len(_HOUR_MS) >= 65_536:
                    _HOUR_MS.clear()
                _HOUR_MS[key] = hour
            return hour + mm * 60_000 + sms
    off = "Z" if text[-1] in "Zz" else text[-6:]
    ss = int(text[17:19])
    base = _MINUTE_MS.get(text[:16] + off)
    if base is None or ss > 60:
        base = _minute_ms(text, off, ss)
    end = len(text) - (1 if off == "Z" else 6)
    if end == 23:  # the usual three fraction digits
        return base + min(ss, 59) * 1000 + int(text[20:23])
    ms = int(text[20:end][:3].ljust(3, "0")) if end > 19 else 0
    return base + min(ss, 59) * 1000 + ms


_MINUTE_MS: dict[str, int] = {}
_HOUR_MS: dict[str, int] = {}  # YYYY-MM-DDTHH±hh:mm -> epoch ms (matched_ts' shortcut)


def _minute_ms(text: str, off: str, ss: int) -> int:
    """Epoch ms of ``text``'s minute, range-checked in :func:`parse_ts`'s order (seconds
    and minutes, then date, hour and offset); remembered in ``_MINUTE_MS``."""
    mm = int(text[14:16])
    try:
        if mm > 59 or ss > 60:
            raise ValueError("time out of range")
        base = _hour_ms(text[:13], off) + mm * 60_000
    except ValueError as exc:
        raise TimeFormatError(f"invalid timestamp {text!r}: {exc}") from None
    if len(_MINUTE_MS) >= 65_536:  # bounded: a long replay walks through many minutes
        _MINUTE_MS.clear()
    _MINUTE_MS[text[:16] + off] = base
    return base


def to_iso_utc(ms: int | None) -> str | None:
    """Epoch ms → ``YYYY-MM-DDTHH:MM:SS[.fff]Z`` (the golden files' spelling)."""
    if ms is None:
        return None
    dt = datetime.fromtimestamp(ms / 1000, UTC)
    if ms % 1000:
        return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def to_shanghai_text(ms: int | None) -> str | None:
    """Epoch ms → ``YYYY-MM-DD HH:MM:SS`` in Asia/Shanghai (the seed API's format)."""
    if ms is None:
        return None
    return datetime.fromtimestamp(ms // 1000, SHANGHAI).strftime("%Y-%m-%d %H:%M:%S")


def shanghai_year(ms: int) -> int:
    """Calendar year of an instant in Asia/Shanghai."""
    return date.fromordinal((ms + _SH_OFFSET_MS) // DAY_MS + _EPOCH_ORDINAL).year


def ch_time(ms: int) -> str:
    """Epoch ms → the decimal-seconds text ClickHouse reads exactly into DateTime64(3)."""
    return f"{ms // 1000}.{ms % 1000:03d}"


def now_ms() -> int:
    """Wall clock in epoch ms; the only wall-clock read outside injected clocks. From
    ``time.time_ns`` (an int), not a datetime: the engine reads it per applied event
    and per KPI row."""
    return time.time_ns() // 1_000_000


_DURATION = re.compile(
    r"^P(?:(\d+)W)?(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d{1,3})?)S)?)?$"
)


def parse_duration(text: str) -> int:
    """Parse an ISO 8601 duration (weeks, days, hours, minutes, seconds) into milliseconds.

    Years and months are refused: they have no fixed length, and an SLA must be exact.
    """
    m = _DURATION.match(text.strip().upper()) if text else None
    if m is None or text.strip().upper() in ("P", "PT") or text.strip().upper().endswith("T"):
        raise TimeFormatError(
            f"not an ISO 8601 duration of weeks/days/hours/minutes/seconds: {text!r}"
        )
    w, d, h, mi, s = m.groups()
    total = (int(w or 0) * 7 + int(d or 0)) * DAY_MS
    total += int(h or 0) * 3_600_000 + int(mi or 0) * 60_000
    total += round(float(s or 0) * 1000)
    return total


def format_duration(ms: int) -> str:
    """Milliseconds → a canonical ISO 8601 duration (inverse of :func:`parse_duration`)."""
    days, rest = divmod(ms, DAY_MS)
    h, rest = divmod(rest, 3_600_000)
    mi, rest = divmod(rest, 60_000)
    s = rest / 1000
    out = "P" + (f"{days}D" if days else "")
    t = (f"{h}H" if h else "") + (f"{mi}M" if mi else "") + (f"{s:g}S" if s else "")
    return out + ("T" + t if t else ("" if days else "T0S"))
