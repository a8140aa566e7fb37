"""The store sink: batches rows per table into one INSERT each, counts, forwards rejects.

Idempotent by construction: every row is a whole versioned row of a ReplacingMergeTree
(or, for the event log, keyed by its immutable eventId), so output that Bytewax
re-emits after a recovery replaces itself instead of adding up.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

from bytewax.outputs import DynamicSink, StatelessSinkPartition

from archwatch.engine import Count, Write
from archwatch.models import Envelope, Reject
from archwatch.store import Store

RejectHandler = Callable[[list[Reject]], None]


class Tally:
    """Thread-safe counts of what a run did (workers are threads of one process)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.rows: Counter[str] = Counter()

    def add(self, counts: Counter[str], rows: Counter[str]) -> None:
        with self._lock:
            self.counts.update(counts)
            self.rows.update(rows)


class _Partition(StatelessSinkPartition[Any]):
    def __init__(self, store: Store, tally: Tally, on_rejects: RejectHandler) -> None:
        self.store = store
        self.tally = tally
        self.on_rejects = on_rejects

    def write_batch(self, items: list[Any]) -> None:
        tables: dict[str, list[dict[str, Any]]] = {}
        counts: Counter[str] = Counter()
        rejects: list[Reject] = []
        for item in items:
            if isinstance(item, Write):
                tables.setdefault(item.table, []).append(item.row)
                if item.table == "event_log":
                    counts["applied"] += 1
            elif isinstance(item, Reject):
                rejects.append(item)
                counts["rejected"] += 1
            elif isinstance(item, Count):
                counts[item.kind] += 1
            elif isinstance(item, Envelope):  # pragma: no cover - wiring error
                raise TypeError("an applied event reached the sink unwritten")
        if rejects:
            self.on_rejects(rejects)  # before the rows: a lost record is worse than a late one
        for table, rows in tables.items():
            self.store.insert(table, rows)
        self.tally.add(counts, Counter({t: len(r) for t, r in tables.items()}))


class StoreSink(DynamicSink[Any]):
    def __init__(self, store: Store, tally: Tally, on_rejects: RejectHandler) -> None:
        self.store = store
        self.tally = tally
        self.on_rejects = on_rejects

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Partition:
        return _Partition(self.store, self.tally, self.on_rejects)
