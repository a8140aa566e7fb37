"""The store sink: batches rows per table into large INSERTs, counts, forwards rejects.

Idempotent by construction: every row is a whole versioned row of a ReplacingMergeTree
(or, for the event log, keyed by its immutable eventId), so output that Bytewax
re-emits after a recovery replaces itself instead of adding up.

Rows are buffered up to ``max_rows`` or ``max_delay`` (ClickHouse wants few large
parts, not many small ones) and always flushed at the end of an epoch (``snapshot``),
before Bytewax commits that epoch's recovery state, so a crash can lose no row whose
input is not replayed.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from archwatch import metrics
from archwatch.engine import Count, Reconcile, Tick, Write
from archwatch.models import Envelope, Reject
from archwatch.store import Store

RejectHandler = Callable[[list[Reject]], None]


class Tally:
    """Thread-safe counts of what a run did (workers are threads of one process)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.rows: Counter[str] = Counter()
        self.flushes = 0

    def add(self, counts: Counter[str], rows: Counter[str]) -> None:
        with self._lock:
            self.counts.update(counts)
            self.rows.update(rows)
            self.flushes += 1
        metrics.record(counts, rows)


class _Partition(StatefulSinkPartition[Any, None]):
    def __init__(self, store: Store, tally: Tally, on_rejects: RejectHandler, max_rows: int,
                 max_delay: float) -> None:
        self.store = store
        self.tally = tally
        self.on_rejects = on_rejects
        self.max_rows = max_rows
        self.max_delay = max_delay
        self.tables: dict[str, list[dict[str, Any]]] = {}
        self.counts: Counter[str] = Counter()
        self.rejects: list[Reject] = []
        self.buffered = 0
        self.since = time.monotonic()

    def write_batch(self, items: list[Any]) -> None:
        tables = self.tables
        counts = self.counts
        for item in items:
            if isinstance(item, Write):
                rows = tables.get(item.table)
                if rows is None:
                    rows = tables[item.table] = []
                rows.append(item.row)
                if item.table == "event_log":
                    counts["applied"] += 1
            elif isinstance(item, Reject):
                self.rejects.append(item)
                counts["rejected"] += 1
            elif isinstance(item, Count):
                counts[item.kind] += 1
            elif isinstance(item, Tick):
                continue  # only gives the time-based flush below a chance when idle
            elif isinstance(item, Reconcile):
                self.flush()
                reconcile(self.store, item)
                tables, counts = self.tables, self.counts
            elif isinstance(item, Envelope):  # pragma: no cover - wiring error
                raise TypeError("an applied event reached the sink unwritten")
        self.buffered += len(items)
        if self.buffered >= self.max_rows or (
                self.buffered and time.monotonic() - self.since >= self.max_delay):
            self.flush()

    def flush(self) -> None:
        if not self.buffered:
            return
        if self.rejects:
            self.on_rejects(self.rejects)  # before the rows: a lost record is worse than a late one
        for table, rows in self.tables.items():
            if rows:
                self.store.insert(table, rows)
        self.tally.add(self.counts, Counter({t: len(r) for t, r in self.tables.items()}))
        self.tables = {}
        self.counts = Counter()
        self.rejects = []
        self.buffered = 0
        self.since = time.monotonic()  # the age of the oldest buffered row

    def snapshot(self) -> None:
        self.flush()
        return None

    def close(self) -> None:
        self.flush()


# Each table's identity (its ORDER BY) and how to write a tombstone for it.
_IDENTITY: dict[str, tuple[str, ...]] = {
    "anomaly": ("code", "anomaly_id"),
    "case_state": ("year", "qym", "dept_code", "task_id", "case_no"),
    "kpi_task": ("year", "qym", "dept_code", "system_code", "task_id", "system_level", "src"),
}


def reconcile(store: Store, rec: Reconcile) -> None:
    """Make the store hold exactly ``rec.rows`` for shard ``rec.src`` (see Reconcile)."""
    from archwatch.engine import VersionClock

    live: dict[str, set[tuple[object, ...]]] = {t: set() for t in _IDENTITY}
    by_table: dict[str, list[dict[str, Any]]] = {}
    for w in rec.rows:
        by_table.setdefault(w.table, []).append(w.row)
        if w.table in live:
            live[w.table].add(tuple(w.row[c] for c in _IDENTITY[w.table]))
    clock = VersionClock()
    for table, cols in _IDENTITY.items():
        stored = store.query(
            f"SELECT {', '.join(cols)} FROM {table} FINAL WHERE src = {{src:String}}",
            {"src": rec.src})
        stale = [r for r in stored if tuple(r[c] for c in cols) not in live[table]]
        if stale:
            store.insert(table, [{**r, "src": rec.src, "version": clock.next(), "is_deleted": 1}
                                 for r in stale])
    for table, rows in by_table.items():
        store.insert(table, rows)


class StoreSink(FixedPartitionedSink[Any, None]):
    """One partition per worker process would do; one partition in all keeps each
    table's inserts in a single ordered stream of large blocks."""

    def __init__(self, store: Store, tally: Tally, on_rejects: RejectHandler,
                 max_rows: int = 50_000, max_delay: float = 0.2) -> None:
        self.store = store
        self.tally = tally
        self.on_rejects = on_rejects
        self.max_rows = max_rows
        self.max_delay = max_delay

    def list_parts(self) -> list[str]:
        return ["store"]

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _Partition:
        return _Partition(self.store, self.tally, self.on_rejects, self.max_rows,
                          self.max_delay)
