"""The store sink: batches rows per table into large INSERTs, counts, forwards rejects.

Idempotent by construction: every row is a whole versioned row of a ReplacingMergeTree
(or, for the event log, keyed by its immutable eventId), so output that Bytewax
re-emits after a recovery replaces itself instead of adding up.

Rows are buffered up to ``max_rows`` or ``max_delay`` (ClickHouse wants few large parts),
and past ``max_delay`` until the writer thread has finished the buffer before, so that
under load writes grow instead of queueing; the writer writes them while the dataflow
goes on; ``close`` waits for them. That is all a replay, or a live run without recovery,
needs (a restart reads the input again).

With recovery, every row of an epoch must be in the store when Bytewax commits the epoch
(its input is not read again). :class:`EpochStoreSink` (one process) waits for its writer
when the epoch closes; ``StoreSink(synchronous=True)`` (a cluster of processes) waits
after every batch, which left the dataflow's core idle a quarter of the time.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from functools import partial
from typing import Any

from bytewax.outputs import (
    DynamicSink,
    FixedPartitionedSink,
    StatefulSinkPartition,
    StatelessSinkPartition,
)

from archwatch import metrics, rollup
from archwatch.engine import TABLE_KEYS, Chunk, Count, Reconcile, Write
from archwatch.eventlog import event_log_columns
from archwatch.models import Envelope, Reject
from archwatch.store import Store
from archwatch.timeutil import ch_time

RejectHandler = Callable[[list[Reject]], None]
log = logging.getLogger("archwatch.sink")


class Tally:
    """Thread-safe counts of what a run did (workers are threads of one process)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.rows: Counter[str] = Counter()
        self.stages: Counter[str] = Counter()
        self.flushes = 0
        # per shard holding rows (src): the watermark it has applied, its rows written
        self.watermarks: dict[str, int] = {}

    def add(self, counts: Counter[str], rows: Counter[str]) -> None:
        stages = Counter({k[6:]: v for k, v in counts.items() if k.startswith("stage:")})
        marks = {k[3:]: v for k, v in counts.items() if k.startswith("wm:")}
        if stages or marks:
            counts = Counter({k: v for k, v in counts.items()
                              if not k.startswith(("stage:", "wm:"))})
        low = None
        with self._lock:
            self.counts.update(counts)
            self.stages.update(stages)
            self.rows.update(rows)
            self.flushes += 1
            if marks:
                for src, at in marks.items():
                    self.watermarks[src] = max(self.watermarks.get(src, at), at)
                low = min(self.watermarks.values())
        metrics.record(counts, rows, stages)
        if low is not None:
            metrics.WATERMARK_WRITTEN.set(low / 1000)


# Written first in each write: what the anomaly feed and list read (what operations staff
# wait for), then the rest. Any order is correct: a write is one epoch's rows, and with
# recovery all of them are in the store before the epoch commits.
_WRITE_ORDER = {t: i for i, t in enumerate(("anomaly_feed", "anomaly", "anomaly_count",
                                            "receiver_status", "case_state", "kpi_task"))}


# What an alerts-first write takes from the next buffer (see _Writer._express).
_ALERT_TABLES = ("anomaly_feed", "anomaly", "anomaly_count")


def _NOTHING() -> None:
    """A job that only wakes the writer (pending Reconciles are applied before any job)."""


def _first_written(item: tuple[str, Any]) -> int:
    return _WRITE_ORDER.get(item[0], len(_WRITE_ORDER))


def _insert(store: Store, table: str, rows: list[Any]) -> None:
    """One table's rows (the event log's: the applied events) into the store."""
    started = time.monotonic()
    if table == "event_log":
        store.insert_columns(table, event_log_columns(rows))
    else:
        store.insert(table, rows)
    metrics.STORE_WRITE.labels(table).observe(time.monotonic() - started)


