"""The reconciliation dataflow: one definition that any source feeds (JSONL files in a
replay, Kafka topics live) and that writes to any :class:`~archwatch.store.Store`.

Shape::

    input ─ parse ─┬─ rejects ─────────────────────────────────────────────┐
                   └─ key by eventId shard ─ dedup ─┬─ duplicates/reused ──┤
                                                    └─ applied ─┬─ to be logged ─┤
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

The sink logs every applied event it receives (the ``event_log`` rows are built there,
column by column, from the events: archwatch.eventlog.event_log_columns).
"""

from __future__ import annotations

import gc
import pickle
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import FixedPartitionedSink, Sink
from prometheus_client import Counter as PCounter

from archwatch.engine import (
    MIN_TIME,
    ArchiveNoShard,
    CaseShard,
    Chunk,
    Count,
    DedupShard,
    DigestLookup,
    Eviction,
    Loader,
    Progress,
    ReceiverShard,
    Reconcile,
    Registrations,
    Retirement,
    VersionClock,
    WallTick,
    Watermark,
    Write,
    extrapolated,
    passes_at,
)
from archwatch.eventlog import RECEIVER_TYPES
from archwatch.metrics import (
    ARCHIVE_NOS_STAGED_BETWEEN,
    CASES_PACKED_BETWEEN,
    IDS_STAGED_BETWEEN,
    WATERMARK_HELD,
    WATERMARK_HELD_TIME,
)
from archwatch.models import Envelope, Reject, parse_record
from archwatch.rules import ReceiptFact
from archwatch.settings import EngineSettings, all_shards, shard_of
from archwatch.timeutil import now_ms

CLOCK_KEY = "clock"
# Live, a shard fires a deadline by the wall clock itself when no watermark has fired it
# this long after it fell due (the ticks come every INPUT_WAKE; they stop while an epoch
# closes with recovery), taking the last watermark at most NOTIFY_REACH_MS on.
NOTIFY_GRACE_MS = 50
NOTIFY_REACH_MS = 3_000
# Live with recovery, a case shard packs the cases touched so far once this long after it
# last did (CaseShard.precool), and the shards write their changes into their logs' blobs
# (ChangeLog.stage), so that an epoch's close does only the rest.
PRECOOL_MS = 1_000
REJECT_KEY = "rejects"  # the dedup key that carries parse rejects (no state is kept)
# The tables an alert sink gets (build_flow's ``alerts``): what operations staff wait for.
# Not anomaly_feed: a cursor reads that log by seq, and a row written out of its order
# there could be passed over.
ALERT_TABLES = frozenset({"anomaly", "anomaly_count"})


