"""The parser's fast path (pydantic-core checks the timestamp pattern, Python only the
arithmetic) must never accept what the reference validator rejects, nor build a different
event: parse_record falls back to the reference for anything the fast path refuses, so
the accepted set and every reject reason stay the reference's own (contract §2)."""

from __future__ import annotations

import json
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from archwatch.models import (
    _ADAPTER,
    EVENT_TYPES,
    Envelope,
    Reject,
    _fast_event,
    _reason,
    parse_record,
    payload_digest,
)
from archwatch.timeutil import TimeFormatError, matched_ts, parse_ts
from tests.conftest import GOLDEN


def reference_parse(text: str) -> tuple[str, Any]:
    """parse_record before the fast path: ("ok", event) or ("reject", reason)."""
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        return "reject", f"not valid JSON: {exc.msg}"
    if not isinstance(obj, dict):
        return "reject", f"not a JSON object: {type(obj).__name__}"
    etype = obj.get("type")
    if etype not in EVENT_TYPES:
        return "reject", ("type: missing" if etype is None
                          else f"type: unknown event type {etype!r}")
    try:
        return "ok", _ADAPTER.validate_python(obj)
    except ValidationError as exc:
        return "reject", _reason(exc)


def same_event(a: Any, b: Any) -> bool:
    return (type(a) is type(b) and list(a.__dict__.items()) == list(b.__dict__.items())
            and a.__pydantic_fields_set__ == b.__pydantic_fields_set__
            and a.__pydantic_extra__ == b.__pydantic_extra__)


def check(text: str) -> None:
    kind, ref = reference_parse(text)
    got = parse_record(text, "t")
    if kind == "ok":
        assert isinstance(got, Envelope), (text, got)
        assert same_event(got.event, ref)
        assert got.digest == payload_digest(orjson.loads(text))
    else:
        assert isinstance(got, Reject) and got.reason == ref, (text, got, ref)


def golden_lines() -> list[str]:
    return [x for p in sorted(GOLDEN.glob("*/events.jsonl"))
            for x in p.read_text(encoding="utf-8").splitlines() if x.strip()]


def test_golden_records_parse_as_the_reference() -> None:
    lines = golden_lines()
    assert any(isinstance(parse_record(x, "t"), Reject) for x in lines)
    for line in lines:
        check(line)


BASE = {"eventId": "e-1", "type": "case.completed", "occurredAt": "2024-03-05T10:20:30+08:00",
        "source": "S", "caseNo": "C1", "taskId": "t", "taskCode": "T", "taskName": "n",
        "deptCode": "D", "deptName": "d", "qym": "330100", "area": "a", "systemCode": "S",
        "systemName": "s", "systemLevel": "省", "completedAt": "2024-03-05T10:20:30.5Z"}

# Timestamps from pieces that straddle every rule: non-ASCII digits, range edges, lower
# case separators, trailing newline, fractions of any length, bad offsets.
_DIGITS = st.sampled_from(list("0123456789") + ["٣", "０", "x"])
_TS = st.builds(
    lambda y, mo, d, sep, h, mi, s, frac, off, tail: f"{y}-{mo}-{d}{sep}{h}:{mi}:{s}{frac}{off}{tail}",
    st.sampled_from(["2024", "1999", "0001", "9999", "٢٠٢٤", "202"]),
    st.sampled_from(["01", "02", "12", "13", "00", "1"]),
    st.sampled_from(["01", "28", "29", "30", "31", "32", "00"]),
    st.sampled_from(["T", "t", " ", "_"]),
    st.sampled_from(["00", "23", "24", "9"]),
    st.sampled_from(["00", "59", "60"]),
    st.sampled_from(["00", "59", "60", "61"]),
    st.one_of(st.just(""), st.text(_DIGITS, min_size=0, max_size=8).map(lambda x: "." + x)),
    st.sampled_from(["Z", "z", "+08:00", "-23:59", "+24:00", "+08:60", "+0800", "", "+08:00Z"]),
    st.sampled_from(["", "", "", "\n", " "]),
)


@settings(max_examples=600, deadline=None)
@given(occurred=st.one_of(_TS, st.text(max_size=30), st.integers()), completed=_TS)
def test_fast_path_never_accepts_more_than_the_reference(occurred: Any, completed: str) -> None:
    obj = {**BASE, "occurredAt": occurred, "completedAt": completed}
    fast = _fast_event("case.completed", obj)
    try:
        ref = _ADAPTER.validate_python(obj)
    except ValidationError:
        ref = None
    if fast is not None:
        assert ref is not None and same_event(fast, ref)
    check(json.dumps(obj, ensure_ascii=False))


@settings(max_examples=600, deadline=None)
@given(text=_TS)
def test_matched_ts_is_parse_ts(text: str) -> None:
    from archwatch.timeutil import _RFC3339
    if _RFC3339.match(text) is None:
        return
    try:
        want: Any = parse_ts(text)
    except TimeFormatError as exc:
        want = str(exc)
    for _ in range(2):  # second call hits the minute cache
        try:
            got: Any = matched_ts(text)
        except TimeFormatError as exc:
            got = str(exc)
        assert got == want


def test_every_type_has_a_fast_validator_with_its_timestamps() -> None:
    from archwatch.models import _FAST
    assert set(_FAST) == set(EVENT_TYPES)
    assert _FAST["case.completed"][1] == ("occurredAt", "completedAt")
    assert all(f[1][0] == "occurredAt" for f in _FAST.values())


def test_fast_validators_leave_timestamps_to_python() -> None:
    """Guards the pydantic-core "prebuilt" workaround in models._fast_validator: if the
    class's own validator were reused, timestamps would come back as ints (slow path)."""
    from archwatch.models import _FAST
    event = _FAST["case.completed"][0].validate_python(BASE)
    assert event.__dict__["occurredAt"] == BASE["occurredAt"]
    assert event.__dict__["completedAt"] == BASE["completedAt"]
