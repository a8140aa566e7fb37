"""Recovery: a shard restored from a snapshot resets the store to its own belief.

Scenario that needs it: after the snapshot, the shard wrote a transient anomaly (a case
seen before its on-time receipt, with the watermark past the deadline), then the worker
died. On restart the same events come back in another interleaving (receipt first), the
anomaly is never derived, so it is never withdrawn either — unless the restored shard
reconciles the store with its snapshot first.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import pytest
from archwatch.connectors.store_sink import StoreSink, Tally
from archwatch.dataflows.reconcile import _ShardLogic

from archwatch import report, rollup
from archwatch.engine import CaseShard, Reconcile, VersionClock, Watermark
from archwatch.migrate import migrate
from archwatch.models import parse_record
from archwatch.rules import Sla
from archwatch.settings import shard_of
from archwatch.timeutil import parse_ts
from tests.conftest import GOLDEN

LINES = (GOLDEN / "on-time" / "events.jsonl").read_text().splitlines()
COMPLETION = next(x for x in LINES if '"case.completed"' in x)
RECEIPT = next(x for x in LINES if '"archive.received"' in x)
FAR = Watermark(parse_ts("2026-01-01T00:00:00Z"))  # every deadline has passed


def ev(line: str):
    return parse_record(line, "t").event


def write(store, logic: _ShardLogic, items: list) -> None:
    out, _ = logic.on_batch(items)
    part = StoreSink(store, Tally(), lambda _r: None).build("s", 0, 1)
    part.write_batch(list(out))
    part.close()
    assert rollup.differences(store) == []  # kpi_item followed kpi_task, reconcile too
    assert rollup.count_differences(store) == []  # so did anomaly_count


def assert_missing_archive_withdrawn(store: Any, withdrawn: bool) -> None:
    """After the receipt came first in the rerun: the MISSING_ARCHIVE a crashed run wrote
    is gone and the case is archived (``withdrawn``), or it is still open (the failure
    that reconciling exists to prevent)."""
    summary = report.summary(store)
    if withdrawn:
        assert "MISSING_ARCHIVE" not in summary
        assert [c["status"] for c in report.cases(store)] == ["ARCHIVED_UNCHECKED"]
    else:
        assert summary.get("MISSING_ARCHIVE") == {"total": 1, "open": 1}


@pytest.mark.parametrize("reconcile", [True, False])
def test_restored_shard_withdraws_rows_written_after_its_snapshot(store, reconcile: bool) -> None:
    migrate(store)
    clock = VersionClock()
    build = _ShardLogic.builder(lambda: CaseShard(4, Sla(), clock, lambda: 0), recovery=True)
    logic = build(None)
    write(store, logic, [FAR])
    snap = logic.snapshot()
    assert isinstance(snap, bytes)
    # after the snapshot: the case without its receipt yet -> MISSING_ARCHIVE written
    write(store, logic, [ev(COMPLETION)])
    assert report.summary(store) == {"MISSING_ARCHIVE": {"total": 1, "open": 1}}
    # crash; restore; the receipt now comes first, in the same batch as the case
    restored = build(snap)
    if not reconcile:
        restored._reconcile = False
    write(store, restored, [ev(RECEIPT), ev(COMPLETION)])
    assert_missing_archive_withdrawn(store, reconcile)  # else: what the mechanism is for


def test_snapshot_is_immutable_bytes_and_off_without_recovery() -> None:
    clock = VersionClock()
    logic = _ShardLogic.builder(lambda: CaseShard(4, Sla(), clock, lambda: 0))(None)
    assert logic.snapshot() is None
    logic = _ShardLogic.builder(lambda: CaseShard(4, Sla(), clock, lambda: 0),
                                recovery=True)(None)
    logic.on_batch([ev(COMPLETION)])
    snap = logic.snapshot()
    logic.on_batch([ev(RECEIPT)])
    assert len(pickle.loads(snap).state("HZ2022030100001").facts.receipts) == 0
    # the snapshot left the case packed in the running shard; the receipt unpacked it
    assert len(logic.shard.state("HZ2022030100001").facts.receipts) == 1


def test_reapplying_the_same_output_changes_nothing(store, tmp_path: Path) -> None:
    """At-least-once output: writing a batch twice (a recovery re-emission) is a no-op."""
    migrate(store)
    clock = VersionClock()
    logic = _ShardLogic.builder(lambda: CaseShard(4, Sla(), clock, lambda: 0))(None)
    out, _ = logic.on_batch([ev(x) for x in LINES[:4]] + [FAR])
    part = StoreSink(store, Tally(), lambda _r: None).build("s", 0, 1)
    part.write_batch(list(out))
    part.drain()  # everything written before going on
    once = json.dumps(report.full(store), sort_keys=True)
    part.write_batch(list(out))
    part.drain()  # everything written before going on
    assert json.dumps(report.full(store), sort_keys=True) == once


@pytest.mark.parametrize("fresh_reconcile", [True, False])
def test_fresh_shard_withdraws_rows_of_an_earlier_run(store, fresh_reconcile: bool) -> None:
    """A crash before a shard's first snapshot (or a restart without recovery): the
    shard starts empty, but the store holds what it wrote; live, it reconciles too."""
    migrate(store)
    clock = VersionClock()
    build = _ShardLogic.builder(lambda: CaseShard(4, Sla(), clock, lambda: 0), recovery=True,
                                fresh_reconcile=fresh_reconcile)
    write(store, build(None), [FAR, ev(COMPLETION)])  # MISSING_ARCHIVE, then a crash
    assert report.summary(store) == {"MISSING_ARCHIVE": {"total": 1, "open": 1}}
    write(store, build(None), [ev(RECEIPT), ev(COMPLETION), FAR])  # the rerun, receipt first
    assert_missing_archive_withdrawn(store, fresh_reconcile)  # else: what the flag is for


def test_a_deferred_reconcile_spares_a_row_emitted_after_it(store) -> None:
    """The sink applies a Reconcile on its writer thread, possibly after its shard has
    emitted more rows: a row withdrawn by the Reconcile and emitted again after it must
    stay (the tombstones carry the version of the Reconcile's emission, not of its
    application)."""
    migrate(store)
    clock = VersionClock()
    build = _ShardLogic.builder(lambda: CaseShard(4, Sla(), clock, lambda: 0),
                                fresh_reconcile=True)
    a = ev(COMPLETION)
    shard = shard_of(a.caseNo, 4)
    other = next(f"HZ20220301{i:05d}" for i in range(2, 999)
                 if shard_of(f"HZ20220301{i:05d}", 4) == shard)
    b = ev(COMPLETION.replace(a.caseNo, other).replace(a.eventId, a.eventId + "-b"))
    old, _ = _ShardLogic.builder(lambda: CaseShard(4, Sla(), clock, lambda: 0))(None) \
        .on_batch([a])
    part = StoreSink(store, Tally(), lambda _r: None).build("s", 0, 1)
    part.write_batch(list(old))  # an earlier run wrote case A
    part.close()
    logic = build(None)  # the rerun: case B first, so the Reconcile withdraws A ...
    first, _ = logic.on_batch([b])
    assert type(first[0]) is Reconcile and first[0].version > 0
    second, _ = logic.on_batch([a])  # ... which comes again before the sink applied it
    part = StoreSink(store, Tally(), lambda _r: None).build("s", 0, 1)
    part.write_batch(list(first))
    part.write_batch(list(second))
    part.close()
    assert [c["caseNo"] for c in report.cases(store)] == sorted([a.caseNo, other])
    assert rollup.differences(store) == []


def test_a_reconcile_alone_is_applied_by_the_writer(store) -> None:
    """A batch holding only a Reconcile (a restored shard woken by a tick) still gets it
    applied, although no write follows to carry it."""
    migrate(store)
    clock = VersionClock()
    old, _ = _ShardLogic.builder(lambda: CaseShard(4, Sla(), clock, lambda: 0))(None) \
        .on_batch([ev(COMPLETION)])
    src = next(w.row["src"] for w in old if getattr(w, "table", "") == "case_state")
    part = StoreSink(store, Tally(), lambda _r: None).build("s", 0, 1)
    part.write_batch(list(old))
    part.drain()
    assert len(report.cases(store)) == 1
    part.write_batch([Reconcile(src, [], version=clock.next())])  # believes in nothing
    part.writer.drain()
    assert report.cases(store) == []
    part.close()


def test_reconcile_keeps_the_rows_of_evicted_cases(store) -> None:
    """Evicted cases are out of the shard's memory, not out of its belief."""
    from archwatch.engine import Eviction

    migrate(store)
    clock = VersionClock()
    loader_calls: list[list[str]] = []
    eviction = Eviction(lambda nos: loader_calls.append(nos) or {}, 0, 0)
    build = _ShardLogic.builder(lambda: CaseShard(4, Sla(), clock, lambda: 0, eviction),
                                recovery=True)
    logic = build(None)
    write(store, logic, [ev(COMPLETION), ev(RECEIPT), FAR])
    assert logic.shard.evicted == {"HZ2022030100001"}  # settled and left memory
    before = report.cases(store)
    restored = build(logic.snapshot())
    other = json.loads(COMPLETION)
    other.update(eventId="other-case", caseNo="HZ2022030100002")
    write(store, restored, [ev(json.dumps(other))])
    after = {c["caseNo"]: c for c in report.cases(store)}
    assert after["HZ2022030100001"] == before[0]
    assert set(after) == {"HZ2022030100001", "HZ2022030100002"} and not loader_calls


