"""Timestamps: the parser's arithmetic on slices agrees with a plain reference parser on
every shape the pattern accepts or refuses."""

from __future__ import annotations


def _reference_parse_ts(text: str) -> int:
    """The straightforward parser (regex groups, datetime arithmetic) the fast one replaced."""
    import re
    from datetime import UTC, datetime, timedelta, timezone

    m = re.match(r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?"
                 r"([Zz]|[+-]\d{2}:\d{2})$", text)
    if m is None:
        raise ValueError(text)
    y, mo, d, h, mi, s, frac, off = m.groups()
    if off in "Zz":
        tz = UTC
    else:
        oh, om = int(off[1:3]), int(off[4:6])
        if oh > 23 or om > 59:
            raise ValueError(text)
        tz = timezone((1 if off[0] == "+" else -1) * timedelta(hours=oh, minutes=om))
    if int(s) > 60:
        raise ValueError(text)
    dt = datetime(int(y), int(mo), int(d), int(h), int(mi), min(int(s), 59), tzinfo=tz)
    ms = int(frac[:3].ljust(3, "0")) if frac else 0
    return int(dt.timestamp()) * 1000 + ms


def test_parse_ts_matches_reference() -> None:
    from itertools import product

    from archwatch.timeutil import TimeFormatError, parse_ts

    dates = ["2025-01-02", "2024-02-29", "2023-02-29", "2025-13-01", "1970-01-01",
             "9999-12-31", "２０２５-01-02"]
    times = ["00:00:00", "23:59:59", "23:59:60", "24:00:00", "12:60:00", "12:00:61"]
    fracs = ["", ".1", ".12", ".123", ".1234567", "."]
    offs = ["Z", "z", "+08:00", "-05:30", "+23:59", "+24:00", "-00:60", "+0800", ""]
    # twice: the second pass finds every minute in the cache (matched_ts' shortcut)
    for d, sep, t, f, o in [*product(dates, "Tt _", times, fracs, offs)] * 2:
        text = d + sep + t + f + o
        try:
            want: int | None = _reference_parse_ts(text)
        except ValueError:
            want = None
        try:
            got: int | None = parse_ts(text)
        except TimeFormatError:
            got = None
        assert got == want, text