class _ShardLogic(StatefulBatchLogic[Any, Any, Any]):
    """Adapter: Bytewax calls ``on_batch``; the pure shard object does the work.

    The shard object is the state. Bytewax asks for a snapshot at every epoch even
    without recovery, and requires it to be immutable while the shard keeps changing:
    so the snapshot is the pickled shard (bytes are immutable, and pickling is ~10x
    cheaper than ``deepcopy``), and nothing at all when recovery is off.
    """

    def __init__(self, shard: Any, eof: Callable[[Any], list[Any]] | None = None,
                 recovery: bool = False, reconcile: bool = False,
                 stage: str | None = None, wall_ms: Callable[[], int] | None = None,
                 precool_counter: PCounter | None = None) -> None:
        self.shard = shard
        self._stage = stage
        self._eof = eof
        self._recovery = recovery
        # first reset the store to what the shard believes (see Reconcile), as soon as
        # the shard knows which rows are its own
        self._reconcile = reconcile and hasattr(shard, "live_rows")
        # the last snapshot, while it still stands for the shard (see snapshot)
        self._snap: bytes | None = None
        # live: the wall clock, and the last watermark that followed it (see notify_at)
        self._wall_ms = wall_ms
        self._next_deadline: Callable[[], int | None] | None = (
            getattr(shard, "next_deadline", None) if wall_ms is not None else None)
        self._live: Watermark | None = None
        self._precool = getattr(shard, "precool", None) if recovery and wall_ms else None
        self._precooled = 0  # wall ms of the last precool
        # a shard with deadlines (cases) packs between closes only while its input is
        # live; one without (event ids, archive numbers: staging costs no more in all, an
        # id or a number rarely changing twice in an epoch) while reading a backlog too
        self._precool_always = self._next_deadline is None
        self._precool_count = precool_counter  # what precool's returns add up in

    @classmethod
    def builder(cls, make: Callable[[], Any], eof: Callable[[Any], list[Any]] | None = None,
                recovery: bool = False, fresh_reconcile: bool = False,
                stage: str | None = None, wall_ms: Callable[[], int] | None = None,
                precool_counter: PCounter | None = None,
                ) -> Callable[[bytes | None], _ShardLogic]:
        """``fresh_reconcile``: a shard built without a snapshot reconciles too (live: the
        store outlives the run, and may hold rows of this shard from an earlier one).
        ``stage``: count the events and receipt facts each batch processed (``Count``).
        ``wall_ms``: live, fire deadlines by the wall clock while no watermark comes (see
        :meth:`notify_at`), and pack between closes with recovery (``precool_counter``:
        the metric that counts what is packed or staged)."""

        def build(resume: bytes | None) -> _ShardLogic:
            shard = make()
            if resume is not None:
                restored = pickle.loads(resume)
                if hasattr(restored, "adopt"):
                    restored.adopt(shard)
                shard = restored
            return cls(shard, eof, recovery, reconcile=resume is not None or fresh_reconcile,
                       stage=stage, wall_ms=wall_ms, precool_counter=precool_counter)

        return build

    def on_batch(self, values: list[Any]) -> tuple[Iterable[Any], bool]:
        wm = getattr(self.shard, "external_wm", None)
        out = self.shard.on_batch(values)
        if self._next_deadline is not None:
            for v in reversed(values):
                if type(v) is Watermark:
                    self._live = v if v.wall is not None else None
                    collector_follows(self._live is not None, packed=self._recovery)
                    break
        if out or any(type(v) is not Watermark for v in values):
            self._snap = None
        if self._precool is not None and (self._live is not None or self._precool_always):
            self._spread_packing()
        if wm is not None and self.shard.external_wm > wm and self.shard.src:
            # the watermark this shard now stands at, counted by the sink once the rows
            # emitted with it are written (archwatch_watermark_written_seconds)
            out = [*out, Count("wm:" + self.shard.src, self.shard.external_wm)]
        if self._reconcile and self.shard.src:
            self._reconcile = False
            keep = frozenset(getattr(self.shard, "evicted", ()))
            out = [Reconcile(self.shard.src, self.shard.live_rows(), keep,
                             self.shard.clock.next()), *out]
        if self._stage is not None:
            out = _count_stage(self._stage, values, out)
        return out, StatefulBatchLogic.RETAIN

    def _spread_packing(self) -> None:
        """Live with recovery: pack the cases touched so far every PRECOOL_MS, and write
        what changed into the change logs' blobs (the event-id shards: their ids; the
        archive-number shards: the archive numbers changed).

        Why: a case shard's snapshot packs every case touched since the last one (≈ 13
        µs each), and Bytewax takes the snapshots of every shard one after the other as
        an epoch closes, reading no input meanwhile: at 10,000 events/s with 5 s epochs
        that was ≈ 0.27 s of CPU a close for the case shards, a wait for any deadline due
        then; marshalling and compressing the epoch's changes into blobs was as much
        again (the event-id shards' 50,000 ids). Done as they go, the close does only the
        last PRECOOL_MS's. (A case touched again after it was packed is unpacked and
        packed once more: more CPU in all, which is why a case shard reading a backlog,
        as fast as it can, leaves it to the close.)"""
        assert self._wall_ms is not None and self._precool is not None
        now = self._wall_ms()
        if now - self._precooled >= PRECOOL_MS:
            self._precooled = now
            n = self._precool()
            if self._precool_count is not None:
                self._precool_count.inc(n)

    def notify_at(self) -> datetime | None:
        """Live, when the next deadline is due by the wall clock (plus NOTIFY_GRACE_MS).

        Why: with recovery, Bytewax reads no input while an epoch closes, until every
        step's snapshot of it is written (its backpressure: 0.3-0.7 s an epoch measured
        at 10,000 events/s), and the wall-clock ticks are items of that input: deadlines
        waited for the close to end. A watermark that follows the wall clock moves on
        with it, so the shard can take it that far itself (NOTIFY_REACH_MS at most): the
        same deadlines fire as the ticks would fire, at the same watermark. Normally a
        tick fires the deadline first, Bytewax asks again, and on_notify is not called."""
        live, next_deadline = self._live, self._next_deadline
        if live is None or live.wall is None or next_deadline is None:
            return None
        deadline = next_deadline()
        due = None if deadline is None else passes_at(live, deadline)
        if due is None or due - live.wall > NOTIFY_REACH_MS:
            return None
        return datetime.fromtimestamp((due + NOTIFY_GRACE_MS) / 1000, UTC)

    def on_notify(self) -> tuple[Iterable[Any], bool]:
        """The watermark where the wall clock has taken it since the last one."""
        live = self._live
        at = None if live is None or self._wall_ms is None else extrapolated(
            live, self._wall_ms(), NOTIFY_REACH_MS)
        if at is None or at <= self.shard.external_wm:
            return (), StatefulBatchLogic.RETAIN
        out, keep = self.on_batch([Watermark(at)])
        # the extrapolated watermark does not follow the wall clock, but the input is live
        self._live = live
        collector_follows(True, packed=self._recovery)
        return out, keep

    def on_eof(self) -> tuple[Iterable[Any], bool]:
        if self._eof is None:
            return (), StatefulBatchLogic.RETAIN
        return self._eof(self.shard), StatefulBatchLogic.RETAIN

    def snapshot(self) -> bytes | None:
        """The pickled shard; the last one again if only watermarks came since.

        Every shard gets the clock's watermark at every tick, so Bytewax snapshots each
        of them at every epoch, idle or not; pickling a shard copies every case it holds
        (≈ 2–3.5 s of CPU per million open cases). A batch of watermarks alone that emits
        nothing changes nothing a restore needs: the watermark itself (the restored clock
        sends it again), deadlines that came up and fired nothing (they come up again
        and decide the same), settled cases evicted (they are evicted again), cases
        unpacked (the same state)."""
        if not self._recovery:
            return None
        if self._snap is None:
            self._snap = pickle.dumps(self.shard, protocol=pickle.HIGHEST_PROTOCOL)
        return self._snap


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
    """The event-id shard, and everything decided per event right after it: duplicates
    and reused ids, events after ``--as-of``.

    One step instead of a chain of per-item maps and branches: Bytewax's cost is per item
    and per step, so the applied events leave here as Envelopes beside the sink's items
    (counts, rejects); the sink logs each Envelope it gets (the event log), and
    batch-level steps send the events on to their shards (see build_flow)."""

    def __init__(self, as_of: int | None = None, retirement: Retirement | None = None) -> None:
        self.d = DedupShard(retirement)
        self.as_of = as_of

    def on_batch(self, items: list[Envelope | Reject]) -> list[Any]:
        out: list[Any] = []
        d = self.d
        as_of = self.as_of
        envs = [e for e in items if type(e) is Envelope]
        statuses = iter(d.classify_batch(envs))  # type: ignore[arg-type]
        for env in items:
            if type(env) is not Envelope:
                out.append(env)  # a parse reject, passed on to the sink
                continue
            status = next(statuses)
            if status == "duplicate":
                out.append(Count("duplicate"))
            elif status == "reused":
                out.append(Reject("eventId reused", env.raw, env.pos))
            elif as_of is not None and env.event.occurredAt > as_of:
                out.append(Count("afterAsOf"))  # its id stays: it is not in the event log
            else:
                out.append(env)  # applied: logged by the sink, and on to its shard
                d.logged(env)
        d.retire_due()
        return out

    def precool(self) -> int:
        """Live with recovery: the ids so far as blobs of their logs (DedupShard.precool)."""
        return self.d.precool()

    def adopt(self, fresh: _Dedup) -> None:
        """After a restore: the running settings' ``--as-of``, not the snapshot's, and this
        process's event-log lookup."""
        self.as_of = fresh.as_of
        self.d.adopt(fresh.d)


