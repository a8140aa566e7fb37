"""Alerts first (live writes that do not wait, connectors/store_sink._Writer._express):
between the tables of the write under way, the writer takes the anomaly rows buffered for
the next one and inserts them, so that a new anomaly does not wait for a whole write of
case states and event log; never while a Reconcile waits, never by blocking on the
dataflow's buffer. And live in one process, the AlertSink beside the main sink: the
anomaly rows written as they come, by a writer of their own."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from archwatch.connectors.store_sink import AlertSink, StoreSink, Tally

from archwatch.engine import Chunk, Reconcile
from archwatch.migrate import migrate
from archwatch.store import ChdbStore
from tests.kafka_helpers import poll
from tests.test_sink_sync import _batch, _counts, _Failing


def _live_part(store: ChdbStore) -> Any:
    # a buffer that is never due on its own (the test decides when rows move)
    part = StoreSink(store, Tally(), lambda _r: None, max_delay=3600, refresh_every=None,
                     alerts_first=True).build("s", 0, 1)
    assert part.writer.express is not None and part.writer.pool is None
    return part


def test_buffered_anomalies_go_in_between_the_tables_of_a_write(store: ChdbStore) -> None:
    migrate(store)
    items = _batch()
    anomalies = sum(1 for x in items if getattr(x, "table", "") == "anomaly")
    assert anomalies
    part = _live_part(store)
    try:
        part.write_batch(items)  # buffered: not due, the writer idle
        assert _counts(store)["anomaly"] == 0
        part.writer._express()  # what the writer does between two tables of a write
        counts = _counts(store)
        assert counts["anomaly"] == anomalies  # in, ahead of the rest of their buffer
        assert counts["case_state"] == counts["event_log"] == 0
        assert "anomaly" not in part.tables and part.tables["case_state"]
        part.drain()
        assert _counts(store)["anomaly"] == anomalies  # not written twice
    finally:
        part.close()


def test_not_while_a_reconcile_waits_nor_while_the_dataflow_holds_the_buffer(
        store: ChdbStore) -> None:
    migrate(store)
    part = _live_part(store)
    try:
        part.write_batch(_batch())
        got: list[Any] = []
        with part._lock:  # the dataflow thread in write_batch (maybe waiting on the writer)
            t = threading.Thread(target=lambda: got.append(part._take_alerts()))
            t.start()
            t.join(5)
        assert got == [{}]  # the writer's thread did not wait for the buffer
        with part.writer._reconciles_lock:  # a Reconcile submitted, not yet applied
            part.writer._reconciles.append(Reconcile("c000", []))
        assert part._take_alerts() == {}
        assert part.tables["anomaly"]
    finally:
        with part.writer._reconciles_lock:
            part.writer._reconciles.clear()
        part.close()


class _Recording(ChdbStore):
    """Records the order of inserts; while the write under way inserts its case states,
    ``during`` runs once (the dataflow buffering the next batch meanwhile)."""

    def __init__(self, *a: Any, **k: Any) -> None:
        super().__init__(*a, **k)
        self.order: list[str] = []
        self.during: Any = None

    def insert(self, table: str, rows: Any) -> None:
        super().insert(table, rows)
        self.order.append(table)
        if table == "case_state" and self.during is not None:
            during, self.during = self.during, None
            during()

    def insert_columns(self, table: str, columns: Any) -> None:
        super().insert_columns(table, columns)
        self.order.append(table)


def test_a_write_takes_the_next_buffers_anomalies_before_its_event_log(tmp_path) -> None:
    store = _Recording(tmp_path / "db")
    try:
        migrate(store)
        part = _live_part(store)
        first = [x for x in _batch() if getattr(x, "table", "") != "anomaly"]
        later = [x for x in _batch() if getattr(x, "table", "") == "anomaly"]
        store.during = lambda: part.write_batch(later)  # arrives while the write runs
        part.write_batch(first)
        part.flush()
        part.writer.drain(derived=False)
        order = store.order
        # the first write's case states, then the later batch's anomalies, then its log
        assert order.index("case_state") < order.index("anomaly") < order.index("event_log")
        assert "anomaly" not in part.tables
        part.close()
    finally:
        store.close()


# --- AlertSink: the anomaly rows written as they come, beside the main sink ------------


def _alert_rows() -> list[Any]:
    return [x for x in _batch() if getattr(x, "table", "") in ("anomaly", "anomaly_count")]


def test_the_alert_sink_writes_what_it_gets_without_being_drained(store: ChdbStore) -> None:
    migrate(store)
    rows = _alert_rows()
    want = sum(1 for x in rows if x.table == "anomaly")
    assert want
    part = AlertSink(store).build("alerts", 0, 1)
    try:
        part.write_batch([Chunk(rows)])  # the flow's items: one chunk per batch
        poll(part.idle, 30, 0.02, "the rows written")
        assert _counts(store)["anomaly"] == want
        counts = store.query("SELECT count() AS n FROM anomaly_count")[0]["n"]
        assert counts == sum(1 for x in rows if x.table == "anomaly_count") > 0
        assert _counts(store)["case_state"] == 0  # only what it was handed
        part.write_batch([Chunk(rows)])  # the same rows again: the same versions
        poll(part.idle, 30, 0.02, "the second write")
        got = store.query("SELECT count() AS n FROM anomaly FINAL")[0]["n"]
        assert got == want
    finally:
        part.close()


class _FailingAlerts(_Failing):
    failing = "anomaly"


def test_a_failed_alert_write_stops_the_flow_at_its_next_batch(tmp_path, caplog) -> None:
    """Raised in the dataflow at its next batch; logged at the close if none came."""
    store = _FailingAlerts(tmp_path / "db")
    try:
        migrate(store)
        part = AlertSink(store).build("alerts", 0, 1)
        part.write_batch([Chunk(_alert_rows())])
        poll(lambda: part.error is not None, 30, 0.02, "the failed insert")
        with pytest.raises(RuntimeError, match="disk full"):
            part.write_batch([Chunk(_alert_rows())])
        part.close()
        assert "writing alerts to the store failed: disk full" in caplog.text
    finally:
        store.close()