class _Writer:
    """One background thread writing buffers in order; errors surface in the dataflow.

    It also keeps ``kpi_item`` (see :mod:`archwatch.rollup`) after the ``kpi_task`` rows it
    writes, over the range of versions written since the last refresh: after every write
    (``refresh_every`` 0), only when drained (None), or on a clock of its own every
    ``refresh_every`` seconds (live: a thread of its own, off the writes' path, since a
    refresh takes 130 ms on loaded cores and the anomalies behind it would wait)."""

    def __init__(self, store: Store, tally: Tally, on_rejects: RejectHandler,
                 depth: int = 4, refresh_every: float | None = 0.0,
                 parallel: int = 1) -> None:
        self.store = store
        # A write's tables inserted by this many threads at once (synchronous writes: the
        # dataflow waits for them, its core idle; chDB's inserts into different tables
        # overlap). One: in order, on the writer thread (a replay, or live writes that
        # overlap the dataflow, whose core they would take).
        self.pool = (ThreadPoolExecutor(parallel, thread_name_prefix="store-insert")
                     if parallel > 1 else None)
        self.tally = tally
        self.on_rejects = on_rejects
        self.refresh_every = refresh_every
        self.pending: tuple[int, int] | None = None  # kpi_task versions not yet summed
        self._pending_lock = threading.Lock()
        self._refreshing = threading.Lock()  # one refresh at a time
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=depth)  # back-pressure
        self._reconciles: list[Reconcile] = []  # applied before the next job
        # Takes the anomaly rows buffered for the next write (set by a live sink that
        # does not wait for its writes): see _express.
        self.express: Callable[[], dict[str, list[dict[str, Any]]]] | None = None
        self._reconciles_lock = threading.Lock()
        self.error: BaseException | None = None
        self.reported = False
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
        self.thread.start()
        self.refresher: threading.Thread | None = None
        if refresh_every:
            self.refresher = threading.Thread(target=self._refresh_on_time,
                                              name="kpi-item-refresher", daemon=True)
            self.refresher.start()

    def submit(self, tables: dict[str, list[dict[str, Any]]], rejects: list[Reject],
               counts: Counter[str], since: float | None = None,
               events: list[Envelope] | None = None) -> None:
        """Queue a buffer for writing; ``since``: when its oldest row was buffered
        (time.monotonic), for the sink-delay metric; ``events``: applied events to log."""
        self._raise()
        self.queue.put(partial(self._write, tables, rejects, counts, since, events or []))

    def submit_reconcile(self, recs: list[Reconcile]) -> None:
        """Have the Reconciles of restarting shards applied before the writes submitted
        after them (with their shards' rows). Not a job of their own: a Reconcile commutes
        with the writes queued before it (none holds a row of its shard, whose first
        output it is), so every pending one is applied together, in one read per table,
        before the writer's next job. (Applied by the dataflow thread, they had to wait
        for the writes queued before them, then for a full queue: a live start spent ~20%
        of its time there, shards starting batch after batch.)"""
        self._raise()
        with self._reconciles_lock:
            self._reconciles.extend(recs)
        with contextlib.suppress(queue.Full):  # a full queue has jobs to come: they apply it
            self.queue.put_nowait(_NOTHING)

    def reconciles_pending(self) -> bool:
        with self._reconciles_lock:
            return bool(self._reconciles)

    def _apply_reconciles(self) -> None:
        with self._reconciles_lock:
            recs, self._reconciles = self._reconciles, []
        if recs:
            kpi = reconcile_all(self.store, recs, refresh=False)
            if kpi is not None:
                self._pending_kpi(kpi)

    def busy(self) -> bool:
        """Something submitted is not written yet."""
        return self.queue.unfinished_tasks > 0

    def drain(self, derived: bool = True) -> None:
        """Wait until everything submitted is written; with ``derived``, kpi_item too (a
        refresh under way finishes first, then what is left is refreshed here)."""
        self.queue.join()
        self._raise()
        if derived:
            try:
                self._refresh()
            except BaseException as exc:
                self.error = exc
                self._raise()

    def close(self) -> None:
        self._stop.set()
        if self.refresher is not None:
            self.refresher.join(timeout=60)
        try:
            if self.reported:  # the dataflow already failed with this error: just stop
                self.queue.put(None)
            else:
                self.drain()  # raises a write's error: the pool still shuts down
                self.queue.put(None)
                self.thread.join(timeout=60)
        finally:
            if self.pool is not None:
                self.pool.shutdown(wait=not self.reported)

    def _raise(self) -> None:
        if self.error is not None:
            self.reported = True
            raise RuntimeError(f"writing to the store failed: {self.error}") from self.error

    def _run(self) -> None:
        while True:
            job = self.queue.get()
            try:
                if job is None:
                    return
                if self.error is None:
                    self._apply_reconciles()
                    job()
            except BaseException as exc:  # noqa: BLE001 - re-raised in the dataflow thread
                self.error = exc
            finally:
                self.queue.task_done()

    def _refresh_on_time(self) -> None:
        assert self.refresh_every
        while not self._stop.wait(self.refresh_every):
            if self.pending is None or self.error is not None:
                continue
            try:
                self._refresh()
            except BaseException as exc:  # noqa: BLE001 - re-raised in the dataflow thread
                self.error = exc
                return

    def _write(self, tables: dict[str, list[dict[str, Any]]], rejects: list[Reject],
               counts: Counter[str], since: float | None, events: list[Envelope]) -> None:
        if rejects:
            self.on_rejects(rejects)  # before the rows: a lost record is worse than a late one
        inserts = [partial(self._insert, table, rows)
                   for table, rows in sorted(tables.items(), key=_first_written) if rows]
        if events:
            inserts.append(partial(self._insert, "event_log", events))
        if self.pool is None or len(inserts) < 2:
            for i, insert in enumerate(inserts):
                insert()
                if self.express is not None and i < len(inserts) - 1:
                    self._express()
        else:  # every insert ends before the write does; the first failure is raised
            done = [self.pool.submit(insert) for insert in inserts]
            wait(done)
            for future in done:
                future.result()
        kpi = tables.get("kpi_task")
        if kpi:
            self._pending_kpi(rollup.version_range(kpi))
        rows = Counter({t: len(r) for t, r in tables.items()})
        if events:  # each applied event is one event-log row
            rows["event_log"] += len(events)
            counts["applied"] += len(events)
        self.tally.add(counts, rows)
        if since is not None:
            metrics.SINK_DELAY.observe(time.monotonic() - since)

    def _express(self) -> None:
        """Alerts first, across writes: the anomaly rows buffered since this write began
        go in now, between its tables, not after its case states and event log (a write
        takes ≈ 0.2-0.3 s at 10,000 events/s, and a new anomaly waited for the rest of the
        one under way). Any order of rows is correct (versions decide); rows emitted after
        a Reconcile not yet applied wait for it with their write (see _take_alerts)."""
        assert self.express is not None
        tables = self.express()
        if not tables:
            return
        rows: Counter[str] = Counter()
        for table, batch in sorted(tables.items(), key=_first_written):
            self._insert(table, batch)
            rows[table] = len(batch)
        self.tally.add(Counter(), rows)

    def _insert(self, table: str, rows: list[Any]) -> None:
        _insert(self.store, table, rows)

    def _pending_kpi(self, written: tuple[int, int]) -> None:
        """``kpi_task`` rows of these versions are written: their items are to be summed
        into kpi_item (now, or by the refresher)."""
        lo, hi = written
        with self._pending_lock:
            if self.pending is not None:
                lo, hi = min(lo, self.pending[0]), max(hi, self.pending[1])
            self.pending = (lo, hi)
        if self.refresh_every == 0:
            self._refresh()

    def _refresh(self) -> None:
        """kpi_item for the kpi_task versions written and not yet summed. The range is
        taken only once its rows are written (``_write`` adds it after the INSERT), and
        refreshes may run beside writes: see rollup's argument for concurrent writers."""
        with self._refreshing:
            with self._pending_lock:
                todo, self.pending = self.pending, None
            if todo is not None:
                started = time.monotonic()
                try:
                    rollup.refresh_range(self.store, *todo)
                except BaseException:
                    with self._pending_lock:  # still to do (the error stops the flow)
                        lo, hi = todo if self.pending is None else (
                            min(todo[0], self.pending[0]), max(todo[1], self.pending[1]))
                        self.pending = (lo, hi)
                    raise
                metrics.STORE_WRITE.labels("kpi_item").observe(time.monotonic() - started)


