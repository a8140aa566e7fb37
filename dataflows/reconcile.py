"""The reconciliation dataflow: one definition that any source feeds (JSONL files in a
replay, Kafka topics live) and that writes to any :class:`~archwatch.store.Store`.

Shape::

    input ─ parse ─┬─ rejects ─────────────────────────────────────────────┐
                   └─ key by eventId shard ─ dedup ─┬─ duplicates/reused ──┤
                                                    └─ applied ─┬─ event_log ─┤
                      key by caseNo shard ─ cases ──┬─ rows ───────────────────┤─ sink
                                                    └─ receipts ─ key by archiveNo shard
                                                                  ─ archive_nos ─ rows ─┤
                      key by receiverId shard ─ receivers ─ rows ──────────────────────┤
                      clock (event-time max, wall ticks, end of input) ─ broadcast
                          watermark to every cases/receivers shard

Why shards, not one key per case: Bytewax's per-key overhead dominates small states
(measured: 112k items/s keyed per case vs 256k/s over 64 shard dicts), and a shard
lets one heap hold every deadline of its cases, driven by event time. Bytewax's own
timers follow the system clock, which the contract's event-time deadlines must not.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import Sink

from archwatch.engine import (
    ArchiveNoShard,
    CaseShard,
    Count,
    DedupShard,
    Eviction,
    Loader,
    ReceiverShard,
    Reconcile,
    Registrations,
    Tick,
    VersionClock,
    Watermark,
    Write,
)
from archwatch.models import Envelope, Reject, parse_record
from archwatch.rules import ReceiptFact
from archwatch.settings import EngineSettings, all_shards, shard_of
from archwatch.timeutil import ch_time, now_ms

CLOCK_KEY = "clock"
RECEIVER_TYPES = frozenset({"receiver.heartbeat", "interface.error"})


class _ShardLogic(StatefulBatchLogic[Any, Any, Any]):
    """Adapter: Bytewax calls ``on_batch``; the pure shard object does the work.

    The shard object is the state. Bytewax asks for a snapshot at every epoch even
    without recovery, and requires it to be immutable while the shard keeps changing:
    so the snapshot is the pickled shard (bytes are immutable, and pickling is ~10x
    cheaper than ``deepcopy``), and nothing at all when recovery is off.
    """

    def __init__(self, shard: Any, eof: Callable[[Any], list[Any]] | None = None,
                 recovery: bool = False, reconcile: bool = False,
                 stage: str | None = None) -> None:
        self.shard = shard
        self._stage = stage
        self._eof = eof
        self._recovery = recovery
        # first reset the store to what the shard believes (see Reconcile), as soon as
        # the shard knows which rows are its own
        self._reconcile = reconcile and hasattr(shard, "live_rows")

    @classmethod
    def builder(cls, make: Callable[[], Any], eof: Callable[[Any], list[Any]] | None = None,
                recovery: bool = False, fresh_reconcile: bool = False,
                stage: str | None = None) -> Callable[[bytes | None], _ShardLogic]:
        """``fresh_reconcile``: a shard built without a snapshot reconciles too (live: the
        store outlives the run, and may hold rows of this shard from an earlier one).
        ``stage``: count the events and receipt facts each batch processed (``Count``)."""

        def build(resume: bytes | None) -> _ShardLogic:
            shard = make()
            if resume is not None:
                restored = pickle.loads(resume)
                if hasattr(restored, "adopt"):
                    restored.adopt(shard)
                shard = restored
            return cls(shard, eof, recovery, reconcile=resume is not None or fresh_reconcile,
                       stage=stage)

        return build

    def on_batch(self, values: list[Any]) -> tuple[Iterable[Any], bool]:
        out = self.shard.on_batch(values)
        if self._reconcile and self.shard.src:
            self._reconcile = False
            keep = frozenset(getattr(self.shard, "evicted", ()))
            out = [Reconcile(self.shard.src, self.shard.live_rows(), keep), *out]
        if self._stage is not None:
            out = _count_stage(self._stage, values, out)
        return out, StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[Iterable[Any], bool]:
        if self._eof is None:
            return (), StatefulBatchLogic.RETAIN
        return self._eof(self.shard), StatefulBatchLogic.RETAIN

    def snapshot(self) -> bytes | None:
        if not self._recovery:
            return None
        return pickle.dumps(self.shard, protocol=pickle.HIGHEST_PROTOCOL)


def _count_stage(stage: str, values: list[Any], out: Any) -> list[Any]:
    """Append how many events/facts this batch took in (and, for the cases, how many
    receipt facts it sent on): the sink tallies them with the rows of the same batch."""
    out = list(out)
    taken = sum(1 for v in values if isinstance(v, Envelope | ReceiptFact))
    if taken:
        out.append(Count(f"stage:{stage}", taken))
    sent = sum(1 for x in out if isinstance(x, ReceiptFact))
    if sent:
        out.append(Count("stage:facts_sent", sent))
    return out


class _Dedup:
    def __init__(self) -> None:
        self.d = DedupShard()

    def on_batch(self, envs: list[Envelope]) -> list[tuple[str, Envelope]]:
        return [(self.d.classify(e), e) for e in envs]


class _Clock:
    """Single-key step that owns the global watermark.

    It hears the largest ``occurredAt`` of each batch of applied events and, live, the
    wall clock; it broadcasts a :class:`Watermark` when the watermark moves (live) and,
    at the end of a replay's input, the ``--as-of`` (default: the largest occurredAt).
    """

    def __init__(self, settings: EngineSettings) -> None:
        self.settings = settings
        self.max_seen: int | None = None
        self.sent: int | None = None

    def on_batch(self, values: list[tuple[str, int]]) -> list[Watermark]:
        wall = None
        for kind, at in values:
            if kind == "event":
                self.max_seen = at if self.max_seen is None else max(self.max_seen, at)
            else:
                wall = at
        if not self.settings.live:
            return []
        candidates = [t - self.settings.sla.lateness for t in (self.max_seen, wall) if t]
        if not candidates:
            return []
        wm = max(candidates)
        if self.sent is not None and wm <= self.sent:
            return []
        self.sent = wm
        return [Watermark(wm)]

    def end(self) -> list[Watermark]:
        final = self.settings.as_of if self.settings.as_of is not None else self.max_seen
        return [] if final is None else [Watermark(final)]


def _route(settings: EngineSettings) -> Callable[[tuple[str, Envelope]], list[Any]]:
    as_of = settings.as_of

    def route(item: tuple[str, Envelope]) -> list[Any]:
        status, env = item
        if status == "duplicate":
            return [Count("duplicate")]
        if status == "reused":
            return [Reject("eventId reused", env.raw, env.pos)]
        if as_of is not None and env.event.occurredAt > as_of:
            return [Count("afterAsOf")]
        return [env]

    return route


def _event_log_row(env: Envelope) -> Write:
    ev = env.event
    entity = ev.receiverId if ev.type in RECEIVER_TYPES else ev.caseNo  # type: ignore[union-attr]
    return Write("event_log", {
        "entity": entity, "occurred_at": ch_time(ev.occurredAt), "event_id": ev.eventId,
        "type": ev.type, "archive_no": getattr(ev, "archiveNo", ""), "source": ev.source,
        "payload": env.raw,
    })


def build_flow(
    source: Source[tuple[str | bytes, str]],
    sink: Sink[Any],
    settings: EngineSettings,
    ticks: Source[datetime] | None = None,
    clock: VersionClock | None = None,
    registrations: Source[Any] | None = None,
    loader: Loader | None = None,
    wall_ms: Callable[[], int] = now_ms,
) -> Dataflow:
    """The reconciliation dataflow over ``source`` (items: ``(record, position)``)."""
    versions = clock or VersionClock()
    eviction = None
    if loader is not None and settings.evict_after_ms is not None:
        eviction = Eviction(loader, settings.evict_after_ms, settings.evict_min_wall_ms)
    n = settings.shards
    shard_keys = all_shards(n)
    flow = Dataflow("archwatch")

    records = op.input("input", flow, source)
    parsed = op.map("parse", records, lambda rp: parse_record(rp[0], rp[1]))
    valid = op.branch("valid", parsed, lambda x: isinstance(x, Envelope))
    by_eid = op.key_on("key_event_id", valid.trues, lambda e: shard_of(e.event.eventId, n))
    rec = settings.recovery
    classified = op.stateful_batch(
        "dedup", by_eid, _ShardLogic.builder(_Dedup, recovery=rec))
    routed = op.flat_map("route", op.key_rm("dedup_out", classified), _route(settings))
    is_applied = op.branch("applied", routed, lambda x: isinstance(x, Envelope))
    applied = is_applied.trues
    event_log = op.map("event_log", applied, _event_log_row)

    # --- clock: event-time maximum per batch, wall ticks (live), end of input
    maxima = op.flat_map_batch(
        "batch_max", applied,
        lambda envs: [(CLOCK_KEY, ("event", max(e.event.occurredAt for e in envs)))],
    )
    clock_in = maxima
    sink_ticks: list[Any] = []
    if ticks is not None:
        tick_stream = op.input("ticks", flow, ticks)
        wall = op.map("wall", tick_stream,
                      lambda t: (CLOCK_KEY, ("wall", int(t.timestamp() * 1000))))
        clock_in = op.merge("clock_in", maxima, wall)
        sink_ticks.append(op.map("sink_tick", tick_stream, lambda _t: Tick()))
    marks = op.key_rm("clock_out", op.stateful_batch(
        "clock", clock_in,
        _ShardLogic.builder(lambda: _Clock(settings), eof=lambda c: c.end(), recovery=rec),
    ))
    broadcast = op.flat_map("broadcast", marks, lambda w: [(k, w) for k in shard_keys])
    archive_ticks = op.filter("archive_ticks", broadcast, lambda _kw: settings.recovery)

    # --- cases
    kinds = op.branch("is_receiver", applied, lambda e: e.event.type in RECEIVER_TYPES)
    case_in = op.merge(
        "case_in",
        op.key_on("key_case", kinds.falses, lambda e: shard_of(e.event.caseNo, n)),
        broadcast,
    )
    case_out = op.key_rm("cases_out", op.stateful_batch(
        "cases", case_in,
        _ShardLogic.builder(lambda: CaseShard(n, settings.sla, versions, wall_ms, eviction),
                            recovery=rec, fresh_reconcile=settings.live, stage="cases"),
    ))
    facts = op.branch("is_fact", case_out, lambda x: isinstance(x, ReceiptFact))
    archive_in = op.merge(
        "archive_in",
        op.key_on("key_archive_no", facts.trues, lambda f: shard_of(f.archive_no, n)),
        archive_ticks,  # with recovery: a restored shard reconciles on its first tick
    )
    archive_rows = op.key_rm("archive_nos_out", op.stateful_batch(
        "archive_nos", archive_in,
        _ShardLogic.builder(lambda: ArchiveNoShard(n, versions), recovery=rec,
                            fresh_reconcile=settings.live, stage="archive_nos"),
    ))

    # --- receivers (live: registrations polled from the registry reach every shard)
    recv_streams = [
        op.key_on("key_receiver", kinds.trues, lambda e: shard_of(e.event.receiverId, n)),
        broadcast,
    ]
    if registrations is not None:
        recv_streams.append(op.flat_map(
            "registrations", op.input("registry", flow, registrations),
            lambda regs: [(k, Registrations(regs)) for k in shard_keys]))
    recv_in = op.merge("recv_in", *recv_streams)
    recv_rows = op.key_rm("receivers_out", op.stateful_batch(
        "receivers", recv_in,
        _ShardLogic.builder(
            lambda: ReceiverShard(n, settings.sla, versions, settings.receivers,
                                  settings.flap), recovery=rec,
            fresh_reconcile=settings.live, stage="receivers"),
    ))

    everything = op.merge(
        "all_out", valid.falses, is_applied.falses, event_log, facts.falses, archive_rows,
        recv_rows, *sink_ticks,
    )
    op.output("store", everything, sink)
    return flow


def wall_ticks(interval: timedelta = timedelta(milliseconds=100)) -> Source[datetime]:
    """A clock input for live mode: the wall-clock time, every ``interval``."""
    from bytewax.inputs import SimplePollingSource

    class _Ticks(SimplePollingSource[datetime, None]):
        def next_item(self) -> datetime:
            return datetime.now(UTC)

    return _Ticks(interval)
