"""`archwatch run` / `archwatch up`: the reconciliation dataflow live on Kafka.

Same dataflow as a replay, fed by connectors.kafka.KafkaRecords (every partition of the
contract's topics; offsets live in Bytewax's recovery snapshots, which is what makes a
restart resume exactly where the last committed epoch ended), plus a wall-clock tick
input so deadlines fire while the topics are idle. Output is at-least-once; the sink is
idempotent and a restored shard reconciles the store with its snapshot (Reconcile).
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import cluster_main

from archwatch import blobstore, rollup
from archwatch.blobstore import BlobStore
from archwatch.connectors.kafka import DeadLetters, KafkaRecords, KafkaSettings
from archwatch.connectors.store_sink import AlertSink, EpochStoreSink, StoreSink, Tally
from archwatch.dataflows.reconcile import build_flow, engine_gc
from archwatch.engine import Registrations, VersionClock, WallTick
from archwatch.migrate import migrate
from archwatch.receivers import Registration
from archwatch.registry import RegistryPoll
from archwatch.replay import register_receivers
from archwatch.settings import EngineSettings
from archwatch.store import Store
from archwatch.timeutil import now_ms

log = logging.getLogger("archwatch.live")


@dataclass(frozen=True)
class LiveOptions:
    kafka: KafkaSettings
    workers: int = 1
    recovery_dir: Path | None = None  # None: no recovery (restart re-reads the topics)
    epoch_interval: timedelta = timedelta(seconds=1)
    tick: timedelta = timedelta(milliseconds=100)
    flush_delay: float = 0.2
    backup_interval: timedelta | None = None  # keep superseded snapshots this long
    addresses: tuple[str, ...] = ()  # a cluster: every process's host:port (empty: alone)
    process_id: int = 0
    # snapshot blobs this large or larger go to files in <recovery dir>/blobs (0: none
    # written, those of an earlier run still read)
    snapshot_file_bytes: int = 64 * 1024


# How long a snapshot's file no snapshot names any more is kept, beyond --backup-interval
# (and at least BlobStore.keep_snapshots snapshots of its log): see archwatch.blobstore.
BLOB_KEEP_S = 300.0


# How often a live sink sums the kpi_task rows it wrote into kpi_item (the KPI reads' table):
# each refresh re-reads every shard's partials of the items touched, so doing it per
# 0.2-second flush would cost a core's tenth; the KPI endpoints lag at most this much
# behind the rows.
KPI_ITEM_REFRESH = 1.0


def build_live_flow(store: Store, settings: EngineSettings, opts: LiveOptions,
                    tally: Tally) -> Any:
    source = KafkaRecords(opts.kafka.brokers, opts.kafka.topics, batch_size=5000,
                          side=LiveSide(RegistryPoll(store), opts.tick))
    # Writes overlap the dataflow's work as in a replay (buffered for flush_delay). With
    # recovery, every row of an epoch must also be in the store before Bytewax commits the
    # epoch (its input is not read again): the sink waits for its writes when an epoch
    # closes (EpochStoreSink) or, in a cluster of processes, after every batch (see
    # EpochStoreSink on why). Without recovery a restart reads the topics again.
    # One process: the anomalies are also written the moment they are made (AlertSink),
    # by a writer of their own: neither after the epoch before closed at the epoch sink,
    # nor behind the main writer's inserts under load. A cluster keeps to one sink, which
    # writes a batch's anomalies first.
    sink: StoreSink | EpochStoreSink
    alerts = None if opts.addresses else AlertSink(store)
    if opts.recovery_dir is not None and not opts.addresses:
        sink = EpochStoreSink(store, tally, DeadLetters(opts.kafka), parts=opts.workers,
                              max_rows=20_000, max_delay=opts.flush_delay,
                              refresh_every=KPI_ITEM_REFRESH, alerts_first=False)
    else:
        sink = StoreSink(store, tally, DeadLetters(opts.kafka), max_rows=20_000,
                         max_delay=opts.flush_delay,
                         synchronous=opts.recovery_dir is not None,
                         refresh_every=KPI_ITEM_REFRESH, alerts_first=alerts is None)
    from archwatch.eventlog import store_digests, store_loader

    return build_flow(source, sink, settings, clock=VersionClock(), loader=store_loader(store),
                      digests=store_digests(store), parts=source.progress_parts(),
                      alerts=alerts)


class LiveSide:
    """The live input's side items (connectors.kafka.KafkaRecords ``side``): a wall-clock
    tick every ``tick`` (each reaches every shard: ten a second are enough) and the
    receivers' registrations when they change. Called at every wake of the side
    partition (INPUT_WAKE)."""

    def __init__(self, registry: Callable[[], dict[str, Registration] | None],
                 tick: timedelta, now: Callable[[], int] = now_ms) -> None:
        self.registry = registry
        self.tick_ms = tick.total_seconds() * 1000
        self.now = now
        self.last: int | None = None

    def __call__(self) -> list[WallTick | Registrations]:
        items: list[WallTick | Registrations] = []
        t = self.now()
        if self.last is None or t - self.last >= self.tick_ms:
            self.last = t
            items.append(WallTick(t))
        regs = self.registry()
        if regs is not None:
            items.append(Registrations(regs))
        return items


def prepare_recovery(path: Path, workers: int,
                     backup_interval: timedelta | None = None) -> RecoveryConfig:
    """Bytewax needs its recovery partitions created once; later runs reuse them.

    The processes of a cluster share one recovery directory and start together, so the
    first one creates the partitions under a lock and the others find them made."""
    import fcntl

    path.mkdir(parents=True, exist_ok=True)
    with (path / ".init.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not any(path.glob("part-*.sqlite3")):
            init_db_dir(path, max(workers, 1))
    # Bytewax deletes a superseded snapshot only after backup_interval: a copy of the
    # partitions taken one by one while running then still holds a common snapshot
    return RecoveryConfig(path, backup_interval=backup_interval)


def recovery_blobs(opts: LiveOptions) -> BlobStore | None:
    """Where the snapshots' large blobs go: ``blobs/`` in the recovery directory, which the
    processes of a cluster share (see archwatch.blobstore). With ``snapshot_file_bytes``
    0 none is written, but the files an earlier run's snapshots name are still read (and
    deleted once no snapshot names them)."""
    if opts.recovery_dir is None:
        return None
    backup = opts.backup_interval.total_seconds() if opts.backup_interval else 0.0
    return BlobStore(opts.recovery_dir / "blobs",
                     min_bytes=opts.snapshot_file_bytes or sys.maxsize,
                     keep_s=BLOB_KEEP_S + backup)


def run_live(store: Store, settings: EngineSettings, opts: LiveOptions) -> Tally:
    """Run until interrupted (SIGINT/SIGTERM): the dataflow consumes and writes forever."""
    migrate(store)
    rollup.rebuild(store)  # a refresh pending when the last run died is in no snapshot
    settings = replace(settings, live=True, recovery=opts.recovery_dir is not None,
                       as_of=None)
    register_receivers(store, settings)
    tally = Tally()
    flow = build_live_flow(store, settings, opts, tally)
    total_workers = opts.workers * max(len(opts.addresses), 1)
    recovery = (prepare_recovery(opts.recovery_dir, total_workers, opts.backup_interval)
                if opts.recovery_dir else None)
    with engine_gc(), blobstore.using(recovery_blobs(opts)):
        cluster_main(flow, list(opts.addresses), opts.process_id,
                     epoch_interval=opts.epoch_interval, recovery_config=recovery,
                     worker_count_per_proc=opts.workers)
    return tally


def sigterm_as_interrupt() -> None:
    """Graceful shutdown: SIGTERM stops the dataflow the way Ctrl-C does."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)