class _Partition(StatelessSinkPartition[Any]):
    def __init__(self, store: Store, tally: Tally, on_rejects: RejectHandler, max_rows: int,
                 max_delay: float, synchronous: bool = False,
                 refresh_every: float | None = 0.0, alerts_first: bool = False) -> None:
        self.synchronous = synchronous
        self.store = store
        self.tally = tally
        self.on_rejects = on_rejects
        self.max_rows = max_rows
        self.max_delay = max_delay
        self.tables: dict[str, list[dict[str, Any]]] = {}
        self.events: list[Envelope] = []  # applied events, to log
        self.counts: Counter[str] = Counter()
        self.rejects: list[Reject] = []
        self.buffered = 0
        self.since = time.monotonic()
        self.first_at = self.since
        self.writer = _Writer(store, tally, on_rejects, refresh_every=refresh_every,
                              parallel=2 if synchronous else 1)
        # The buffer is flushed on time by a thread of its own (kpi_item: see _Writer): a
        # partition whose input went quiet gets no more write_batch calls, and must still
        # write its last rows within max_delay.
        self._lock = threading.RLock()
        if alerts_first and not synchronous:
            self.writer.express = self._take_alerts
        self._stop = threading.Event()
        self._flusher = threading.Thread(target=self._flush_on_time, name="sink-flusher",
                                         daemon=True)
        self._flusher.start()

    def _flush_on_time(self) -> None:
        every = min(max(self.max_delay / 4, 0.02), 0.5)
        while not self._stop.wait(every):
            try:
                with self._lock:
                    if self._due():
                        self.flush()
            except RuntimeError:  # the writer failed: the dataflow thread reports it
                return

    def write_batch(self, items: list[Any]) -> None:
        if any(type(x) is Chunk for x in items):
            items = [v for x in items for v in (x if type(x) is Chunk else (x,))]
        with self._lock:
            self._write_batch(items)

    def _write_batch(self, items: list[Any]) -> None:
        recs = [x for x in items if type(x) is Reconcile]
        if recs:
            # A shard's Reconcile is its first output, and touches only rows of its own
            # src, so the batch's Reconciles can go first, together: one read per table
            # for every shard restarting at once (a live start restarts them all). The
            # writer applies them after the rows buffered so far, before this batch's.
            self.flush()
            self.writer.submit_reconcile(recs)
        tables = self.tables
        counts = self.counts
        events = self.events
        for item in items:
            kind = type(item)
            if kind is Write:
                rows = tables.get(item.table)
                if rows is None:
                    rows = tables[item.table] = []
                rows.append(item.row)
            elif kind is Envelope:  # an applied event: its event-log row
                events.append(item)
            elif isinstance(item, Reject):
                self.rejects.append(item)
                counts["rejected"] += 1
            elif isinstance(item, Count):
                if item.kind[:3] == "wm:":  # a shard's watermark: the latest, not a sum
                    counts[item.kind] = max(counts[item.kind], item.n)
                else:
                    counts[item.kind] += item.n
            elif isinstance(item, Reconcile):
                continue  # done above
        if not self.buffered:
            self.first_at = time.monotonic()  # when the buffer's oldest row came
        self.buffered += len(items)
        if self.synchronous:
            self.drain(derived=False)  # kpi_item: on its own clock (refresh_every)
        elif self.buffered >= self.max_rows or self._due():
            self.flush()

    def _take_alerts(self) -> dict[str, list[dict[str, Any]]]:
        """The writer's thread takes the anomaly rows buffered so far: nothing when the
        dataflow holds the buffer (it may be waiting for the writer's queue), nor while a
        Reconcile waits to be applied (the rows buffered after it are to follow it; the
        dataflow adds Reconciles under this lock, so the check cannot miss one)."""
        if not self._lock.acquire(blocking=False):
            return {}
        try:
            if self.writer.reconciles_pending():
                return {}
            return {t: self.tables.pop(t) for t in _ALERT_TABLES if self.tables.get(t)}
        finally:
            self._lock.release()

    def _due(self) -> bool:
        """Rows buffered for max_delay: due to be written (whatever the input does) once
        the writer has finished the buffer before. While it is still writing, the rows
        wait here and join the next write: under load the writes grow instead of queueing
        (each INSERT costs a part and ~5-10 ms whatever its size, 25-140 ms on loaded
        cores), up to max_rows."""
        return (bool(self.buffered) and time.monotonic() - self.since >= self.max_delay
                and not self.writer.busy())

    def flush(self) -> None:
        """Hand the buffer to the writer thread (inserts overlap the dataflow's work:
        chDB and clickhouse-connect release the GIL while ClickHouse parses and writes)."""
        with self._lock:
            if not self.buffered:
                return
            self.writer.submit(self.tables, self.rejects, self.counts, self.first_at,
                               self.events)
            self.tables = {}
            self.events = []
            self.counts = Counter()
            self.rejects = []
            self.buffered = 0
            self.since = time.monotonic()  # the age of the oldest buffered row

    def drain(self, derived: bool = True) -> None:
        """Write everything buffered and wait until it is in the store (with ``derived``,
        kpi_item's refresh too)."""
        self.flush()
        self.writer.drain(derived)

    def close(self) -> None:
        self._stop.set()
        self._flusher.join(timeout=5)
        if not self.writer.reported:
            self.flush()
        self.writer.close()