# A partition that has not reported its progress for this long (wall time) no longer holds
# the watermark: a stalled consumer or an unreachable broker must not stop deadlines
# from firing (contract §3: in live mode they fire even when nothing arrives).
PROGRESS_STALL_MS = 30_000
# A partition whose mark showed events this recent (against the wall clock when the mark
# was taken) is live, not catching up: it does not hold the watermark. The marks describe
# the epoch before, so a hold under steady load would keep the watermark an epoch or more
# behind the events (measured at 10,000 events/s: deadline -> computed p50 85 -> 296 ms,
# p99 0.55 -> 1.9 s); what a recent partition still has in flight is what the lateness is
# for. Against the wall clock when the mark was taken, not now: a mark stands until the
# next one, an epoch (5 s with recovery) and a round of the dataflow later (it is sent
# with the partition's next read, after the dataflow has worked through the last one),
# and against the clock now, a partition live at its mark "fell behind" as the epoch went
# on and held the watermark until the next mark (measured at 3,500 events/s on a slow
# machine: held 6-8 s behind the wall clock at every epoch's end, deadlines fired 8-10 s
# late).
LIVE_WINDOW_MS = 5_000


class _Clock:
    """Single-key step that owns the global watermark.

    It hears the largest ``occurredAt`` of each batch of applied events and, live, the
    wall clock; it broadcasts a :class:`Watermark` when the watermark moves (live) and,
    at the end of a replay's input, the ``--as-of`` (default: the largest occurredAt).

    Live on Kafka (``parts``: the source's partitions, each sending a :class:`Progress`
    after every epoch, see connectors.kafka.KafkaRecords) the watermark is held, while
    any partition has a backlog, at the event time that partition has delivered so far
    (less the lateness), the lowest of them: a deadline fires only once every partition
    still catching up has been read past it. Without it, catching up on a backlog (a
    first start, a restart after an outage) fires deadlines by the wall clock, or by the
    event time of the topics read fastest, while the events that prevent them are still
    unread in another topic: one false alert opened and then withdrawn per such case
    (measured: 80,000 on a backlog of 350,000 events, each in the live feed and its
    webhooks). Contract §3 allows any lower watermark: it only delays firing. A partition
    never heard from, or silent for :data:`PROGRESS_STALL_MS` (or reporting a backlog it
    does not deliver from), stops holding it; so does one whose events were within
    :data:`LIVE_WINDOW_MS` of the wall clock when its last mark was taken (live traffic,
    not a backlog)."""

    def __init__(self, settings: EngineSettings, parts: frozenset[str] = frozenset()) -> None:
        self.settings = settings
        self.max_seen: int | None = None
        self.sent: int | None = None
        self.parts = parts
        # part -> (caught up, largest occurredAt delivered so far, wall ms when it last
        # moved, wall ms when its last mark was taken: None before the first tick)
        self.progress: dict[str, tuple[bool, int | None, int | None, int | None]] = {}
        self.wall: int | None = None  # the last tick
        self.started: int | None = None  # the first tick
        # how far the watermark sent is behind where event time and the wall clock alone
        # would have it (the backlog hold), and the wall ms it has been behind in all:
        # what _ClockLogic reports. From the first watermark on: the wait for every
        # partition's first mark as a run starts (an epoch) is not counted
        self.behind_ms = 0
        self.held_ms = 0

    def on_batch(self, values: list[tuple[str, Any]]) -> list[Watermark]:
        wall_before, was_behind = self.wall, self.behind_ms > 0
        reports = []
        for kind, at in values:
            if kind == "event":
                self.max_seen = at if self.max_seen is None else max(self.max_seen, at)
            elif kind == "part":
                reports.append(at)
            else:
                self.wall = at
                if self.started is None:
                    self.started = at
        for p in reports:  # after the batch's tick: a mark is timed by the latest one
            self._report(p)
        if not self.settings.live:
            return []
        lateness = self.settings.sla.lateness
        candidates = [t - lateness for t in (self.max_seen, self.wall) if t]
        if not candidates:
            return []
        wm = unheld = max(candidates)
        if self.parts:
            held = self.held()
            if held == MIN_TIME:
                wm = MIN_TIME  # a backlog whose event time is not known yet: nothing fires
            elif held is not None:
                wm = min(wm, held - lateness)
        if was_behind and wall_before is not None and self.wall is not None:
            self.held_ms += self.wall - wall_before
        moves = wm != MIN_TIME and (self.sent is None or wm > self.sent)
        now_at = wm if moves else self.sent
        self.behind_ms = 0 if now_at is None else max(0, unheld - now_at)
        if not moves:
            return []
        self.sent = wm
        # one that follows the wall clock says so: the shards may take it on with the
        # wall clock between ticks (see _ShardLogic.notify_at)
        wall = self.wall if self.wall is not None and wm == self.wall - lateness else None
        return [Watermark(wm, wall)]

    def _report(self, p: Progress) -> None:
        """Note a partition's progress; its time is when it last moved (delivered later
        events, or caught up or fell behind), so one that reports a backlog without
        delivering from it goes stale (PROGRESS_STALL_MS) and stops holding."""
        taken = self.wall if p.taken_at is None else p.taken_at
        old = self.progress.get(p.part)
        if old is None:
            self.progress[p.part] = (p.caught_up, p.max_at, self.wall, taken)
            return
        caught_up, top, at, _taken = old
        moved = caught_up != p.caught_up or at is None
        if p.max_at is not None and (top is None or p.max_at > top):
            top, moved = p.max_at, True
        self.progress[p.part] = (p.caught_up, top, self.wall if moved else at, taken)

    def held(self) -> int | None:
        """Where the partitions with a backlog hold the watermark: the least event time
        they have delivered (MIN_TIME: one of them has delivered none yet), or None when
        none holds it. Until the first tick nothing is stale."""
        wall = self.wall
        low: int | None = None
        for part in self.parts:
            rep = self.progress.get(part)
            if rep is None:  # not heard from since the start: holds, for a while
                if wall is not None and self.started is not None \
                        and wall - self.started >= PROGRESS_STALL_MS:
                    continue
                return MIN_TIME
            caught_up, top, at, taken = rep
            if caught_up or (wall is not None and at is not None
                             and wall - at >= PROGRESS_STALL_MS):
                continue
            if top is not None and taken is not None and top >= taken - LIVE_WINDOW_MS:
                continue  # live when its mark was taken, not catching up
            if top is None:
                return MIN_TIME
            if low is None or top < low:
                low = top
        return low

    def adopt(self, fresh: _Clock) -> None:
        """After a restore: the partitions' progress starts over (a partition caught up
        before the restart may have a backlog now), and this run's partitions count."""
        self.parts = fresh.parts
        self.progress, self.wall, self.started = {}, None, None
        self.behind_ms, self.held_ms = 0, getattr(self, "held_ms", 0)  # (older snapshots)

    def end(self) -> list[Watermark]:
        final = self.settings.as_of if self.settings.as_of is not None else self.max_seen
        return [] if final is None else [Watermark(final)]


