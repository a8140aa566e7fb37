"""`archwatch replay`: feed JSONL files through the reconciliation dataflow into a store."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from bytewax.testing import run_main

from archwatch.connectors.files import JsonlFiles
from archwatch.connectors.store_sink import StoreSink, Tally
from archwatch.dataflows.reconcile import build_flow, engine_gc
from archwatch.engine import VersionClock
from archwatch.eventlog import store_digests, store_loader
from archwatch.migrate import migrate
from archwatch.models import Reject
from archwatch.settings import EngineSettings
from archwatch.store import Store

COUNT_KEYS = ("read", "applied", "duplicate", "rejected", "afterAsOf")


@dataclass
class ReplayResult:
    counts: dict[str, int]
    rows: dict[str, int]

    def report(self) -> dict[str, int]:
        return {k: self.counts[k] for k in COUNT_KEYS}


class RejectsFile:
    """Appends rejects as JSON lines (reason, raw, position); flushed per batch."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fh: TextIO = path.open("a", encoding="utf-8")

    def __call__(self, rejects: list[Reject]) -> None:
        self.fh.write("".join(r.to_json() + "\n" for r in rejects))
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()


def register_receivers(store: Store, settings: EngineSettings) -> None:
    """Record the run's receivers in the registry (keys and owners already set stay)."""
    from archwatch.registry import Registry

    if settings.receivers:
        Registry(store).merge_file(settings.receivers)


# How long a replay buffers rows before writing (unless the sink's row limit comes first).
# Nobody reads a replay's tables before it ends, and every INSERT costs ClickHouse a fixed
# ~15 ms (a part to write and later merge) whatever its size: at the live default of 0.2 s
# a replay of 61k events made ~25 inserts per table, at 2 s a handful, and the replay ran
# ~25% faster in wall time and CPU (same run, bench figures in the commit message).
REPLAY_FLUSH_DELAY = 2.0

# What a replay computes; it starts them empty (accounts and registrations stay).
# (case_doc is filled from case_state and anomaly, 0018)
ENGINE_TABLES = ("case_state", "anomaly", "case_doc",
                 "anomaly_count", "anomaly_feed", "kpi_task", "kpi_item", "event_log",
                 "receiver_status")


def replay(
    files: Sequence[str | Path],
    store: Store,
    settings: EngineSettings,
    rejects_path: Path,
    progress: bool | None = None,
    batch: int = 2000,
    synchronous: bool = False,
) -> ReplayResult:
    """Run the dataflow over ``files`` to the end and return the counts.

    A replay describes the answer over exactly these files, so it starts from empty
    engine tables: rows of an earlier run that this one would never derive (and so
    never withdraw) cannot survive into it."""
    for f in files:
        if not Path(f).is_file():
            raise FileNotFoundError(f"no such file: {f}")
    migrate(store)
    for table in ENGINE_TABLES:
        store.command(f"TRUNCATE TABLE IF EXISTS {table}")
    clock = VersionClock()
    register_receivers(store, settings)
    tally = Tally()
    rejects = RejectsFile(rejects_path)
    bar: Any = None
    show = sys.stderr.isatty() if progress is None else progress
    source = JsonlFiles(list(files), batch=batch)
    if show:
        from tqdm import tqdm

        bar = tqdm(total=source.total_bytes(), unit="B", unit_scale=True, desc="replay",
                   file=sys.stderr)
        source.progress = bar.update
    try:
        # kpi_item summed once, at the end: nobody reads a replay's tables before then
        sink = StoreSink(store, tally, rejects, max_delay=REPLAY_FLUSH_DELAY,
                         synchronous=synchronous, refresh_every=None)
        flow = build_flow(source, sink, settings, clock=clock, loader=store_loader(store),
                          digests=store_digests(store))
        with engine_gc():
            run_main(flow)
    finally:
        rejects.close()
        if bar is not None:
            bar.close()
    counts = {k: tally.counts.get(k, 0) for k in COUNT_KEYS if k != "read"}
    counts["read"] = sum(counts.values())
    return ReplayResult(counts, dict(tally.rows))