# The tables a restart reconciles, by their identity (engine.TABLE_KEYS: the ORDER BY).
_IDENTITY: dict[str, tuple[str, ...]] = {
    t: TABLE_KEYS[t] for t in ("anomaly", "anomaly_count", "case_state", "kpi_task")}
# Tables of per-case rows: the rows of evicted cases (Reconcile.keep) stay.
_PER_CASE = frozenset({"anomaly", "case_state"})
# Key columns of type DateTime64: read back as epoch ms, compared and written as the
# engine's rows carry them (timeutil.ch_time text).
_TIME_KEYS = frozenset({"opened_at"})


def _tables_of(src: str) -> tuple[str, ...]:
    """The tables a shard writes, by its src's kind: cases (c…) write all of them; archive
    numbers (a…) and receivers (r…) only anomalies and their counts. Unknown kinds: all,
    to be safe."""
    return ("anomaly", "anomaly_count") if src[:1] in ("a", "r") else tuple(_IDENTITY)


def reconcile_all(store: Store, recs: list[Reconcile],
                  refresh: bool = True) -> tuple[int, int] | None:
    """Make the store hold exactly ``rec.rows`` for each shard ``rec.src`` (see Reconcile),
    with one read per table for all of them. Returns the versions of the ``kpi_task`` rows
    written (None: none), whose items kpi_item must sum again: here with ``refresh``."""
    from archwatch.engine import VersionClock

    by_src = {r.src: r for r in recs}  # a shard reconciles once; the last one stands
    live: dict[tuple[str, str], set[tuple[object, ...]]] = {}
    by_table: dict[str, list[dict[str, Any]]] = {}
    for rec in by_src.values():
        for w in rec.rows:
            by_table.setdefault(w.table, []).append(w.row)
            if w.table in _IDENTITY:
                live.setdefault((w.table, rec.src), set()).add(
                    tuple(w.row[c] for c in _IDENTITY[w.table]))
    clock = VersionClock()
    kpi_rows: list[dict[str, Any]] = []  # kpi_task rows written: their items to recompute
    for table, cols in _IDENTITY.items():
        srcs = sorted(s for s in by_src if table in _tables_of(s))
        if not srcs:
            continue
        extra = ", case_no" if "case_no" not in cols and table in _PER_CASE else ""
        select = ", ".join(f"toUnixTimestamp64Milli({c}) AS {c}" if c in _TIME_KEYS else c
                           for c in cols)
        stored = store.query(
            f"SELECT {select}, src{extra} FROM {table} FINAL"
            " WHERE src IN {srcs:Array(String)}", {"srcs": srcs})
        tombstones = []
        for r in stored:
            for c in _TIME_KEYS.intersection(cols):
                r[c] = ch_time(r[c])
            rec = by_src[r["src"]]
            if (tuple(r[c] for c in cols) not in live.get((table, rec.src), ())
                    and r.get("case_no") not in rec.keep):
                tombstones.append({**{c: r[c] for c in cols}, "src": rec.src,
                                   "version": rec.version or clock.next(),
                                   "is_deleted": 1})
        if tombstones:
            store.insert(table, tombstones)
            if table == "kpi_task":
                kpi_rows.extend(tombstones)
    for table, rows in by_table.items():
        store.insert(table, rows)
    written = kpi_rows + by_table.get("kpi_task", [])
    if not written:
        return None
    versions = rollup.version_range(written)
    if refresh:
        rollup.refresh_range(store, *versions)
    return versions


