"""Drive the engine's shard logic in-process without Bytewax, for tests and benchmarks.

It models exactly what the dataflow does between steps (routing by shard, batching,
the end-of-input watermark) and what ``FINAL`` does in the store (newest version per
key, tombstones dropped), so property tests can try thousands of delivery orders and
batchings cheaply; the real dataflow is tested on the golden scenarios and workloads.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from archwatch.engine import (
    TABLE_KEYS,
    ArchiveNoShard,
    CaseShard,
    Count,
    DedupShard,
    Eviction,
    ReceiverShard,
    Retirement,
    VersionClock,
    Watermark,
    Write,
)
from archwatch.models import Envelope, parse_record
from archwatch.rules import ReceiptFact
from archwatch.settings import EngineSettings, shard_of

RECEIVER_TYPES = {"receiver.heartbeat", "interface.error"}

# The identity of a row in each table (its ReplacingMergeTree ORDER BY key); the feed's
# rows are appended, each transition its own.
FINAL_KEYS: dict[str, tuple[str, ...]] = {**TABLE_KEYS, "anomaly_feed": ("seq",)}


class FinalTables:
    """Rows by table and key, keeping the highest version, like ``SELECT ... FINAL``."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[tuple[Any, ...], dict[str, Any]]] = {}

    def apply(self, w: Write) -> None:
        key = tuple(w.row[k] for k in FINAL_KEYS[w.table])
        per = self.rows.setdefault(w.table, {})
        cur = per.get(key)
        if cur is None or w.row.get("version", 0) >= cur.get("version", 0):
            per[key] = w.row

    def final(self, table: str, drop: Sequence[str] = ("version", "src", "last_update")
              ) -> list[dict[str, Any]]:
        out = []
        for row in self.rows.get(table, {}).values():
            if row.get("is_deleted"):
                continue
            out.append({k: v for k, v in row.items() if k not in drop and k != "is_deleted"})
        return sorted(out, key=lambda r: repr(sorted(r.items())))

    def kpi_totals(self) -> dict[tuple[Any, ...], tuple[int, ...]]:
        """Sum of the partial rows per group (what a reader does after FINAL)."""
        out: dict[tuple[Any, ...], list[Any]] = {}
        for row in self.final("kpi_task", drop=("version", "last_update", "task_code",
                                                "task_name", "dept_name", "system_name",
                                                "area")):
            key = (row["year"], row["qym"], row["dept_code"], row["system_code"], row["task_id"])
            acc = out.setdefault(key, [0, 0, 0, 0, 0, None])
            for i, col in enumerate(("kpi", "archived", "archived_succ", "archived_fail",
                                     "cycle_ms_sum")):
                acc[i] += row[col]
            lr = row["last_receive"]
            if lr is not None and (acc[5] is None or float(lr) > float(acc[5])):
                acc[5] = lr
        return {k: tuple(v) for k, v in out.items() if v[0]}

    def count_differences(self) -> dict[tuple[Any, ...], tuple[Any, Any]]:
        """(anomaly_count's, counted) per group and shard where the shard's partial is not
        the count of its anomalies (empty when consistent), as rollup.count_differences."""
        want: dict[tuple[Any, ...], tuple[int, int]] = {}
        for row in self.rows.get("anomaly", {}).values():
            if not row.get("is_deleted"):
                key = tuple(row[k] for k in FINAL_KEYS["anomaly_count"])
                total, open_ = want.get(key, (0, 0))
                want[key] = (total + 1, open_ + (row["resolved_at"] is None))
        got = {key: (r["total"], r["open"]) for key, r in self.rows.get("anomaly_count", {}).items()
               if not r.get("is_deleted")}
        return {k: (got.get(k), want.get(k)) for k in got.keys() | want.keys()
                if got.get(k) != want.get(k)}


