"""Unit tests of the pure rules: no Bytewax, no store."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from archwatch.kpi import KpiAcc, rate, time_diff_days
from archwatch.receivers import ReceiverFacts, Registration, gaps
from archwatch.rules import (
    CaseFacts,
    KpiKey,
    KpiPart,
    Sla,
    evaluate,
    evaluate_archive_no,
    receipt_facts,
)
from archwatch.timeutil import (
    TimeFormatError,
    format_duration,
    parse_duration,
    parse_ts,
    shanghai_year,
    to_shanghai_text,
)

T0 = parse_ts("2022-03-01T10:00:00+08:00")
H = 3_600_000
DAY = 24 * H
ARCH = "330101-08-00322-001-2022-D100-0000001"
_seq = 0


def ev(etype: str, at: int, **kw: Any) -> SimpleNamespace:
    global _seq
    _seq += 1
    return SimpleNamespace(type=etype, occurredAt=at, eventId=kw.pop("eventId", f"e{_seq:05d}"),
                           caseNo=kw.pop("caseNo", "C1"), **kw)


def completed(at: int = T0, **kw: Any) -> SimpleNamespace:
    base = dict(completedAt=at, taskId="t", taskCode="许可-00198-000", taskName="n",
                deptCode="d", deptName="dn", qym="330101", area="市本级", systemCode="S",
                systemName="sn", systemLevel="省")
    base.update(kw)
    return ev("case.completed", at + 60_000, **base)


def received(at: int, archive_no: str = ARCH, **kw: Any) -> SimpleNamespace:
    meta = kw.pop("meta", {"taskCode": "许可-00198-000", "deptCode": "d", "qym": "330101",
                           "completedAt": "2022-03-01T10:00:00+08:00"})
    return ev("archive.received", at, archiveNo=archive_no, receiverQym="330101",
              packageSha256="a" * 64, meta=meta, **kw)


def checked(at: int, passed: bool, archive_no: str = ARCH) -> SimpleNamespace:
    return ev("archive.checked", at, archiveNo=archive_no, passed=passed,
              failedItems=[] if passed else ["GD-2-6"])


def facts(*events: SimpleNamespace) -> CaseFacts:
    f = CaseFacts("C1")
    for e in events:
        f.add(e)
    return f


def codes(res: Any) -> list[tuple[str, int, int | None]]:
    return sorted((a.code, a.opened_at, a.resolved_at) for a in res.anomalies.values())


SLA = Sla(check=30 * DAY, backup=30 * DAY, distribution=30 * DAY)


class TestDeadlines:
    def test_deadline_equal_to_watermark_does_not_fire(self) -> None:
        deadline = T0 + SLA.archive
        res = evaluate(facts(completed()), deadline, SLA)
        assert codes(res) == [] and res.row.status == "PENDING"
        assert res.next_deadline == deadline
        res = evaluate(facts(completed()), deadline + 1, SLA)
        assert codes(res) == [("MISSING_ARCHIVE", deadline, None)]
        assert res.row.status == "MISSING" and res.next_deadline is None

    def test_receipt_at_the_deadline_is_on_time(self) -> None:
        deadline = T0 + SLA.archive
        res = evaluate(facts(completed(), received(deadline)), deadline + DAY, SLA)
        assert codes(res) == []  # neither MISSING nor LATE: at the deadline is on time

    def test_late_receipt_resolves_missing_and_records_late(self) -> None:
        deadline = T0 + SLA.archive
        r = deadline + 5 * H
        res = evaluate(facts(completed(), received(r), checked(r + H, True)), r + 2 * H, SLA)
        assert codes(res) == [("LATE_ARCHIVE", r, None), ("MISSING_ARCHIVE", deadline, r)]
        assert res.row.status == "ARCHIVED_OK"

    def test_missing_does_not_exist_before_its_deadline_fires_even_if_receipt_is_late(self) -> None:
        deadline = T0 + SLA.archive
        res = evaluate(facts(completed(), received(deadline + 1)), deadline, SLA)
        assert [c for c, *_ in codes(res)] == ["LATE_ARCHIVE"]


class TestRuns:
    def test_fail_fail_pass_fail_is_two_runs(self) -> None:
        r = T0 + H
        f = facts(completed(), received(r), checked(r + 1, False), checked(r + 2, False),
                  checked(r + 3, True), checked(r + 4, False))
        res = evaluate(f, r + DAY, SLA)
        assert codes(res) == [("CHECK_FAILED", r + 1, r + 3), ("CHECK_FAILED", r + 4, None)]
        assert res.row.status == "ARCHIVED_FAIL"

    def test_checks_before_their_receipt_count_with_their_own_time(self) -> None:
        r = T0 + H
        res = evaluate(facts(completed(), checked(r - 1, True), received(r)), r + DAY, SLA)
        assert codes(res) == [] and res.row.status == "ARCHIVED_OK"

    def test_distribution_failure_runs_end_at_ack_not_at_sent(self) -> None:
        r = T0 + H
        d = dict(archiveNo=ARCH, distributionNo="FF1", targetQym="330101")
        f = facts(completed(), received(r),
                  ev("archive.distributed", r + 1, status="failed", **d),
                  ev("archive.distributed", r + 2, status="sent", **d),
                  ev("archive.distributed", r + 3, status="acked", **d))
        res = evaluate(f, r + DAY, SLA)
        assert ("DISTRIBUTION_FAILED", r + 1, r + 3) in codes(res)


class TestDuplicates:
    def test_a_a_b_b(self) -> None:
        b = ARCH[:-1] + "2"
        f = facts(completed(), received(T0 + 1), received(T0 + 2), received(T0 + 3, b),
                  received(T0 + 4, b))
        got = sorted((a.code, a.archive_no, a.opened_at) for a in evaluate(
            f, T0 + 2 * H, SLA).anomalies.values())
        assert got == [("DUPLICATE_ARCHIVE", b, T0 + 3), ("DUPLICATE_RECEIPT", ARCH, T0 + 2),
                       ("DUPLICATE_RECEIPT", b, T0 + 4)]

    def test_conflict_owner_is_earliest_receipt_across_cases(self) -> None:
        f1, f2 = CaseFacts("C1"), CaseFacts("C2")
        f1.add(received(T0 + 10, caseNo="C1", eventId="x1"))
        f2.add(received(T0 + 5, caseNo="C2", eventId="x2"))
        out = evaluate_archive_no({r.event_id: r for r in receipt_facts(f1) + receipt_facts(f2)})
        assert [(a.case_no, a.opened_at) for a in out.values()] == [("C1", T0 + 10)]


class TestErrors:
    def test_meta_with_other_offset_is_the_same_instant(self) -> None:
        meta = {"taskCode": "许可-00198-000", "deptCode": "d", "qym": "330101",
                "completedAt": "2022-03-01T02:00:00Z"}
        res = evaluate(facts(completed(), received(T0 + H, meta=meta)), T0 + 2 * H, SLA)
        assert codes(res) == []

    def test_meta_missing_a_field_is_a_mismatch_not_a_reject(self) -> None:
        res = evaluate(facts(completed(), received(T0 + H, meta={"taskCode": "x"})),
                       T0 + 2 * H, SLA)
        assert [c for c, *_ in codes(res)] == ["METADATA_MISMATCH"]

    @pytest.mark.parametrize("archive_no,invalid", [
        ("330101-08-00322-001-2022-Y-0000001", False),
        ("330101-08-00322-001-2022-D10-0000001", False),
        ("330101-08-00322-001-2022-D1-0000001", True),
        ("330101-08-00322-001-2021-D100-0000001", True),  # year differs from the case's
        ("33010-08-00322-001-2022-D100-0000001", True),
    ])
    def test_archive_number_rules(self, archive_no: str, invalid: bool) -> None:
        res = evaluate(facts(completed(), received(T0 + H, archive_no)), T0 + 2 * H, SLA)
        assert ("INVALID_ARCHIVE_NO" in [c for c, *_ in codes(res)]) is invalid

    def test_orphan_opens_after_grace_and_resolves_when_case_arrives(self) -> None:
        r = T0 + H
        f = facts(received(r))
        assert codes(evaluate(f, r + SLA.orphan, SLA)) == []
        assert codes(evaluate(f, r + SLA.orphan + 1, SLA)) == [
            ("ORPHAN_ARCHIVE", r + SLA.orphan, None)]
        c = completed()
        c.occurredAt = r + 2 * DAY
        f.add(c)
        res = evaluate(f, r + 3 * DAY, SLA)
        assert ("ORPHAN_ARCHIVE", r + SLA.orphan, r + 2 * DAY) in codes(res)

    def test_earliest_completion_defines_the_case(self) -> None:
        f = facts(completed(qym="330102"))
        early = completed(qym="330109")
        early.occurredAt -= H
        assert f.add(early) is True
        late = completed(qym="330110")
        late.occurredAt += H
        assert f.add(late) is False
        assert evaluate(f, T0, SLA).row.qym == "330109"


class TestHeartbeats:
    REG = Registration("r1", "330109", 60_000, 120_000)

    def test_period_exactly_at_limit_is_no_gap(self) -> None:
        f = ReceiverFacts("r1")
        for i in range(5):
            f.add(T0 + i * 180_000, f"h{i}")
        out, pending = gaps(f, self.REG, T0 + 4 * 180_000)
        assert out == {} and pending == T0 + 4 * 180_000 + 180_000

    def test_gap_resolves_at_next_beat_and_last_beat_goes_down(self) -> None:
        f = ReceiverFacts("r1")
        for i, t in enumerate((0, 60_000, 600_000)):
            f.add(T0 + t, f"h{i}")
        out, _ = gaps(f, self.REG, T0 + 900_000)
        assert sorted((a.opened_at - T0, a.resolved_at and a.resolved_at - T0)
                      for a in out.values()) == [(240_000, 600_000), (780_000, None)]


class TestKpi:
    def test_time_diff_rounds_half_away_from_zero(self) -> None:
        assert time_diff_days(3 * H, 1) == 0.13  # 0.125 days
        assert time_diff_days(0, 0) == 0
        assert time_diff_days(int(0.005 * DAY), 1) == 0.01  # half-even would give 0.0

    def test_rates_are_zero_without_divisor(self) -> None:
        assert rate(1, 0) == 0 and rate(1, 4) == 0.25

    def test_last_receive_moves_back_when_its_case_leaves(self) -> None:
        key = KpiKey(2022, "330101", "d", "S", "t", "省")
        acc = KpiAcc()
        a, b = KpiPart(key, 1, 1, 0, 10, 100), KpiPart(key, 1, 1, 0, 20, 200)
        acc.apply(a, 1)
        acc.apply(b, 1)
        assert acc.last_receive == 200
        acc.apply(b, -1)
        assert acc.last_receive == 100 and acc.cycle_ms_sum == 10 and acc.kpi == 1


class TestTime:
    def test_timestamps(self) -> None:
        assert parse_ts("2022-03-01T02:00:00Z") == parse_ts("2022-03-01T10:00:00+08:00")
        assert parse_ts("2022-03-01T10:00:00.123999+08:00") % 1000 == 123
        for bad in ("2022-03-01T10:00:00", "2022-03-01", "2022-02-30T00:00:00Z", "x"):
            with pytest.raises(TimeFormatError):
                parse_ts(bad)

    def test_shanghai_new_year(self) -> None:
        assert shanghai_year(parse_ts("2021-12-31T16:00:00Z")) == 2022
        assert shanghai_year(parse_ts("2021-12-31T15:59:59.999Z")) == 2021
        assert to_shanghai_text(parse_ts("2021-12-31T16:00:00Z")) == "2022-01-01 00:00:00"

    def test_durations(self) -> None:
        assert parse_duration("P30D") == 30 * DAY
        assert parse_duration("PT5M") == 300_000
        assert parse_duration("P1DT6H") == DAY + 6 * H
        assert format_duration(parse_duration("PT6H")) == "PT6H"
        for bad in ("P", "PT", "30D", "P1M", "P1Y", ""):
            with pytest.raises(TimeFormatError):
                parse_duration(bad)
