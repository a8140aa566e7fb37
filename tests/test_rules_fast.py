"""The rules' fast paths give exactly the full evaluation's answer (contract §3).

``evaluate_summary`` takes a shortcut for cases without a receipt; here hypothesis draws
random fact sets (every event type, colliding times and ids, valid and invalid archive
numbers, matching and mismatching metadata, events in any order) and random watermarks,
and the shortcut's anomalies, summary and next deadline must equal those of
``evaluate_summary_full`` over the same facts.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from archwatch.rules import CaseFacts, Sla, evaluate_summary, evaluate_summary_full
from archwatch.timeutil import parse_ts, to_iso_utc

T0 = parse_ts("2024-12-31T12:00:00+08:00")  # a year boundary within a day of the events
H = 3_600_000
ARCHIVES = ("330101-08-00322-001-2024-D100-0000001", "330101-08-00322-001-2025-Y-0000002",
            "not-a-number")
SLA = Sla(archive=2 * H, push=H, check=H, backup=H, distribution=H, orphan=H)

times = st.integers(T0 - 3 * H, T0 + 6 * H).map(lambda t: t - t % 60_000)  # collisions
ids = st.sampled_from([f"e{i}" for i in range(6)])


def _event(draw: st.DrawFn, etype: str) -> SimpleNamespace:
    at = draw(times)
    base: dict[str, Any] = dict(type=etype, occurredAt=at, eventId=draw(ids), caseNo="C1")
    archive_no = draw(st.sampled_from(ARCHIVES))
    if etype == "case.completed":
        base.update(completedAt=at - draw(st.integers(0, 3)) * 60_000, taskId="t",
                    taskCode=draw(st.sampled_from(["T1", "T2"])), taskName="n",
                    deptCode="d", deptName="dn", qym="330101", area="a", systemCode="S",
                    systemName="sn", systemLevel="市")
    elif etype == "province.pushed":
        base.update(batchNo=draw(st.sampled_from(["b1", "b2"])), targetQym="330000")
    elif etype == "archive.received":
        completed = draw(st.one_of(st.none(), times.map(to_iso_utc)))
        base.update(archiveNo=archive_no, packageSha256=draw(st.sampled_from("ab")),
                    meta={"taskCode": draw(st.sampled_from(["T1", "T2"])), "deptCode": "d",
                          "qym": "330101", "completedAt": completed})
    elif etype == "archive.checked":
        base.update(archiveNo=archive_no, passed=draw(st.booleans()))
    elif etype == "archive.backedUp":
        base.update(archiveNo=archive_no, backupId=draw(st.sampled_from(["k1", "k2"])),
                    sha256=draw(st.sampled_from("ab")))
    else:
        base.update(archiveNo=archive_no, distributionNo=draw(st.sampled_from(["d1", "d2"])),
                    status=draw(st.sampled_from(["sent", "acked", "failed"])))
    return SimpleNamespace(**base)


@st.composite
def fact_sets(draw: st.DrawFn) -> CaseFacts:
    """The facts of one case, events added in the drawn order."""
    kinds = ["case.completed", "province.pushed", "archive.received", "archive.checked",
             "archive.backedUp", "archive.distributed"]
    f = CaseFacts("C1")
    for kind in draw(st.lists(st.sampled_from(kinds), max_size=10)):
        f.add(_event(draw, kind))
    return f


def watermark(data: st.DataObject, f: CaseFacts) -> int:
    """Any time, or one of the case's deadlines give or take a millisecond: a deadline
    equal to the watermark (which must not fire) and the ones just around it."""
    times = [1]
    if f.completion is not None:
        times.append(f.completion.completed_at + SLA.archive)
    times += [at + SLA.push for at, _eid in (f.pushes or {}).values()]
    times += [r.at + d for r in f.receipts for d in (SLA.check, SLA.backup, SLA.orphan)]
    return data.draw(st.one_of(
        st.integers(T0 - 4 * H, T0 + 12 * H),
        st.builds(lambda t, d: t + d, st.sampled_from(times), st.sampled_from([-1, 0, 1]))))


@settings(max_examples=600, deadline=None)
@given(f=fact_sets(), data=st.data())
def test_fast_paths_equal_the_full_evaluation(f: CaseFacts, data: st.DataObject) -> None:
    wm = watermark(data, f)
    fast, full = evaluate_summary(f, wm, SLA), evaluate_summary_full(f, wm, SLA)
    assert fast == full
    assert list(fast[0]) == list(full[0])  # same order too: rows get versions in it


@settings(max_examples=300, deadline=None)
@given(f=fact_sets(), data=st.data())
def test_fast_path_taken_without_receipts(f: CaseFacts, data: st.DataObject) -> None:
    """The property above also covers the unreceived shortcut itself (not only cases
    that fall through to the full evaluation)."""
    f.receipts = ()
    assume(f.completion is not None)
    wm = watermark(data, f)
    anomalies, summary, deadline = evaluate_summary(f, wm, SLA)
    assert (anomalies, summary, deadline) == evaluate_summary_full(f, wm, SLA)
    assert summary is not None and summary[1] is None and summary[3] in ("PENDING", "MISSING")


@settings(max_examples=400, deadline=None)
@given(a=fact_sets(), b=fact_sets(), data=st.data())
def test_engine_compares_rows_and_kpi_parts_by_their_idents(
    a: CaseFacts, b: CaseFacts, data: st.DataObject
) -> None:
    """CaseShard decides from (completion, rest of the summary) idents whether the row
    and the KPI part changed, before building them: equal idents must mean equal objects
    (and, for rows, different idents different rows, or a needless write)."""
    from archwatch.engine import _kpi_ident, _rest, _row_ident
    from archwatch.rules import kpi_of, row_of

    sa = evaluate_summary(a, watermark(data, a), SLA)[1]
    sb = evaluate_summary(b, watermark(data, b), SLA)[1]
    ca, cb = (None if s is None else s[0] for s in (sa, sb))
    ra, rb = _rest(sa), _rest(sb)
    assert (_row_ident(ca, ra) == _row_ident(cb, rb)) == (row_of("C1", sa) == row_of("C1", sb))
    if _kpi_ident(ca, ra) == _kpi_ident(cb, rb):
        assert kpi_of(sa) == kpi_of(sb)