class StoreSink(DynamicSink[Any]):
    """One partition per worker: each worker writes the rows its own shards produce, in
    the order they produced them (a shard's Reconcile before its later rows)."""

    def __init__(self, store: Store, tally: Tally, on_rejects: RejectHandler,
                 max_rows: int = 50_000, max_delay: float = 0.2,
                 synchronous: bool = False, refresh_every: float | None = 0.0,
                 alerts_first: bool = False) -> None:
        self.refresh_every = refresh_every
        self.alerts_first = alerts_first
        self.store = store
        self.tally = tally
        self.on_rejects = on_rejects
        self.max_rows = max_rows
        self.max_delay = max_delay
        self.synchronous = synchronous

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Partition:
        return _Partition(self.store, self.tally, self.on_rejects, self.max_rows,
                          self.max_delay, self.synchronous, self.refresh_every,
                          self.alerts_first)


class _EpochPartition(StatefulSinkPartition[Any, None]):
    """A :class:`_Partition` writing asynchronously, drained when its epoch closes."""

    def __init__(self, part: _Partition) -> None:
        self.part = part

    def write_batch(self, values: list[Any]) -> None:
        self.part.write_batch(values)

    def snapshot(self) -> None:
        """Bytewax calls this when an epoch closes, for a partition that got items in it,
        and commits the epoch only after: so every row of the epoch is in the store first.
        The rows written are the state; there is nothing to resume from."""
        t0 = time.perf_counter()
        self.part.drain(derived=False)  # kpi_item: on its own clock (refresh_every)
        metrics.SINK_DRAIN.observe(time.perf_counter() - t0)

    def close(self) -> None:
        self.part.close()