class Engine:
    """All stateful steps of one run, with their shards created on demand."""

    def __init__(self, settings: EngineSettings, clock: VersionClock | None = None,
                 wall_ms: Any = lambda: 0, evict_after_ms: int | None = None) -> None:
        self.s = settings
        # an in-memory event log stands in for the store's, for eviction and reload
        self.log: dict[str, list[Any]] = {}
        self.eviction = None if evict_after_ms is None else Eviction(
            lambda cases: {c: list(self.log.get(c, ())) for c in cases}, evict_after_ms, 0)
        # ... and the digests of applied events, for retired event ids
        self.digests: dict[str, bytes] = {}
        self.retirement = None if evict_after_ms is None else Retirement(
            lambda ids: {i: self.digests[i] for i in ids if i in self.digests},
            evict_after_ms, 0)
        self.clock = clock or VersionClock()
        self.wall_ms = wall_ms
        self.dedup: dict[str, DedupShard] = {}
        self.cases: dict[str, CaseShard] = {}
        self.archive_nos: dict[str, ArchiveNoShard] = {}
        self.receivers: dict[str, ReceiverShard] = {}
        self.tables = FinalTables()
        self.counts: dict[str, int] = {"read": 0, "applied": 0, "duplicate": 0, "rejected": 0,
                                       "afterAsOf": 0}
        self.max_seen: int | None = None

    def _case_shard(self, key: str) -> CaseShard:
        sh = self.cases.get(key)
        if sh is None:
            sh = self.cases[key] = CaseShard(self.s.shards, self.s.sla, self.clock, self.wall_ms,
                                             self.eviction)
        return sh

    def _recv_shard(self, key: str) -> ReceiverShard:
        sh = self.receivers.get(key)
        if sh is None:
            sh = self.receivers[key] = ReceiverShard(self.s.shards, self.s.sla, self.clock,
                                                     self.s.receivers, self.s.flap)
        return sh

    def feed(self, lines: Iterable[str]) -> None:
        """One batch of input records, processed as the dataflow processes a batch: parse,
        then each event-id shard classifies its events of the batch at once."""
        n = self.s.shards
        by_case: dict[str, list[Any]] = {}
        by_recv: dict[str, list[Any]] = {}
        envs: list[Envelope] = []
        dedup_keys: list[str] = []
        per_dedup: dict[str, list[Envelope]] = {}
        counts = self.counts
        for i, line in enumerate(lines):
            counts["read"] += 1
            rec = parse_record(line, f"batch:{i}")
            if type(rec) is not Envelope:
                counts["rejected"] += 1
                continue
            key = shard_of(rec.event.eventId, n)
            envs.append(rec)
            dedup_keys.append(key)
            per_dedup.setdefault(key, []).append(rec)
        statuses: dict[str, Any] = {}  # dedup key -> iterator over its events' statuses
        for key, batch in per_dedup.items():
            d = self.dedup.get(key)
            if d is None:
                d = self.dedup[key] = DedupShard(self.retirement, self.wall_ms)
            statuses[key] = iter(d.classify_batch(batch))
        as_of = self.s.as_of
        for rec, key in zip(envs, dedup_keys, strict=True):
            status = next(statuses[key])
            if status == "duplicate":
                counts["duplicate"] += 1
                continue
            if status == "reused":
                counts["rejected"] += 1
                continue
            ev = rec.event
            if as_of is not None and ev.occurredAt > as_of:
                counts["afterAsOf"] += 1
                continue
            counts["applied"] += 1
            self.dedup[key].logged(rec)
            if self.retirement is not None:
                self.digests[ev.eventId] = rec.digest
            if self.max_seen is None or ev.occurredAt > self.max_seen:
                self.max_seen = ev.occurredAt
            if ev.type in RECEIVER_TYPES:
                by_recv.setdefault(shard_of(ev.receiverId, n), []).append(ev)
            else:
                by_case.setdefault(shard_of(ev.caseNo, n), []).append(ev)
                if self.eviction is not None:  # the store's event log, for reloads only
                    self.log.setdefault(ev.caseNo, []).append(ev)
        for d in self.dedup.values():
            d.retire_due()
        self._run(by_case, by_recv)

    def _run(self, by_case: dict[str, list[Any]], by_recv: dict[str, list[Any]]) -> None:
        facts: dict[str, list[ReceiptFact]] = {}
        for key, items in by_case.items():
            for out in self._case_shard(key).on_batch(items):
                if isinstance(out, ReceiptFact):
                    facts.setdefault(shard_of(out.archive_no, self.s.shards), []).append(out)
                else:
                    self._write(out)
        for key, items in facts.items():
            sh = self.archive_nos.get(key)
            if sh is None:
                sh = self.archive_nos[key] = ArchiveNoShard(self.s.shards, self.clock)
            for out in sh.on_batch(items):
                self._write(out)
        for key, items in by_recv.items():
            for out in self._recv_shard(key).on_batch(items):
                self._write(out)

    def _write(self, out: Any) -> None:
        if isinstance(out, Write):
            self.tables.apply(out)
        elif not isinstance(out, Count):  # pragma: no cover
            raise TypeError(out)

    def watermark(self, at: int) -> None:
        """Broadcast a watermark to every existing shard (the clock step's job)."""
        wm = Watermark(at)
        self._run({k: [wm] for k in self.cases}, {k: [wm] for k in self.receivers})

    def finish(self) -> None:
        """End of input: the watermark jumps to --as-of (default: latest occurredAt)."""
        final = self.s.as_of if self.s.as_of is not None else self.max_seen
        if final is not None:
            self.watermark(final)


def run_batches(settings: EngineSettings, batches: Iterable[Sequence[str]],
                clock: VersionClock | None = None, evict_after_ms: int | None = None) -> Engine:
    eng = Engine(settings, clock, evict_after_ms=evict_after_ms)
    for batch in batches:
        eng.feed(batch)
    eng.finish()
    return eng
