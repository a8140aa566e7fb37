"""Writes with recovery: synchronous (a cluster: when ``write_batch`` returns, every row of
the batch is in the store, though the batch's tables are inserted by two threads at once;
a failed insert stops the flow, never lets the batch pass half-written), or drained when
an epoch closes (EpochStoreSink)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from archwatch.connectors.store_sink import EpochStoreSink, StoreSink, Tally

from archwatch.engine import Chunk, VersionClock
from archwatch.migrate import migrate
from archwatch.models import parse_record
from archwatch.store import ChdbStore, StoreError
from tests.conftest import GOLDEN

LINES = (GOLDEN / "missing-and-late" / "events.jsonl").read_text().splitlines()


def _batch() -> list[Any]:
    """A golden scenario's events and its cases' rows (with anomalies), as the dataflow
    hands them to the sink."""
    from archwatch.dataflows.reconcile import _ShardLogic

    from archwatch.engine import CaseShard, Watermark
    from archwatch.rules import Sla
    from archwatch.timeutil import parse_ts

    envs = [e for e in (parse_record(x, str(i)) for i, x in enumerate(LINES))
            if hasattr(e, "event")]
    logic = _ShardLogic.builder(lambda: CaseShard(4, Sla(), VersionClock(), lambda: 0))(None)
    out, _ = logic.on_batch([e.event for e in envs]
                            + [Watermark(parse_ts("2026-01-01T00:00:00Z"))])
    return [*envs, *(x for x in out if hasattr(x, "table"))]


def _drained() -> tuple[float, float]:
    """archwatch_sink_epoch_drain_seconds so far: (count, sum)."""
    from prometheus_client import REGISTRY

    name = "archwatch_sink_epoch_drain_seconds"
    return (REGISTRY.get_sample_value(f"{name}_count") or 0.0,
            REGISTRY.get_sample_value(f"{name}_sum") or 0.0)


def _counts(store: ChdbStore) -> dict[str, int]:
    return {t: store.query(f"SELECT count() AS n FROM {t}")[0]["n"]
            for t in ("event_log", "case_state", "kpi_task", "anomaly")}


def test_every_row_is_written_when_the_batch_returns(store: ChdbStore) -> None:
    migrate(store)
    items = _batch()
    want = {"event_log": sum(1 for x in items if hasattr(x, "event")),
            **{t: sum(1 for x in items if getattr(x, "table", "") == t)
               for t in ("case_state", "kpi_task", "anomaly")}}
    assert all(want.values())  # rows in every table, so that inserts run side by side
    part = StoreSink(store, Tally(), lambda _r: None, synchronous=True).build("s", 0, 1)
    assert part.writer.pool is not None
    part.write_batch(items)
    assert _counts(store) == want  # no drain: write_batch waited for every insert
    part.close()


class _Failing(ChdbStore):
    """Every INSERT into ``failing`` fails."""

    failing = "kpi_task"

    def insert(self, table: str, rows: Any) -> None:
        if table == self.failing:
            raise StoreError("disk full")
        super().insert(table, rows)


def test_a_failed_insert_stops_the_batch(tmp_path) -> None:
    store = _Failing(tmp_path / "db")
    try:
        migrate(store)
        part = StoreSink(store, Tally(), lambda _r: None, synchronous=True).build("s", 0, 1)
        with pytest.raises(RuntimeError, match="disk full"):
            part.write_batch(_batch())
        part.close()
    finally:
        store.close()


class _Slow(ChdbStore):
    """Every INSERT takes a while: rows a sink has not waited for are not in yet."""

    def insert(self, table: str, rows: Any) -> None:
        time.sleep(0.3)
        super().insert(table, rows)

    def insert_columns(self, table: str, columns: Any) -> None:
        time.sleep(0.3)
        super().insert_columns(table, columns)


def test_the_epoch_sink_waits_at_the_epoch_close_not_per_batch(tmp_path) -> None:
    """EpochStoreSink (live with recovery, one process): ``write_batch`` hands the rows to
    the writer and returns; the partition's ``snapshot``, which Bytewax calls when the
    epoch closes and before it commits the epoch, returns once every row is written."""
    store = _Slow(tmp_path / "db")
    try:
        migrate(store)
        items = _batch()
        want = {"event_log": sum(1 for x in items if hasattr(x, "event")),
                **{t: sum(1 for x in items if getattr(x, "table", "") == t)
                   for t in ("case_state", "kpi_task", "anomaly")}}
        sink = EpochStoreSink(store, Tally(), lambda _r: None, parts=2, max_delay=0.05)
        assert sink.list_parts() == ["000", "001"]
        part = sink.build_part("s", "001", None)
        part.write_batch([Chunk(items[:10]), *items[10:]])  # the flow's chunks, or values
        assert _counts(store) != want  # not waited for (five INSERTs take 1.5 s)
        waits, waited = _drained()
        assert part.snapshot() is None  # nothing to resume from: the rows are the state
        assert _counts(store) == want
        # the wait is on /metrics: the dataflow reads nothing while an epoch closes
        after = _drained()
        assert after[0] == waits + 1 and after[1] - waited >= 0.3
        part.close()
    finally:
        store.close()