class EpochStoreSink(FixedPartitionedSink[Any, None]):
    """Live with recovery: rows written while the dataflow goes on, and all of an epoch's
    rows in the store before Bytewax commits it.

    Each partition's writer works beside the dataflow as in a replay (buffered, alerts
    first) and waits only when the epoch closes (:meth:`_EpochPartition.snapshot`): a
    sink that waited for every batch's inserts (``StoreSink(synchronous=True)``) left the
    dataflow idle a quarter of the time. Items come keyed by the shard that made them, and
    a shard's items all go to one partition, in order (its Reconcile first).

    The cost: Bytewax hands a stateful sink an epoch's items only once the epochs before
    it have closed at the sink, and items cross to the worker that holds their partition;
    in a cluster of processes that is a pickling each, so a cluster keeps the synchronous
    DynamicSink (archwatch.live)."""

    def __init__(self, store: Store, tally: Tally, on_rejects: RejectHandler, parts: int,
                 max_rows: int = 50_000, max_delay: float = 0.2,
                 refresh_every: float | None = 0.0, alerts_first: bool = True) -> None:
        """``alerts_first``: the writer puts the anomaly rows buffered meanwhile in
        between a write's tables (``_Writer._express``); not needed beside an
        :class:`AlertSink`, which has written them already."""
        self.parts = parts
        self._partition = partial(_Partition, store, tally, on_rejects, max_rows, max_delay,
                                  synchronous=False, refresh_every=refresh_every,
                                  alerts_first=alerts_first)

    def list_parts(self) -> list[str]:
        return [f"{i:03d}" for i in range(self.parts)]

    def build_part(self, step_id: str, for_part: str,
                   resume_state: None) -> _EpochPartition:
        return _EpochPartition(self._partition())


