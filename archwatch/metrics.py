"""Prometheus metrics. Consumer lag per partition comes from Bytewax's Kafka source
(``bytewax_kafka_consumer_lag``) in the same default registry."""

from __future__ import annotations

import threading
import time
from collections import Counter

from prometheus_client import Counter as PCounter
from prometheus_client import Gauge, Histogram

from archwatch.rules import CLASS_OF_CODE

EVENTS = PCounter("archwatch_events_total", "Records read, by outcome", ["outcome"])
ROWS = PCounter("archwatch_rows_written_total", "Rows written to the store", ["table"])
OPEN_ANOMALIES = Gauge("archwatch_open_anomalies", "Open anomalies by code", ["code"])
INPUT_POSITION = Gauge("archwatch_input_position", "Next offset to read, per partition",
                       ["topic", "partition"])
INPUT_START = Gauge("archwatch_input_start", "Offset this run started reading from",
                    ["topic", "partition"])
STAGE = PCounter("archwatch_stage_items_total", "Events (cases, receivers) and receipt "
                 "facts (archive_nos; facts_sent by the cases) each keyed step processed, "
                 "counted once the rows it emitted with them are written", ["stage"])
WATERMARK_WRITTEN = Gauge(
    "archwatch_watermark_written_seconds",
    "The watermark (epoch seconds) that every shard holding rows has applied, the rows it "
    "emitted with it written: the stored answer describes this moment (contract §3)")
# The clock step's hold while an input partition reads a backlog (dataflows/reconcile.py
# _Clock): deadlines wait for it, by design; a hold under live traffic is a fault.
WATERMARK_HELD = Gauge(
    "archwatch_watermark_held_seconds",
    "How far the watermark is held behind event time and the wall clock while an input "
    "partition reads a backlog (0: not held; deadlines wait for the backlog meanwhile)")
WATERMARK_HELD_TIME = PCounter(
    "archwatch_watermark_held_time_seconds",
    "Wall time in all that the watermark was held by a partition's backlog")
LAST_FLUSH = Gauge("archwatch_last_flush_timestamp_seconds", "When the sink last wrote")
# Live with recovery, the case shards pack what was touched between epoch closes
# (dataflows/reconcile.py:PRECOOL_MS); the close packs the rest. Zero while a backlog is
# read, or without recovery.
CASES_PACKED_BETWEEN = PCounter(
    "archwatch_cases_packed_between_closes_total",
    "Cases packed for recovery snapshots between epoch closes (live input, recovery on)")
# ... and the event-id shards write the ids added between closes into their logs' blobs
# (engine.DedupShard.precool), so that a close marshals and compresses only the rest;
# the archive-number shards the archive numbers changed (engine.ArchiveNoShard.precool).
IDS_STAGED_BETWEEN = PCounter(
    "archwatch_ids_staged_between_closes_total",
    "Event ids written into recovery snapshot blobs between epoch closes (recovery on)")
ARCHIVE_NOS_STAGED_BETWEEN = PCounter(
    "archwatch_archive_nos_staged_between_closes_total",
    "Archive numbers written into recovery snapshot blobs between epoch closes (recovery on)")
# Recovery's large blobs, written once as files beside the partitions (archwatch/blobstore.py)
SNAPSHOT_FILES = PCounter("archwatch_snapshot_files_total",
                          "Recovery snapshot blob files written and deleted", ["op"])
SNAPSHOT_FILE_BYTES = PCounter("archwatch_snapshot_file_bytes_total",
                               "Bytes of recovery snapshot blob files written")
SNAPSHOT_FILE_SECONDS = PCounter(
    "archwatch_snapshot_file_write_seconds_total",
    "Time spent writing and syncing them (on the dataflow thread, GIL held)")
# Where a row's way to the store goes (freshness): each INSERT's duration, and for each
# write the time from its oldest row entering the sink's buffer to the write's end (the
# flush delay, the queue before the writer thread, the inserts).
STORE_WRITE = Histogram("archwatch_store_write_seconds",
                        "One INSERT by the sink (kpi_item: one refresh of it)", ["table"],
                        buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5))
SINK_DELAY = Histogram("archwatch_sink_delay_seconds",
                       "From a write's oldest row entering the sink's buffer to the write's "
                       "end (its rows queryable)",
                       buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30))
# With recovery (connectors.store_sink.EpochStoreSink): how long each epoch's close waited
# for the sink's writer to finish the epoch's rows. Bytewax reads no input meanwhile, so a
# long wait here is a stall of everything behind it, deadlines included.
SINK_DRAIN = Histogram("archwatch_sink_epoch_drain_seconds",
                       "How long an epoch's close waited for the sink's writes (recovery on: "
                       "no input is read meanwhile)",
                       buckets=(0.005, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30))
# Webhook delivery (archwatch/notify.py): every POST's outcome (failed: it will be retried
# unless it was the last attempt), deliveries that gave up, and the queue by status
# (failed = waiting for a retry).
WEBHOOK_ATTEMPTS = PCounter("archwatch_webhook_attempts_total",
                            "Webhook POSTs by outcome (delivered, failed)", ["outcome"])
WEBHOOK_DEAD = PCounter("archwatch_webhook_dead_total",
                        "Webhook deliveries that gave up after the attempt cap")
WEBHOOK_ACTIVE = Gauge("archwatch_webhook_deliverer_active",
                       "1 while this process's webhook deliverer holds the lease (one "
                       "active per store), 0 while it stands by")
WEBHOOK_QUEUE = Gauge("archwatch_webhook_deliveries",
                      "Webhook deliveries by status (pending, sending, delivered, failed: "
                      "retrying, dead)", ["status"])


def record(counts: Counter[str], rows: Counter[str],
           stages: Counter[str] | None = None) -> None:
    for k, v in counts.items():
        EVENTS.labels(k).inc(v)
    for k, v in rows.items():
        ROWS.labels(k).inc(v)
    for k, v in (stages or {}).items():
        STAGE.labels(k).inc(v)
    LAST_FLUSH.set(time.time())


def watch_open_anomalies(store: object, stop: threading.Event, every: float = 5.0) -> None:
    """Refresh the open-anomaly gauge from the store until ``stop`` is set."""
    from archwatch.store import Store

    assert isinstance(store, Store)
    while not stop.wait(every):
        try:  # the shards' counts (0014), not a count of every anomaly every 5 s
            rows = store.query("SELECT code, sum(open) AS n FROM anomaly_count FINAL"
                               " GROUP BY code")
        except Exception:  # noqa: BLE001 - a metrics refresh must never kill the run
            continue
        n = {r["code"]: r["n"] for r in rows}
        for code in CLASS_OF_CODE.keys() | n.keys():  # a code with none left reads 0
            OPEN_ANOMALIES.labels(code).set(n.get(code, 0))


def scrape(port: int, host: str = "127.0.0.1", timeout: float = 2.0) -> dict[str, float]:
    """Read a running archwatch's ``/metrics`` as {sample name with labels: value}; empty
    when nothing answers (tests and benchmarks poll it to see a live run's progress)."""
    import urllib.request

    try:
        text = urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=timeout).read()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for line in text.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out