def test_a_quiet_shard_repeats_its_last_snapshot() -> None:
    """Watermarks that fire nothing leave the shard's snapshot as it was, not pickled
    again (every shard gets every tick's watermark, idle or not); anything else takes a
    new one; and a shard restored from the repeated snapshot decides as the live one."""
    clock = VersionClock()
    build = _ShardLogic.builder(lambda: CaseShard(4, Sla(), clock, lambda: 0), recovery=True)
    logic = build(None)
    completion = ev(COMPLETION)
    logic.on_batch([completion])
    first = logic.snapshot()
    quiet, _ = logic.on_batch([Watermark(completion.occurredAt + 1)])
    assert not [x for x in quiet if hasattr(x, "table")]
    assert logic.snapshot() is first
    fired, _ = logic.on_batch([FAR])  # past the archive deadline: MISSING_ARCHIVE
    codes = sorted(x.row["code"] for x in fired if getattr(x, "table", "") == "anomaly")
    assert codes == ["MISSING_ARCHIVE"]
    assert logic.snapshot() is not first
    restored = build(first)
    restored._reconcile = False
    again, _ = restored.on_batch([FAR])
    assert sorted(x.row["code"] for x in again if getattr(x, "table", "") == "anomaly") == codes
    restored.on_batch([ev(RECEIPT)])
    assert restored.snapshot() != first