class _AlertPartition(StatelessSinkPartition[Any]):
    """Inserts the rows it is handed as soon as it can, on a thread of its own: whatever
    came while an insert ran goes in with the next one (see :class:`AlertSink`)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._rows: dict[str, list[dict[str, Any]]] = {}
        self._wake = threading.Condition()
        self._closing = False
        self._busy = False
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="alert-writer", daemon=True)
        self._thread.start()

    def write_batch(self, items: list[Any]) -> None:
        if self.error is not None:
            raise RuntimeError(f"writing alerts to the store failed: {self.error}") \
                from self.error
        with self._wake:
            for item in items:
                for w in (item if type(item) is Chunk else (item,)):
                    rows = self._rows.get(w.table)
                    if rows is None:
                        rows = self._rows[w.table] = []
                    rows.append(w.row)
            self._wake.notify()

    def idle(self) -> bool:
        """Everything handed over is written (or failed)."""
        with self._wake:
            return not self._rows and not self._busy

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._rows and not self._closing:
                    self._wake.wait()
                if not self._rows:
                    return
                tables, self._rows, self._busy = self._rows, {}, True
            try:
                for table, rows in sorted(tables.items(), key=_first_written):
                    _insert(self.store, table, rows)
            except BaseException as exc:  # noqa: BLE001 - raised in the dataflow thread
                self.error = exc
                return
            finally:
                with self._wake:
                    self._busy = False

    def close(self) -> None:
        """Write what is left, then stop (the main sink writes the same rows anyway; a
        write after the store closed is what this avoids)."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._thread.join(timeout=60)
        if self.error is not None:  # after the last batch: no batch left to raise it in
            log.warning("writing alerts to the store failed: %s", self.error)


class AlertSink(DynamicSink[Any]):
    """Live, in one process: the shards' anomaly rows written the moment they are made, by
    a writer of their own, ahead of the main sink, which writes them too.

    With recovery, Bytewax hands a stateful sink (:class:`EpochStoreSink`) an epoch's items
    only once the epochs before closed there, and an epoch's close takes 0.3-0.7 s at
    10,000 events/s (every step's snapshot written before any input is read again): the
    anomalies the shards fired meanwhile (their deadlines come by notification, see
    dataflows.reconcile._ShardLogic.notify_at) waited for it. A stateless sink gets items
    as they come. Without recovery, the main writer under load is busy back to back with
    large writes, and the anomalies waited for the write under way.

    Nothing is lost or double-counted by writing a row twice: it is the same version of
    the same key (ReplacingMergeTree), and the main sink's copy is the one Bytewax's commit
    waits for. A row written here in an epoch that never commits is withdrawn like any
    other after a crash: the restored shard's Reconcile tombstones what its snapshot does
    not hold, and every row it emits after carries a newer version (so the order in which
    this sink and the main one apply them does not matter either)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _AlertPartition:
        return _AlertPartition(self.store)