class _ClockLogic(_ShardLogic):
    """The clock step's adapter: it also reports the backlog hold, so an operator sees
    why no deadline fires while a backlog is read, and a hold under live traffic shows
    (archwatch_watermark_held_seconds, ..._held_time_seconds_total)."""

    def __init__(self, shard: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(shard, *args, **kwargs)
        self._held_reported = shard.held_ms  # a restored clock's total is not this run's

    def on_batch(self, values: list[Any]) -> tuple[Iterable[Any], bool]:
        out = super().on_batch(values)
        clock = self.shard
        WATERMARK_HELD.set(clock.behind_ms / 1000)
        if clock.held_ms > self._held_reported:
            WATERMARK_HELD_TIME.inc((clock.held_ms - self._held_reported) / 1000)
            self._held_reported = clock.held_ms
        return out


def _chunk(batch: list[tuple[str, Any]]) -> list[Chunk]:
    """A batch's values as one sink item (see Chunk)."""
    return [Chunk([v for _k, v in batch])] if batch else []


def _chunks_by_key(batch: list[tuple[str, Any]]) -> list[tuple[str, Chunk]]:
    """A batch's values as one sink item per shard key, in order (a partitioned sink
    routes by key: a shard's items reach one partition, in the order it made them)."""
    groups: dict[str, Chunk] = {}
    for k, v in batch:
        c = groups.get(k)
        if c is None:
            c = groups[k] = Chunk()
        c.append(v)
    return list(groups.items())


def build_flow(
    source: Source[tuple[str | bytes, str]],
    sink: Sink[Any],
    settings: EngineSettings,
    clock: VersionClock | None = None,
    loader: Loader | None = None,
    wall_ms: Callable[[], int] = now_ms,
    digests: DigestLookup | None = None,
    parts: frozenset[str] = frozenset(),
    alerts: Sink[Any] | None = None,
) -> Dataflow:
    """The reconciliation dataflow over ``source`` (items: ``(record, position)``).

    Live, the source also gives ``(None, item)`` side items, in the same input as the
    records (see connectors.kafka.KafkaRecords): a :class:`WallTick` (the wall clock, for
    deadlines while the topics are idle) and :class:`Registrations` (the receivers'
    registrations in force, when they change), besides the progress marks below.

    ``parts``: the source's partitions, when it sends a :class:`Progress` item ``(None,
    Progress)`` for each at every epoch's end (live on Kafka): the clock step then holds
    the watermark while one of them has a backlog, and the shards follow the clock's
    watermark only (see _Clock).

    ``alerts``: a second sink that also gets the shards' rows of :data:`ALERT_TABLES`, as
    soon as they are made (one :class:`Chunk` per batch; see
    connectors.store_sink.AlertSink)."""
    versions = clock or VersionClock()
    eviction = None
    if loader is not None and settings.evict_after_ms is not None:
        eviction = Eviction(loader, settings.evict_after_ms, settings.evict_min_wall_ms)
    retirement = None
    if digests is not None and settings.evict_after_ms is not None:
        retirement = Retirement(digests, settings.evict_after_ms, settings.evict_min_wall_ms)
    n = settings.shards
    shard_keys = all_shards(n)
    flow = Dataflow("archwatch")

    records = op.input("input", flow, source)

    # Bytewax costs per item and per step, so the per-event work is done in few steps,
    # each over a whole batch: parse+key, dedup (which also decides duplicates and
    # --as-of), then batch-level splits of its output.
    # the largest occurredAt parsed so far per source partition ("topic/partition"; each is
    # read, and parsed, by one worker, in order)
    tops: dict[str, int] = {}

    def parse_keyed(batch: list[tuple[Any, Any]]) -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = []
        for raw, pos in batch:
            if raw is None:
                if type(pos) is Progress:  # a partition's progress at the last epoch's end:
                    # what it had delivered is all parsed before this mark, which comes
                    # first in its batch
                    pos = Progress(pos.part, pos.caught_up, tops.get(pos.part), pos.taken_at)
                out.append((CLOCK_KEY, pos))  # a side item (through dedup, as rejects go)
                continue
            rec = parse_record(raw, pos)
            # a reject only passes through the dedup step on its way to the sink
            if type(rec) is Envelope:
                out.append((shard_of(rec.event.eventId, n), rec))
                if parts:
                    part = pos[:pos.rindex("/")]
                    at = rec.event.occurredAt
                    if at > tops.get(part, MIN_TIME):
                        tops[part] = at
            else:
                out.append((REJECT_KEY, rec))
        return out

    by_eid = op.flat_map_batch("parse", records, parse_keyed)
    rec = settings.recovery
    as_of = settings.as_of
    deduped = op.stateful_batch(
        "dedup", by_eid, _ShardLogic.builder(lambda: _Dedup(as_of, retirement), recovery=rec,
                                             wall_ms=wall_ms if settings.live else None,
                                             precool_counter=IDS_STAGED_BETWEEN))
    # A FixedPartitionedSink routes by key: its items keep the key of the shard that made
    # them (its partition then gets a shard's items in order); any other sink gets values.
    sink_items = _chunks_by_key if isinstance(sink, FixedPartitionedSink) else _chunk
    to_sink = op.flat_map_batch("dedup_sink", deduped, sink_items)  # the Envelopes too

    # --- clock: event-time maximum per batch, wall ticks (live), end of input
    def batch_max(batch: list[tuple[str, Any]]) -> list[tuple[str, tuple[str, Any]]]:
        ats = [v.event.occurredAt for _k, v in batch if type(v) is Envelope]
        out: list[tuple[str, tuple[str, Any]]] = [(CLOCK_KEY, ("event", max(ats)))] if ats else []
        for _k, v in batch:  # side items (passed through the dedup step, as rejects are)
            kind = type(v)
            if kind is WallTick:
                out.append((CLOCK_KEY, ("wall", v.at)))
            elif kind is Progress and parts:
                out.append((CLOCK_KEY, ("part", v)))
        return out

    maxima = op.flat_map_batch("batch_max", deduped, batch_max)
    marks = op.key_rm("clock_out", op.stateful_batch(
        "clock", maxima,
        _ClockLogic.builder(lambda: _Clock(settings, parts), eof=lambda c: c.end(),
                            recovery=rec),
    ))
    broadcast = op.flat_map("broadcast", marks, lambda w: [(k, w) for k in shard_keys])
    archive_ticks = op.filter("archive_ticks", broadcast, lambda _kw: settings.recovery)

    # --- cases
    def case_keyed(batch: list[tuple[str, Any]]) -> list[tuple[str, Envelope]]:
        return [(shard_of(v.event.caseNo, n), v) for _k, v in batch
                if type(v) is Envelope and v.event.type not in RECEIVER_TYPES]

    case_in = op.merge("case_in", op.flat_map_batch("key_case", deduped, case_keyed), broadcast)
    case_out = op.stateful_batch(
        "cases", case_in,
        _ShardLogic.builder(lambda: CaseShard(n, settings.sla, versions, wall_ms, eviction,
                                              own_time=not parts),
                            recovery=rec, fresh_reconcile=settings.live, stage="cases",
                            wall_ms=wall_ms if settings.live else None,
                            precool_counter=CASES_PACKED_BETWEEN),
    )
    case_rows = op.flat_map_batch(
        "cases_sink", case_out,
        lambda b: sink_items([kv for kv in b if type(kv[1]) is not ReceiptFact]))
    archive_in = op.merge(
        "archive_in",
        op.flat_map_batch("key_archive_no", case_out, lambda b: [
            (shard_of(v.archive_no, n), v) for _k, v in b if type(v) is ReceiptFact]),
        archive_ticks,  # with recovery: a restored shard reconciles on its first tick
    )
    archive_out = op.stateful_batch(
        "archive_nos", archive_in,
        _ShardLogic.builder(lambda: ArchiveNoShard(n, versions), recovery=rec,
                            fresh_reconcile=settings.live, stage="archive_nos",
                            wall_ms=wall_ms if settings.live else None,
                            precool_counter=ARCHIVE_NOS_STAGED_BETWEEN),
    )
    archive_rows = op.flat_map_batch("archive_nos_out", archive_out, sink_items)

    # --- receivers (live: registrations polled from the registry reach every shard)
    def receiver_keyed(batch: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = []
        for _k, v in batch:
            if type(v) is Envelope:
                if v.event.type in RECEIVER_TYPES:
                    out.append((shard_of(v.event.receiverId, n), v))
            elif type(v) is Registrations:  # live: they reach every shard
                out.extend((k, v) for k in shard_keys)
        return out

    recv_in = op.merge("recv_in", op.flat_map_batch("key_receiver", deduped, receiver_keyed),
                       broadcast)
    recv_out = op.stateful_batch(
        "receivers", recv_in,
        _ShardLogic.builder(
            lambda: ReceiverShard(n, settings.sla, versions, settings.receivers,
                                  settings.flap, own_time=not parts), recovery=rec,
            fresh_reconcile=settings.live, stage="receivers",
            wall_ms=wall_ms if settings.live else None),
    )
    recv_rows = op.flat_map_batch("receivers_out", recv_out, sink_items)

    if alerts is not None:
        def alert_rows(batch: list[tuple[str, Any]]) -> list[Chunk]:
            rows = [v for _k, v in batch if type(v) is Write and v.table in ALERT_TABLES]
            return [Chunk(rows)] if rows else []

        op.output("alerts", op.flat_map_batch(
            "alert_rows", op.merge("alert_in", case_out, archive_out, recv_out), alert_rows),
            alerts)

    everything = op.merge(
        "all_out", to_sink, case_rows, archive_rows, recv_rows,
    )
    op.output("store", everything, sink)
    return flow


# The collector's young threshold while the dataflow reads a backlog (or replays a file),
# or is live with recovery; and once it is live without: see engine_gc, collector_follows.
GC_BACKLOG_THRESHOLD = 1_000_000
GC_LIVE_THRESHOLD = 50_000
# the live threshold? (None: outside engine_gc, leave it alone)
_gc_mode: list[bool | None] = [None]


def collector_follows(live: bool, packed: bool = False) -> None:
    """Inside :func:`engine_gc`, set the collector's young threshold for the input as it
    is now: ``GC_LIVE_THRESHOLD`` once the watermark follows the wall clock and the cases
    stay objects, else ``GC_BACKLOG_THRESHOLD``. A young collection scans what was
    allocated since the last one, so its pause grows with the threshold: catching up,
    throughput counts and the batches in flight are large (the high threshold); live, a
    deadline may be waiting and the batches are small. Measured at a steady 10,000
    events/s without recovery, where the cases stay objects and the state grows by a
    million containers in half a minute: at 1,000,000 one collection of 0.6-0.8 s a run
    doubled the computed p99 (0.30-0.43 -> 0.68-1.17 s); at 50,000 the longest pause is
    a middle collection's ≈ 0.25 s. With recovery (``packed``) every snapshot packs the
    cases touched since the one before into bytes, freeing their objects, and the freed
    containers count down what sets a young collection off: the state no longer grows
    in objects, and 1,000,000 cost 38-83 ms of collector time a run where 50,000 cost
    1.8-2.2 s; visible p99 median 940 against 1,064 ms over 15 interleaved pairs
    (bench/RESULTS.md section 2, session 16)."""
    tight = live and not packed
    mode = _gc_mode[0]
    if mode is None or mode is tight:
        return
    _gc_mode[0] = tight
    rest = gc.get_threshold()[1:]
    gc.set_threshold(GC_LIVE_THRESHOLD if tight else GC_BACKLOG_THRESHOLD, *rest)


@contextmanager
def engine_gc() -> Iterator[None]:
    """Run the dataflow with a much less eager cyclic garbage collector.

    The engine's objects die by reference counting, not by the collector: envelopes,
    rows and batches young, the state (cases, dedup ids) when a case is packed or
    evicted. A young collection runs when the tracked objects allocated minus those
    freed since the last one pass the threshold, so a threshold below what is in flight
    at once (the Kafka source's batches, up to 5,000 records a partition, are parsed,
    keyed, applied and buffered for the store before they are freed) sets collections
    off in the middle of every batch: each scans the batch and promotes it, to be
    scanned again by the older generations, and finds next to nothing (1,200 objects in
    a 15 s catch-up of 357,000 events). CPython's 700 cost ~15% of a replay's CPU;
    50,000 (until session 16) still a fifth of `run`'s wall time in a catch-up. At
    1,000,000 only the state's own growth sets it off: catching up, `run -w 1` +9-15%
    without recovery, +2-13% with (interleaved, in two hours; bench/RESULTS.md section
    1, session 16). The price is a long pause when it does run (a million containers
    scanned at once: 0.3-0.8 s), which a live engine cannot afford while its cases stay
    objects: once the watermark follows the wall clock the shards set 50,000 again
    unless recovery packs the cases (:func:`collector_follows`).
    Objects already alive (imports, settings) are frozen out of collection; thresholds
    are restored afterwards."""
    before = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(GC_BACKLOG_THRESHOLD, before[1], before[2])
    _gc_mode[0] = False
    try:
        yield
    finally:
        _gc_mode[0] = None
        gc.set_threshold(*before)
        gc.unfreeze()
