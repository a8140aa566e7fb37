"""Shard logic of the dataflow's stateful steps: pure Python, no Bytewax, no I/O.

Each class holds the state of one *shard* of a key space (cases, archive numbers,
receivers, event ids) and turns a batch of inputs into a list of outputs. Bytewax keys
its stateful steps by shard (coarse keys leave room for real work: per-key overhead
dominates in Bytewax) and calls these objects; tests call them directly.

Deadlines follow event time, not Bytewax's system-clock timers: each shard keeps a heap
of ``(deadline, case)`` and a watermark; deadlines fire when the watermark passes them.
The watermark of a shard is the later of its own ``max occurredAt - lateness`` and the
last :class:`Watermark` broadcast by the clock step (which in live mode follows the wall
clock, and at the end of a replay jumps to ``--as-of``). A shard may lag the global
watermark; that only delays firing, never changes the answer (contract §3).
"""

from __future__ import annotations

import functools
import heapq
import itertools
import marshal
import time
import zlib
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from dataclasses import fields as dataclass_fields
from typing import Any, NamedTuple

from archwatch import zlib_held
from archwatch.blobstore import LogFiles
from archwatch.blobstore import current as current_blob_store
from archwatch.kpi import KpiAcc
from archwatch.models import Envelope, ReceiverHeartbeat
from archwatch.receivers import ReceiverFacts, Registration, alert_after, gap_ids, scan
from archwatch.rules import (
    CLASS_OF_CODE,
    SHARED_NO,
    Anomaly,
    CaseFacts,
    CaseRow,
    Completion,
    KpiKey,
    KpiPart,
    Receipt,
    ReceiptFact,
    Sla,
    Step,
    Summary,
    _shared_item,
    case_attrs,
    evaluate_archive_no,
    evaluate_summary,
    kpi_of,
    row_of,
    shared_key,
)
from archwatch.settings import shard_of
from archwatch.timeutil import ch_time

MIN_TIME = -(2**62)


# ---------------------------------------------------------------------------
# Messages between steps


@dataclass(frozen=True, slots=True)
class Watermark:
    """Broadcast by the clock step: every deadline strictly before ``at`` may fire.

    ``wall``: when the watermark follows the wall clock (live traffic: ``at`` is the wall
    clock less the lateness, nothing holds it back), the wall clock it was taken at;
    None otherwise (event time, a backlog holding it, the end of a replay)."""

    at: int
    wall: int | None = None


def extrapolated(wm: Watermark, now: int, reach: int) -> int | None:
    """Where a watermark that follows the wall clock stands at wall time ``now`` (ms), up
    to ``reach`` ms after it was taken; None if it does not follow the wall clock, or
    ``now`` is out of reach (then only the clock step's next watermark says)."""
    if wm.wall is None or not 0 <= now - wm.wall <= reach:
        return None
    return wm.at + (now - wm.wall)


def passes_at(wm: Watermark, deadline: int) -> int | None:
    """The wall time (ms) at which a watermark that follows the wall clock passes
    ``deadline`` (fires it: deadlines strictly before the watermark fire); None if it
    does not follow the wall clock."""
    return None if wm.wall is None else wm.wall + (deadline + 1 - wm.at)


@dataclass(frozen=True, slots=True)
class Progress:
    """How far one input partition (``part``, "topic/partition") had been read when an
    epoch ended: the live Kafka source sends one first in the next epoch (``max_at``
    still None), the parse step fills in the largest ``occurredAt`` it has parsed from
    that partition, and the clock step holds the watermark at what the partitions with a
    backlog have delivered (:class:`~archwatch.dataflows.reconcile._Clock`).
    ``caught_up``: the partition was read to its end as the broker last reported it.
    ``taken_at``: the wall clock (ms) when the epoch ended, against which ``max_at``
    tells live traffic from a backlog (None: the clock step's latest tick stands in)."""

    part: str
    caught_up: bool
    max_at: int | None = None
    taken_at: int | None = None


class Write(NamedTuple):
    """One row for the store; ``table`` names the relation, ``row`` its columns. A named
    tuple (immutable, built in C): a few are made for every event."""

    table: str
    row: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Reconcile:
    """After a restore from a snapshot: make the store hold exactly what shard ``src``
    believes it wrote (``rows``), tombstoning whatever else of ``src`` it holds, except
    the rows of the cases in ``keep`` (evicted: settled, written, and out of memory).

    Output emitted after the snapshot and before a crash is not part of the restored
    belief, and a replay of the same input may deliver it in another interleaving (across
    topics) that never produces, so never withdraws, some transient row; this resets the
    store to the belief so that diffs are exact again. A shard that starts without a
    snapshot while the store already holds rows of an earlier run (a crash before the
    shard's first snapshot, a restart without recovery) does the same with its fresh
    belief: otherwise those rows would never be withdrawn.

    ``version``: the tombstones' version, taken from the shard's clock when the Reconcile
    is emitted (0: when it is applied). The sink may apply it later, on its writer thread,
    after the shard has emitted newer rows; a row it emits again after the Reconcile must
    still outrank the tombstone of its old self."""

    src: str
    rows: list[Write]
    keep: frozenset[str] = frozenset()
    version: int = 0


@dataclass(frozen=True, slots=True)
class WallTick:
    """The wall clock (epoch ms), live: deadlines fire on it while the topics are idle."""

    at: int


@dataclass(frozen=True, slots=True)
class Registrations:
    """The receivers registrations in force (live: polled from the registry)."""

    regs: dict[str, Registration]


@dataclass(frozen=True, slots=True)
class Count:
    """A tally for the replay report (duplicate, afterAsOf), or with a ``stage:`` kind,
    how many items a keyed step has processed: counted by the sink once the rows emitted
    with it are written, so a run knows when every applied event's rows are in the store.
    A ``wm:<src>`` kind carries the watermark shard ``src`` has applied (``n``, epoch ms;
    the sink keeps the latest, not a sum)."""

    kind: str
    n: int = 1


class Chunk(list[Any]):
    """The sink-bound values of one step's batch, carried as one Bytewax item: Bytewax's
    costs are per item and per step (≈ 1 µs each, more when a partitioned sink routes
    them), and an event makes three or four sink-bound values (its log row, its rows,
    counts) that cross two more steps on their way (the merge, the output)."""

    __slots__ = ()


class VersionClock:
    """Row versions that only grow, across restarts too: ``max(last + 1, wall-clock ns)``.

    ReplacingMergeTree keeps the highest version, so a row re-emitted after a crash
    (recomputed from the same facts, so with the same content) simply wins again.
    """

    def __init__(self, now_ns: Callable[[], int] = time.time_ns) -> None:
        self._now_ns = now_ns
        self._last = 0

    def next(self) -> int:
        self._last = max(self._last + 1, self._now_ns())
        return self._last


# ---------------------------------------------------------------------------
# Row shapes (column names are the auditor tables' of contract §6)


def _t(ms: int | None) -> str | None:
    return None if ms is None else ch_time(ms)


def anomaly_row(a: Anomaly, src: str, version: int, deleted: bool = False) -> dict[str, Any]:
    return {
        "anomaly_id": a.anomaly_id, "code": a.code, "class": CLASS_OF_CODE[a.code],
        "case_no": a.case_no, "archive_no": a.archive_no, "receiver_id": a.receiver_id,
        "qym": a.qym, "dept_code": a.dept_code, "system_code": a.system_code,
        "task_code": a.task_code, "opened_at": ch_time(a.opened_at),
        "resolved_at": _t(a.resolved_at), "detail": a.detail, "src": src,
        "version": version, "is_deleted": int(deleted),
    }


def case_row(r: CaseRow, src: str, version: int, deleted: bool = False) -> dict[str, Any]:
    return {
        "case_no": r.case_no, "task_id": r.task_id, "task_code": r.task_code,
        "task_name": r.task_name, "dept_code": r.dept_code, "dept_name": r.dept_name,
        "qym": r.qym, "area": r.area, "system_code": r.system_code,
        "system_name": r.system_name, "system_level": r.system_level,
        "completed_at": ch_time(r.completed_at), "first_received_at": _t(r.first_received_at),
        "archive_count": r.archive_count, "status": r.status, "year": r.year, "src": src,
        "version": version, "is_deleted": int(deleted),
    }


# Each table's row identity: its ReplacingMergeTree ORDER BY (tests/test_store.py checks
# them against the migrated schema). A row whose key moves needs a tombstone under the old
# key (case_state: a moved completion; anomaly: a moved opened_at); the restart reconcile
# and the test harness's model of FINAL match rows by these.
TABLE_KEYS: dict[str, tuple[str, ...]] = {
    "anomaly": ("opened_at", "anomaly_id"),
    "anomaly_count": ("code", "qym", "dept_code", "system_code", "src"),
    "case_state": ("year", "qym", "dept_code", "task_id", "case_no"),
    "kpi_task": ("year", "qym", "dept_code", "system_code", "task_id", "system_level", "src"),
    "event_log": ("entity", "occurred_at", "event_id"),
    "receiver_status": ("receiver_id",),
}


def _case_sort_key(r: CaseRow) -> tuple[Any, ...]:
    # case_state's TABLE_KEYS, from the row object (before building the dict)
    return (r.year, r.qym, r.dept_code, r.task_id, r.case_no)


def feed_row(a: Anomaly, kind: str, version: int) -> dict[str, Any]:
    row = anomaly_row(a, "", version)
    for k in ("src", "version", "is_deleted"):
        del row[k]
    row.update(seq=version, kind=kind, at=ch_time(version // 1_000_000))
    return row


CountKey = tuple[str, str, str, str]  # (code, qym, dept_code, system_code)


class AnomalyCounts:
    """How many anomalies a shard holds, and how many of them open, per (code, qym,
    dept_code, system_code): its partial row of ``anomaly_count`` (0014), absolute like
    its KPI partials, so that writing a row again after a crash changes nothing. The
    anomaly list's total and the summary sum these over shards instead of counting every
    anomaly under FINAL. Counts outlive eviction (they are not per case)."""

    __slots__ = ("n", "dirty", "written")

    def __init__(self) -> None:
        self.n: dict[CountKey, list[int]] = {}  # [total, open]
        self.dirty: set[CountKey] = set()
        self.written: dict[CountKey, tuple[int, int]] = {}

    def add(self, a: Anomaly, sign: int) -> None:
        key = (a.code, a.qym, a.dept_code, a.system_code)
        c = self.n.get(key)
        if c is None:
            c = self.n[key] = [0, 0]
        c[0] += sign
        if a.resolved_at is None:
            c[1] += sign
        self.dirty.add(key)

    def rows(self, src: str, clock: VersionClock) -> list[Write]:
        """The partial rows that changed since the last call (a tombstone for a group
        that has none left)."""
        out = []
        for key in self.dirty:
            c = self.n[key]
            numbers = (c[0], c[1])
            if self.written.get(key) == numbers:
                continue
            deleted = numbers[0] == 0
            if deleted:
                del self.n[key]
                if self.written.pop(key, None) is None:
                    continue  # never written: nothing to withdraw
            else:
                self.written[key] = numbers
            out.append(Write("anomaly_count", {
                "code": key[0], "class": CLASS_OF_CODE[key[0]], "qym": key[1],
                "dept_code": key[2], "system_code": key[3], "src": src,
                "total": numbers[0], "open": numbers[1], "version": clock.next(),
                "is_deleted": int(deleted)}))
        self.dirty.clear()
        return out

    def all_rows(self, src: str, clock: VersionClock) -> list[Write]:
        """Every partial row, as :meth:`Reconcile` needs them."""
        self.written.clear()
        self.dirty = set(self.n)
        return self.rows(src, clock)


def diff_anomalies(
    prev: dict[str, Anomaly], new: dict[str, Anomaly], src: str, clock: VersionClock,
    counts: AnomalyCounts | None = None,
) -> list[Write]:
    """Rows that turn what was stored (``prev``) into ``new``: upserts and withdrawals,
    each with its transition for the live feed (opened, updated, resolved, withdrawn);
    ``counts`` follows the change (its rows are the caller's to emit, once a batch)."""
    out: list[Write] = []
    for aid, a in new.items():
        old = prev.get(aid)
        if old != a:
            if counts is not None:
                if old is not None:
                    counts.add(old, -1)
                counts.add(a, +1)
            if old is not None and old.opened_at != a.opened_at:
                # the table's key is (opened_at, anomaly_id): the old key needs a tombstone
                out.append(Write("anomaly", anomaly_row(old, src, clock.next(), deleted=True)))
            v = clock.next()
            kind = ("opened" if old is None else
                    "resolved" if old.resolved_at is None and a.resolved_at is not None else
                    "updated")
            out.append(Write("anomaly", anomaly_row(a, src, v)))
            out.append(Write("anomaly_feed", feed_row(a, kind, v)))
    for aid, a in prev.items():
        if aid not in new:
            if counts is not None:
                counts.add(a, -1)
            v = clock.next()
            out.append(Write("anomaly", anomaly_row(a, src, v, deleted=True)))
            out.append(Write("anomaly_feed", feed_row(a, "withdrawn", v)))
    return out


class _Snapshottable:
    """Pickles without what belongs to the process (clocks, the store loader): a restored
    shard gets defaults (a fresh version clock, the wall clock, no eviction) and then,
    through :meth:`adopt`, the running process's own. Versions keep growing across a
    restart because they follow the wall clock."""

    _INJECTED = ("clock", "wall_ms", "eviction", "own_time")
    # Attributes that grow with the state and hold plain data (numbers, strings, bytes,
    # and tuples, lists, dicts and sets of them, as :meth:`_plain` gives them): they go
    # into the snapshot as one marshal blob. Pickle keeps a memo entry per object and
    # calls a Python __getstate__ per dataclass: a dict of a million event ids took
    # 434 ms to pickle against marshal's 36, and every shard is snapshotted every epoch.
    _PLAIN: tuple[str, ...] = ()
    # what :meth:`_unplain` sets besides (the change logs behind _PLAIN's values)
    _TRACKING: tuple[str, ...] = ()

    def _plain(self) -> list[Any]:
        """The values of ``_PLAIN``, as marshal takes them (see :meth:`_unplain`)."""
        return [getattr(self, n) for n in self._PLAIN]

    def _unplain(self, values: list[Any]) -> dict[str, Any]:
        """:meth:`_plain` reversed: the attributes to restore."""
        return dict(zip(self._PLAIN, values, strict=True))

    def _untracked(self) -> None:
        """Set ``_TRACKING`` as before a first snapshot (a new shard, or one restored from a
        snapshot without change logs: its next snapshot writes everything)."""

    def __getstate__(self) -> dict[str, Any]:
        skip = (*self._INJECTED, *self._PLAIN, *self._TRACKING)
        state = {k: v for k, v in self.__dict__.items() if k not in skip}
        state["_injected"] = [n for n in self._INJECTED if n in self.__dict__]
        if self._PLAIN:
            state["_plain"] = marshal.dumps(self._plain())
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        from archwatch.timeutil import now_ms

        defaults = {"clock": VersionClock, "wall_ms": lambda: now_ms, "eviction": lambda: None,
                    "retirement": lambda: None, "own_time": lambda: True}
        for name in state.pop("_injected", ()):
            setattr(self, name, defaults[name]())
        plain = state.pop("_plain", None)
        if plain is not None:  # else a snapshot from before _PLAIN: pickled as objects
            state.update(self._unplain(marshal.loads(plain)))
        self.__dict__.update(state)
        if plain is None:
            self._untracked()
        if "counts" not in state and hasattr(self, "anomalies_held"):
            # a snapshot from before anomaly_count (0014): count the anomalies it holds
            # (an evicted case's are not in memory: a replay or a restart without the
            # old recovery state counts those too)
            self.counts = AnomalyCounts()
            for a in self.anomalies_held():
                self.counts.add(a, +1)
            self.counts.dirty.clear()

    def adopt(self, fresh: Any) -> None:
        """After a restore: take this process's clocks and loader from a fresh shard."""
        for name in self._INJECTED:
            if hasattr(fresh, name):
                setattr(self, name, getattr(fresh, name))


# ---------------------------------------------------------------------------
# Snapshots that cost what changed


# A log is rewritten as one blob once its blobs hold this many more entries than the
# state: the blobs' memory and a restore's work stay within a constant of the state's.
# At _LOG_BLOBS blobs (see _log_trigger) of under half _LOG_MERGE_MAX entries, it is
# rewritten whole too while the state is no bigger than _LOG_MERGE_MAX; beyond that,
# adjacent blobs holding at most that many are merged into one (the run of the most
# blobs), so no snapshot writes more; only _LOG_BLOBS_MAX blobs in all (blobs too big to
# merge: a backlog's epochs, or millions of entries) rewrite it whole. (Until session 17
# it was rewritten whole at every 64th snapshot: on an event-id shard of 100,000 ids
# taking 1,500 a snapshot, 131 ms at the 64th and 209 ms at the 128th against a median
# of 1.8 ms, growing with the state, and every shard of a step at the same epoch.)
_LOG_SLACK = 4096
_LOG_BLOBS = 64
_LOG_BLOBS_MAX = 256
_LOG_MERGE_MAX = 16_384
# Each log waits for up to a quarter more blobs than _LOG_BLOBS, a different number for
# each, so that the shards of a step, which take alike, do not all rewrite at one epoch.
_log_offsets = itertools.count()


def _log_trigger() -> int:
    return _LOG_BLOBS + next(_log_offsets) % max(_LOG_BLOBS // 4, 1)


# A log blob's first byte: marshal's bytes as they are; compressed (b"Z": the length,
# then zlib's stream; b"z", written before session 21: zlib's stream alone); or a bundle
# of blobs of the log, in order, each as it was made (see _BlobLog._fold).
_RAW, _Z_SIZED, _Z_PLAIN, _BUNDLE = b"m", b"Z", b"z", b"b"


def _blob(data: Any) -> bytes:
    # compressed: the blobs stay in memory between snapshots (event ids and case numbers
    # repeat their prefixes: ≈ 3x smaller, at ≈ 5 ms a megabyte), except small ones (a
    # compressor's set-up, ≈ 0.1 ms, is most of an idle shard's snapshot); with the GIL
    # held, as this is the dataflow thread (archwatch.zlib_held)
    raw = marshal.dumps(data)
    if len(raw) < 4096:
        return _RAW + raw
    return _Z_SIZED + len(raw).to_bytes(5, "little") + zlib_held.compress(raw)


def _unblob(blob: bytes) -> Any:
    tag = blob[:1]
    if tag == _RAW:
        return marshal.loads(blob[1:])
    if tag == _Z_SIZED:
        return marshal.loads(zlib_held.uncompress(blob[6:], int.from_bytes(blob[1:6], "little")))
    if tag == _BUNDLE:
        parts = [_unblob(b) for b in marshal.loads(blob[1:])]
        return functools.reduce(_dict_merge if isinstance(parts[0], dict) else _list_merge,
                                parts)
    if tag == _Z_PLAIN:
        return marshal.loads(zlib.decompress(blob[1:]))
    raise ValueError(f"not a log blob (a snapshot's file ref, unread?): {blob[:40]!r}")


def _unmerged(sizes: list[int], keep: int) -> int:
    """Blobs after the first ``keep`` small enough to merge (those of half the most a merge
    writes or more stay as they are)."""
    return sum(1 for n in sizes[keep:] if n < _LOG_MERGE_MAX // 2)


def _merge_run(blobs: list[bytes], sizes: list[int], keep: int,
               merge: Callable[[Any, Any], Any]) -> int | None:
    """Merge the run of adjacent blobs after the first ``keep`` that holds at most
    _LOG_MERGE_MAX entries and counts the most blobs (the newest of equal ones) into one;
    the entries this removed (the same key set twice in a dict's blobs is one entry once
    merged), or None when no two adjacent blobs fit."""
    best, lo, total = (0, 0, 0), keep, 0
    for hi in range(keep, len(sizes)):
        total += sizes[hi]
        while total > _LOG_MERGE_MAX:
            total -= sizes[lo]
            lo += 1
        if hi - lo + 1 >= 2 and hi - lo + 1 >= best[1] - best[0]:
            best = (lo, hi + 1, total)
    i, j, total = best
    if j - i < 2:
        return None
    merged = _merged(blobs[i:j], merge)
    blobs[i:j] = [_blob(merged)]
    sizes[i:j] = [len(merged)]
    return total - len(merged)


def _merged(blobs: list[bytes], merge: Callable[[Any, Any], Any]) -> Any:
    """The entries of consecutive blobs of a log as one, later ones over earlier ones."""
    return functools.reduce(merge, map(_unblob, blobs))


def _dict_merge(older: dict[Any, Any], newer: dict[Any, Any]) -> dict[Any, Any]:
    older.update(newer)  # deletions (None) stay: a blob before these may hold the key
    return older


def _list_merge(older: list[Any], newer: list[Any]) -> list[Any]:
    older.extend(newer)
    return older


def _fold_from(blobs: list[bytes], keep: int) -> int | None:
    """With a blob store: where the newest blobs too small to be files begin (after the
    first ``keep``), when there are two or more and they hold its ``min_bytes`` together
    (see _BlobLog._fold); else None."""
    store = current_blob_store()
    if store is None:
        return None
    i, total = len(blobs), 0
    while i > keep and len(blobs[i - 1]) < store.min_bytes:
        i -= 1
        total += len(blobs[i])
    return i if len(blobs) - i >= 2 and total >= store.min_bytes else None


class _BlobLog:
    """What :class:`ChangeLog` and :class:`QueueLog` share: their blobs, each blob's
    entries, when they merge (see _LOG_BLOBS), and which of them a snapshot names as files
    (``files``: with a blob store configured, live with recovery; see archwatch.blobstore).

    ``bundles``: whether a fold bundles its blobs as they are (a log whose keys are set
    once: the event ids, a queue) or merges their entries (a key set again in each of
    them, as a case touched every second is staged every second, is then written once);
    see :meth:`_fold`."""

    __slots__ = ("blobs", "sizes", "trigger", "files", "staged", "bundles")

    def __init__(self, blobs: list[bytes] | None, bundles: bool) -> None:
        self.bundles = bundles
        self.files = LogFiles()
        self.blobs: list[bytes] = self.files.restored(blobs) if blobs else []
        # entries of each blob; None: restored from a snapshot, counted when first needed
        self.sizes: list[int] | None = None if self.blobs else []
        self.trigger = _log_trigger()
        self.staged = False  # blobs appended by stage() since the last snapshot

    def _append(self, entries: Any) -> None:
        self._sizes().append(len(entries))
        self.blobs.append(_blob(entries))

    def _stage(self, entries: Any, keep: int, merge: Callable[[Any, Any], Any]) -> int:
        """What ChangeLog.stage and QueueLog.stage do once they take the changes: a blob
        of them now, folded with the newest small ones; returns the entries the fold took
        away."""
        self._append(entries)
        self.staged = True
        return self._fold(keep, merge)

    def _sizes(self) -> list[int]:
        if self.sizes is None:
            self.sizes = [len(_unblob(b)) for b in self.blobs]
        return self.sizes

    def _fold(self, keep: int, merge: Callable[[Any, Any], Any]) -> int:
        """With a blob store: the newest blobs too small to be files (after the first
        ``keep``) become one once they hold the store's ``min_bytes`` together, which is
        then written as a file. What stays inside the snapshot is so at most about that
        much a log, and a file is written per ``min_bytes`` of changes, not per epoch (a
        file costs 1–2 ms of the dataflow thread in `archwatch up`: one per log and epoch
        was ≈ 230 an epoch's close at 10,000 events/s). Returns the entries the merge
        took away.

        With ``bundles`` the one blob is a bundle of them as they are (_BUNDLE): none is
        uncompressed and compressed again, which was ≈ 1 s of the dataflow thread's CPU a
        30 s run at 10,000 events/s, mostly the event-id shards' many small blobs
        (session 21). Not for a log whose keys come again: bundled, the case shards'
        logs wrote 2.3x the bytes into files over 420 s (each case once a second it was
        touched, not once a fold)."""
        i = _fold_from(self.blobs, keep)
        if i is None:
            return 0
        blobs, sizes = self.blobs, self._sizes()
        if self.bundles:
            blobs[i:], sizes[i:] = [_BUNDLE + marshal.dumps(blobs[i:])], [sum(sizes[i:])]
            return 0
        merged = _merged(blobs[i:], merge)
        before = sum(sizes[i:])
        blobs[i:], sizes[i:] = [_blob(merged)], [len(merged)]
        return before - len(merged)

    def _compact(self, keep: int, live: int, merge: Callable[[Any, Any], Any]) -> int | None:
        """After a blob was appended: None when the log is to be rewritten whole (a small
        state once the trigger is reached, or _LOG_BLOBS_MAX blobs), else the entries a
        merge took away (0 without one)."""
        sizes = self._sizes()
        gone = 0
        if _unmerged(sizes, keep) >= self.trigger:
            if live <= _LOG_MERGE_MAX:  # all of it is no more than a merge
                return None
            gone = _merge_run(self.blobs, sizes, keep, merge) or 0
        # blobs too big to merge (a backlog's epochs), or too many to: all in one
        return None if len(self.blobs) >= _LOG_BLOBS_MAX else gone


class ChangeLog(_BlobLog):
    """A dict's recovery snapshots as blobs of its changes: the first blob holds it all,
    each later one the entries set (or deleted: None) since the one before, so a snapshot
    costs what changed since the last, not what is held (a shard's dict of a day's event
    ids was marshalled whole at every epoch). Values are plain data, never None."""

    __slots__ = ("entries",)

    def __init__(self, blobs: list[bytes] | None = None, entries: int = 0,
                 bundles: bool = False) -> None:
        super().__init__(blobs, bundles)
        self.entries = entries  # entries written in the blobs

    def snapshot(self, live: int, changes: Callable[[], dict[Any, Any]] | None,
                 everything: Callable[[], dict[Any, Any]]) -> tuple[list[bytes], int]:
        """The blobs standing for the dict now (``live`` entries), given its changes since
        the last call (None: not known, everything is written)."""
        delta = None if changes is None else changes()
        whole = delta is None or self._whole(live, len(delta))
        if not whole and (delta or self.staged):
            if delta:
                self._append(delta)
                self.entries += len(delta)
            gone = self._compact(1, live, _dict_merge)
            whole = gone is None
            self.entries -= gone or 0
            if not whole:
                self.entries -= self._fold(1, _dict_merge)
        if whole:
            self.blobs, self.entries, self.sizes = [_blob(everything())], live, [live]
        self.staged = False
        return self.files.outgoing(self.blobs), self.entries

    def stage(self, live: int, delta: dict[Any, Any]) -> bool:
        """Between snapshots (live, with recovery): the changes since the last snapshot or
        stage as a blob now, so that the next snapshot, taken while an epoch closes and
        the dataflow waits, has only the rest to marshal and compress (see
        _ShardLogic._spread_packing). False, taking nothing, when the next snapshot is to
        write the dict whole anyway (a new log, or one that would hold too much); the
        caller then keeps the changes for it."""
        if not delta or self._whole(live, len(delta)):
            return False
        self.entries += len(delta) - self._stage(delta, 1, _dict_merge)
        return True

    def _whole(self, live: int, changed: int) -> bool:
        """Whether ``changed`` more entries make the dict's next snapshot write it whole:
        a new log, changes as many as the state, or blobs that would hold more than twice
        it (plus _LOG_SLACK)."""
        return (not self.blobs or changed >= live
                or self.entries + changed > 2 * live + _LOG_SLACK)

    @staticmethod
    def replay(blobs: list[bytes]) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        for blob in blobs:
            for k, v in _unblob(blob).items():
                if v is None:
                    out.pop(k, None)
                else:
                    out[k] = v
        return out


class QueueLog(_BlobLog):
    """A FIFO's recovery snapshots (see :class:`ChangeLog`): blobs of the entries appended,
    and how many of the first of them have left since. Blobs whose entries have all left
    are dropped; the newest are merged as a ChangeLog's are."""

    __slots__ = ("dropped",)

    def __init__(self, blobs: list[bytes] | None = None, dropped: int = 0) -> None:
        super().__init__(blobs, bundles=True)  # entries are appended once
        self.dropped = dropped

    def snapshot(self, q: deque[Any], appended: list[Any] | None,
                 popped: int) -> tuple[list[bytes], int]:
        whole = (appended is None or len(appended) >= len(q)
                 or self.dropped + popped > len(q) + _LOG_SLACK)
        if not whole:
            sizes = self._sizes()
            self.dropped += popped
            while sizes and self.dropped >= sizes[0]:  # every entry of the oldest has left
                self.dropped -= sizes.pop(0)
                del self.blobs[0]
            if appended or self.staged:
                if appended:
                    self._append(appended)
                whole = self._compact(0, len(q), _list_merge) is None
                if not whole:
                    self._fold(0, _list_merge)
        if whole:
            self.blobs, self.dropped, self.sizes = [_blob(list(q))], 0, [len(q)]
        self.staged = False
        return self.files.outgoing(self.blobs), self.dropped

    def stage(self, appended: list[Any]) -> bool:
        """Between snapshots: the entries appended since the last snapshot or stage as a
        blob now (see ChangeLog.stage); the next snapshot takes the rest and the count
        popped. (Only once the queue's changes are tracked, after its first snapshot: the
        caller knows.)"""
        if not appended:
            return False
        self._stage(appended, 0, _list_merge)
        return True

    @staticmethod
    def replay(blobs: list[bytes], dropped: int) -> deque[Any]:
        q: deque[Any] = deque()
        for blob in blobs:
            q.extend(_unblob(blob))
        for _ in range(dropped):
            q.popleft()
        return q


# ---------------------------------------------------------------------------
# Event-id shard: redelivery vs producer fault


DigestLookup = Callable[[list[str]], dict[str, bytes]]


@dataclass(frozen=True, slots=True)
class Retirement:
    """When an applied event's id leaves the dedup dict for the :class:`IdFilter`: after
    ``after_ms`` of event time *and* ``min_wall_ms`` of wall time (so its event-log row is
    surely written); ``lookup`` reads the digests of stored events by id."""

    lookup: DigestLookup
    after_ms: int = 86_400_000
    min_wall_ms: int = 60_000


class DedupShard(_Snapshottable):
    """Remembers a digest per eventId: same payload → redelivery, other payload → reject.

    With a :class:`Retirement`, ids of applied events old enough leave the dict for a
    Bloom filter; an id the filter may hold is looked up in the event log, so the answer
    is exactly the one of a dedup that never forgets, in bounded memory."""

    _INJECTED = ("wall_ms", "retirement")
    _PLAIN = ("seen", "queue")
    _TRACKING = ("_seen_log", "_queue_log", "_new", "_gone", "_queued", "_popped")

    def _plain(self) -> list[Any]:
        """The ids and the retirement queue as logs of their changes (see ChangeLog): a
        shard holds every id of the last day, and is snapshotted at every epoch."""
        new, gone, self._new, self._gone = self._new, self._gone, [], []
        queued, popped, self._queued, self._popped = self._queued, self._popped, [], 0
        seen = self.seen
        changes = None if new is None or gone is None else (
            lambda: self._seen_changes(new, gone))
        return [self._seen_log.snapshot(len(seen), changes, lambda: seen),
                self._queue_log.snapshot(self.queue, queued, popped)]

    def precool(self) -> int:
        """Between snapshots (live, with recovery): the ids and queue entries added so far
        as blobs of their logs now (ChangeLog.stage), so that an epoch's close marshals
        and compresses only the rest (at 10,000 events/s and 5 s epochs, 50,000 ids a
        close: 70–480 ms of it, growing with the logs' folds). Nothing before the first
        snapshot. Returns the ids staged."""
        new, gone = self._new, self._gone
        if new is None or gone is None or not (new or gone):
            staged = 0
        else:
            delta = self._seen_changes(new, gone)
            staged = len(delta) if self._seen_log.stage(len(self.seen), delta) else 0
            if staged:
                self._new, self._gone = [], []
        if self._queued and self._queue_log.stage(self._queued):
            self._queued = []
        return staged

    def _seen_changes(self, new: list[str], gone: list[str]) -> dict[str, bytes | None]:
        """The ids added and retired since the last snapshot or stage, as the log holds
        them (a retired id: None)."""
        seen = self.seen
        return {i: seen.get(i) for i in itertools.chain(gone, new)}

    def _unplain(self, values: list[Any]) -> dict[str, Any]:
        (seen_blobs, entries), (queue_blobs, dropped) = values
        seen_log = ChangeLog(seen_blobs, entries, bundles=True)  # an id is set once
        queue_log = QueueLog(queue_blobs, dropped)
        return {"seen": ChangeLog.replay(seen_log.blobs), "_seen_log": seen_log,
                "queue": QueueLog.replay(queue_log.blobs, dropped), "_queue_log": queue_log,
                "_new": [], "_gone": [], "_queued": [], "_popped": 0}

    def _untracked(self) -> None:
        # changes are tracked from the first snapshot on (None: not yet; the first writes
        # everything): without recovery there is none, and the lists would only grow
        self._seen_log, self._queue_log = ChangeLog(bundles=True), QueueLog()
        self._new: list[str] | None = None
        self._gone: list[str] | None = None
        self._queued: list[tuple[int, int, str]] | None = None
        self._popped = 0

    def __init__(self, retirement: Retirement | None = None,
                 wall_ms: Callable[[], int] | None = None) -> None:
        from archwatch.idfilter import IdFilter
        from archwatch.timeutil import now_ms

        self.seen: dict[str, bytes] = {}
        self.retirement = retirement
        self.wall_ms = wall_ms or now_ms
        self.retired = IdFilter()
        self.queue: deque[tuple[int, int, str]] = deque()  # (occurredAt, wall, id) logged
        self.max_at = MIN_TIME
        self.lookups = 0
        self._untracked()

    def classify(self, env: Envelope) -> str:
        return self.classify_batch([env])[0]

    def classify_batch(self, envs: list[Envelope]) -> list[str]:
        """"new", "duplicate" or "reused" for each event, in order."""
        seen = self.seen
        stored: dict[str, bytes] = {}
        if self.retirement is not None and len(self.retired):
            maybe = {e.event.eventId for e in envs
                     if e.event.eventId not in seen and e.event.eventId in self.retired}
            if maybe:
                self.lookups += 1
                stored = self.retirement.lookup(sorted(maybe))
        out = []
        new = self._new
        for env in envs:
            eid = env.event.eventId
            digest = seen.get(eid)
            if digest is None:
                digest = stored.get(eid)
            if digest is None:
                seen[eid] = env.digest
                out.append("new")
                if new is not None:
                    new.append(eid)
            else:
                out.append("duplicate" if digest == env.digest else "reused")
        return out

    def logged(self, env: Envelope) -> None:
        """``env`` was applied (its event-log row is on its way): its id may retire."""
        if self.retirement is not None:
            at = env.event.occurredAt
            self.max_at = max(self.max_at, at)
            entry = (at, self.wall_ms(), env.event.eventId)
            self.queue.append(entry)
            if self._queued is not None:
                self._queued.append(entry)

    def retire_due(self) -> None:
        r = self.retirement
        if r is None:
            return
        q, now, horizon = self.queue, self.wall_ms(), self.max_at - r.after_ms
        gone = self._gone
        while q and q[0][0] <= horizon and q[0][1] <= now - r.min_wall_ms:
            _at, _wall, eid = q.popleft()
            self._popped += 1
            if self.seen.pop(eid, None) is not None:
                self.retired.add(eid)
                if gone is not None:
                    gone.append(eid)


# ---------------------------------------------------------------------------
# Case shard


class CaseState:
    """One case: its facts and what was last written for it. Compact on purpose (a city
    has millions of open cases): no anomalies dict while there are none, and the row
    and KPI part as written are kept as their :data:`~archwatch.rules.Summary` (split into
    the completion and the shared rest), not as objects: they are rebuilt only to be
    withdrawn or subtracted."""

    __slots__ = ("facts", "anomalies", "written", "c_of", "next_deadline", "settled")

    def __init__(self, facts: CaseFacts, anomalies: dict[str, Anomaly] | None = None,
                 summary: Summary | None = None, next_deadline: int | None = None) -> None:
        self.facts = facts
        self.anomalies = anomalies or None  # as last written
        # the completion of the last evaluation: its attributes are what the row and KPI
        # part were written with and what the archive stage last got
        self.c_of: Completion | None = facts.completion
        self.written = _rest(summary)  # the rest of the summary as last written
        self.next_deadline = next_deadline
        self.settled: tuple[int, int] | None = None  # (watermark, wall ms) when it settled

    def __getstate__(self) -> tuple[Any, ...]:
        return tuple(getattr(self, n) for n in self.__slots__)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        for n, v in zip(self.__slots__, state, strict=True):
            setattr(self, n, v)
        self.written = _rest(None if self.written is None else (None, *self.written))

    @property
    def summary(self) -> Summary | None:
        return None if self.written is None else (self.c_of, *self.written)  # type: ignore[return-value]

    @property
    def row(self) -> CaseRow | None:
        return row_of(self.facts.case_no, self.summary)

    @property
    def kpi(self) -> KpiPart | None:
        return kpi_of(self.summary)


_RESTS: dict[tuple[Any, ...], tuple[Any, ...]] = {}


def _rest(summary: Summary | tuple[Any, ...] | None) -> tuple[Any, ...] | None:
    """A summary without its completion; the ones of cases without a receipt (most open
    cases: PENDING or MISSING, no archive) are a handful of values, shared by all."""
    if summary is None:
        return None
    rest = summary[1:]
    if rest[0] is None:
        rest = _RESTS.setdefault(rest, rest)
    return rest


def _row_ident(c: Completion | None, rest: tuple[Any, ...] | None) -> tuple[Any, ...] | None:
    """What :func:`~archwatch.rules.row_of` reads of a summary (completion and rest): two
    rows are equal iff these are (the row holds the item's ten strings, the completion
    time, the first receipt, the archive count, the status and the year of the
    completion time)."""
    if rest is None or c is None:
        return None
    return (c.item, c.completed_at, rest[0], rest[1], rest[2])


def _kpi_ident(c: Completion | None, rest: tuple[Any, ...] | None) -> tuple[Any, ...] | None:
    """What :func:`~archwatch.rules.kpi_of` reads of a summary: equal idents give equal
    KPI parts (the item and the completion time make the group, names and cycle; then
    first receipt, archived, succ, fail)."""
    if rest is None or c is None:
        return None
    return (c.item, c.completed_at, rest[0], rest[3], rest[4], rest[5])


_NO_ANOMALIES: dict[str, Anomaly] = {}  # read only: what a case without anomalies diffs from


Loader = Callable[[list[str]], dict[str, list[Any]]]
"""Reads back the events of evicted cases (the store's event log), by case number."""


@dataclass(frozen=True)
class Eviction:
    """When a settled case (no deadline pending) leaves memory: after ``after_ms`` of event
    time *and* ``min_wall_ms`` of wall time, so its events are surely in the store."""

    loader: Loader
    after_ms: int = 86_400_000
    min_wall_ms: int = 60_000


# A case shard in a recovery snapshot: its cases, deadline heap and KPI accumulators as
# plain tuples, lists and dicts of strings and numbers, encoded with marshal (the item
# and display-name tuples many cases share go once, in a table, and are shared again
# when restored). Pickling the objects themselves cost ~33 µs an open
# case (a memo entry and a Python __getstate__ per object): with recovery on, an epoch
# that touched every shard of a million open cases took 33 s of CPU.
#
# Form 2 (_PACKED_CASES) goes further: each case is kept packed *in memory* (one bytes
# object, see CaseShard.cool) from the snapshot after its last change until an event or a
# deadline touches it again. A snapshot then packs only the cases changed since the one
# before and copies the others' bytes, and an idle open case (most of them: they wait
# weeks for their archive deadline) takes a third of the memory of its objects.
# Form 3 (_CASES_LOG) writes only those: the packed cases go as a ChangeLog (the blobs of
# the snapshots before, and one of the cases packed or evicted since), and the deadline
# heap not at all (a restore rebuilds it from the cases' next deadlines: the entries
# that are not stale). Both were marshalled whole at every epoch, ≈ 0.5 µs a case.
# Form 4 (_CASES_KPI_LOG) writes the KPI accumulators as a ChangeLog too (keyed by their
# group key's number in the shared-tuple table), so that, with a blob store (live with
# recovery: archwatch.blobstore), they and the table's chunks go to files once like the
# cases' blobs: items times shards, they were two thirds of what an epoch's snapshots
# wrote (bench/snapshot_bytes.py). Forms 3, 2, 1 (_PACKED: every case packed at each
# snapshot) and pickled objects still restore.
_PACKED = "shard-marshal-1"
_PACKED_CASES = "shard-marshal-2"
_CASES_LOG = "shard-marshal-3"
_CASES_KPI_LOG = "shard-marshal-4"
_ANOMALY_FIELDS = tuple(f.name for f in dataclass_fields(Anomaly))
# KpiAcc's fields, in the order pack_shard writes them
assert tuple(f.name for f in dataclass_fields(KpiAcc)) == (
    "kpi", "archived", "succ", "fail", "cycle_ms_sum", "receipts", "_max", "names", "written")

CaseRowPacked = tuple[Any, ...]
"""One case's state without its number, as :func:`case_row_packed` builds it."""


def _pack_steps(steps: dict[str, list[Step]] | None) -> dict[str, list[tuple[Any, ...]]] | None:
    return None if steps is None else {
        k: [(x.event_id, x.at, x.key, x.value) for x in v] for k, v in steps.items()}


def _unpack_steps(steps: dict[str, list[tuple[Any, ...]]] | None) -> dict[str, list[Step]] | None:
    return None if steps is None else {k: [Step(*x) for x in v] for k, v in steps.items()}


def case_row_packed(st: CaseState, ref: Callable[[tuple[str, ...]], int]) -> CaseRowPacked:
    """A case's state as plain data; ``ref`` numbers the shared item tuples."""
    f = st.facts
    fc = f.completion
    c_of = st.c_of
    return (
        None if fc is None else (fc.event_id, fc.at, fc.completed_at, ref(fc.item)),
        f.pushes,
        [(r.event_id, r.at, r.archive_no, r.package_sha, r.meta) for r in f.receipts]
        if f.receipts else None,
        _pack_steps(f.checks), _pack_steps(f.backups), _pack_steps(f.dists),
        {k: tuple(getattr(a, n) for n in _ANOMALY_FIELDS) for k, a in st.anomalies.items()}
        if st.anomalies else None,
        st.written,
        0 if c_of is fc else None if c_of is None
        else (c_of.event_id, c_of.at, c_of.completed_at, ref(c_of.item)),
        st.next_deadline, st.settled)


def packed_deadline_settled(blob: bytes) -> tuple[int | None, Any]:
    """A packed case's next deadline and settled mark (its row's last two fields), read
    without building its objects (a stale heap entry, an eviction check)."""
    row = marshal.loads(blob)
    return row[-2], row[-1]


def case_state_unpacked(case_no: str, row: CaseRowPacked,
                        items: list[tuple[str, ...]]) -> CaseState:
    """:func:`case_row_packed` reversed; ``items`` are the tuples its numbers name."""
    (fc, pushes, receipts, checks, backups, dists, anomalies, written, c_of,
     next_deadline, settled) = row

    def comp(t: tuple[Any, ...] | None) -> Completion | None:
        if t is None:
            return None
        c = Completion.__new__(Completion)
        c.__setstate__((t[0], t[1], t[2], items[t[3]]))  # shares the item tuple again
        return c

    f = CaseFacts(case_no)
    f.completion = comp(fc)
    f.pushes = pushes
    f.receipts = [Receipt(*r) for r in receipts] if receipts else ()
    f.checks, f.backups, f.dists = (_unpack_steps(checks), _unpack_steps(backups),
                                    _unpack_steps(dists))
    st = CaseState.__new__(CaseState)
    st.__setstate__((
        f, {k: Anomaly(*a) for k, a in anomalies.items()} if anomalies else None,
        written, f.completion if c_of == 0 else comp(c_of), next_deadline, settled))
    return st


_FOLDED = b"+"  # a table chunk made of several (_Refs._fold); a plain one is zlib's


def _chunk_parts(chunk: bytes) -> list[bytes]:
    """A shared-tuple table chunk's marshalled lists of tuples, in order."""
    if chunk[:1] == _FOLDED:
        return marshal.loads(zlib.decompress(chunk[1:]))  # type: ignore[no-any-return]
    return [zlib.decompress(chunk)]


class _Refs:
    """Numbers for shared tuples (items, display names, KPI group keys), in a list that
    only grows: a catalogue has thousands of items, a shard millions of cases pointing at
    them.

    A tuple's place is found through its process-wide number (``rules.SHARED_NO``) in
    ``local``, an array of 4 bytes per shared tuple of the process (bounded by the
    catalogue). Session 12 built an index of the whole table at every snapshot (≈ 0.25 ms
    a shard at 3,400 tuples, the one snapshot cost that followed what is held); an index
    kept by identity would cost ≈ 100 bytes a tuple. A tuple outside the registry (none
    is expected) is numbered through such an index, built for that packing pass only."""

    def __init__(self, items: list[Any] | None = None) -> None:
        self.items: list[Any] = items or []
        # the table packed so far, in chunks (marshal takes ≈ 1.5 µs a tuple of strings,
        # and a shard of a city's cases numbers tens of thousands)
        self.blobs: list[bytes] = []
        self.done = 0
        # process-wide number -> place in items + 1 (0: not in it); None: to be built
        # from items (a restore may replace its tuples by the shared ones)
        self.local: array[int] | None = None
        self.files = LogFiles()  # the chunks a snapshot names as files

    def _local(self) -> array[int]:
        if self.local is None:
            self.local = array("i")
            for i, t in enumerate(self.items):
                g = SHARED_NO.get(id(t))
                if g is not None:
                    self._place(g, i)
        return self.local

    def _place(self, g: int, i: int) -> None:
        local = self.local
        assert local is not None
        if g >= len(local):
            local.frombytes(bytes(local.itemsize * (g + 1 - len(local))))
        if not local[g]:
            local[g] = i + 1

    def numberer(self) -> Callable[[Any], int]:
        """A function giving a tuple's number, adding it when new (valid while the tuples
        it was given are alive: the list holds them)."""
        items = self.items
        local = self._local()
        index: dict[int, int] | None = None  # for a tuple outside the registry

        def ref(t: Any) -> int:
            nonlocal index
            g = SHARED_NO.get(id(t))
            if g is not None:
                if g < len(local) and local[g]:
                    return local[g] - 1
                i = len(items)
                items.append(t)
                self._place(g, i)
                return i
            if index is None:
                index = {id(x): j for j, x in enumerate(items)}
            i = index.get(id(t))  # type: ignore[assignment]
            if i is None:
                i = index[id(t)] = len(items)
                items.append(t)
            return i

        return ref

    def packed(self) -> list[bytes]:
        """The table for a snapshot: only the tuples numbered since the last one are
        packed (plain tuples: a KpiKey is a NamedTuple)."""
        if self.done < len(self.items):
            if len(self.blobs) >= 64:  # a long run: one chunk again, not thousands
                self.blobs, self.done = [], 0
            # compressed (≈ 2.5x, once a chunk): kept for the life of the shard, and item,
            # name and key tuples repeat each other's strings
            self.blobs.append(zlib_held.compress(
                marshal.dumps([tuple(t) for t in self.items[self.done:]])))
            self.done = len(self.items)
            self._fold()
        return self.blobs

    def _fold(self) -> None:
        """With a blob store, the newest chunks too small to be files become one once
        they hold its ``min_bytes`` together (as a log's blobs do: _BlobLog._fold)."""
        blobs = self.blobs
        i = _fold_from(blobs, 0)
        if i is not None:  # (their tuples not read: marshal takes ≈ 1.5 µs a tuple)
            blobs[i:] = [_FOLDED + zlib_held.compress(marshal.dumps(
                [raw for b in blobs[i:] for raw in _chunk_parts(b)]))]

    def outgoing(self) -> list[bytes]:
        """:meth:`packed` as a snapshot holds it (chunks as files, with a blob store)."""
        return self.files.outgoing(self.packed())

    @classmethod
    def unpacked(cls, blobs: list[bytes]) -> _Refs:
        """:meth:`packed` (or :meth:`outgoing`) reversed; item tuples become the ones new
        events of the same items share (rules._shared_item)."""
        files = LogFiles()
        blobs = files.restored(blobs)
        refs = cls([_shared_item(t) if all(type(x) is str for x in t) else t
                    for blob in blobs for raw in _chunk_parts(blob)
                    for t in marshal.loads(raw)])
        refs.blobs, refs.done, refs.files = blobs, len(refs.items), files
        return refs


def pack_shard(cases: dict[str, CaseState], heap: list[tuple[int, str]],
               kpi: dict[KpiKey, KpiAcc]) -> tuple[str, bytes]:
    """A case shard's bulk state in form 1 (every case packed); :func:`unpack_shard`
    reverses it. Kept to compare contents in tests and to read old snapshots."""
    refs = _Refs()
    ref = refs.numberer()
    rows = [(case_no, *case_row_packed(st, ref)) for case_no, st in cases.items()]
    accs = [(tuple(k), a.kpi, a.archived, a.succ, a.fail, a.cycle_ms_sum, a.receipts, a._max,
             ref(a.names), a.written) for k, a in kpi.items()]
    return (_PACKED, marshal.dumps((refs.items, rows, heap, accs)))


def _unpack_accs(accs: list[tuple[Any, ...]], shared: list[tuple[str, ...]]
                 ) -> dict[KpiKey, KpiAcc]:
    return {shared_key(KpiKey(*k)): KpiAcc(n, ar, su, fa, cy, rc, mx, shared[nm], wr)
            for k, n, ar, su, fa, cy, rc, mx, nm, wr in accs}


def acc_packed(key: KpiKey, a: KpiAcc, ref: Callable[[Any], int]) -> bytes:
    """One KPI accumulator, packed (see CaseShard.cool): its key and display names are
    numbers in the shard's table of shared tuples (a group's key and names are ≈ 200
    bytes of text, the numbers ≈ 40)."""
    w = a.written
    return marshal.dumps((ref(key), a.kpi, a.archived, a.succ, a.fail, a.cycle_ms_sum,
                          a.receipts, a._max, ref(a.names),
                          None if w is None else (*w[:6], ref(w[6]))))


def acc_unpacked(blob: bytes, shared: list[Any]) -> KpiAcc:
    _k, n, ar, su, fa, cy, rc, mx, nm, w = marshal.loads(blob)
    return KpiAcc(n, ar, su, fa, cy, rc, mx, shared[nm],
                  None if w is None else (*w[:6], shared[w[6]]))


def unpack_shard(blob: bytes) -> tuple[dict[str, CaseState], list[tuple[int, str]],
                                        dict[KpiKey, KpiAcc]]:
    shared, rows, heap, accs = marshal.loads(blob)
    cases = {row[0]: case_state_unpacked(row[0], row[1:], shared) for row in rows}
    return cases, [tuple(x) for x in heap], _unpack_accs(accs, shared)


class _Deadlines:
    """The watermark of a shard whose deadlines fire on it (cases, receivers)."""

    own_time: bool = True  # a shard restored from a snapshot older than the flag
    max_seen: int
    external_wm: int
    sla: Sla

    @property
    def watermark(self) -> int:
        """The later of the shard's own event time (less the lateness) and the clock
        step's watermark; only the clock's when the source marks its partitions'
        progress (live on Kafka): the clock holds the watermark while a partition has a
        backlog, and this shard's own event time, which runs ahead on the topics read
        fastest, would fire deadlines whose preventing events are still unread in
        another topic (a false alert opened, then withdrawn)."""
        if self.own_time:
            return max(self.max_seen - self.sla.lateness, self.external_wm)
        return self.external_wm


class CaseShard(_Deadlines, _Snapshottable):
    """All cases of one shard: facts, emitted results, deadline heap, KPI partials.

    With an :class:`Eviction`, settled cases leave memory (only their number stays, in
    ``evicted``); an event that arrives for one later reloads its events from the store
    first, so it is reconciled exactly as if the case had never left (contract §3).

    A case is held as objects (:class:`CaseState`) while it changes, and packed (bytes)
    from the next recovery snapshot on, until something touches it again (see
    :meth:`cool`): ``cases`` maps a case number to either; use :meth:`state` or
    :meth:`states` to read one."""

    def __init__(self, shards: int, sla: Sla, clock: VersionClock, wall_ms: Callable[[], int],
                 eviction: Eviction | None = None, own_time: bool = True):
        self.eviction = eviction
        # False: the watermark is only the clock step's (see watermark)
        self.own_time = own_time
        self.evicted: set[str] = set()
        self.settled: deque[tuple[int, int, str]] = deque()
        self._untracked()
        self.evictions = self.reloads = 0
        self.shards = shards
        self.src = ""  # "c<shard>", learnt from the first case (Bytewax builders get no key)
        self.sla = sla
        self.clock = clock
        self.wall_ms = wall_ms
        self.cases: dict[str, CaseState | bytes] = {}
        self._cases_log = ChangeLog()  # their snapshots (see _CASES_LOG)
        self.refs = _Refs()  # the shared tuples packed cases name by number
        # what was unpacked or added since the last cool() (None: not tracked, see there)
        self.hot: set[str] | None = None
        self.hot_kpi: set[KpiKey] | None = None
        # cases packed by precool() since the last snapshot: its change log takes them too
        # (a set: an idle shard's snapshot is reused while deadlines peek at cases)
        self._cooled: set[str] = set()
        self.heap: list[tuple[int, str]] = []
        self.kpi: dict[KpiKey, KpiAcc | bytes] = {}  # packed like cases: see cool()
        self._kpi_log = ChangeLog()  # their snapshots (see _CASES_KPI_LOG)
        # accumulators packed (or deleted: None) since the last snapshot, by key number
        self._kpi_changes: dict[int, bytes | None] = {}
        self.counts = AnomalyCounts()
        self.max_seen = MIN_TIME
        self.external_wm = MIN_TIME

    # (``cases`` is packed on its own, below.) The numbers of every case evicted so far,
    # and the settled cases waiting for eviction, as logs of their changes (ChangeLog):
    # the first only grows in a long run.
    _PLAIN = ("evicted", "settled")
    _TRACKING = ("_evicted_log", "_settled_log", "_evicted_changed", "_settled_in",
                 "_settled_out")

    def _plain(self) -> list[Any]:
        changed, self._evicted_changed = self._evicted_changed, []
        settled_in, out, self._settled_in, self._settled_out = (
            self._settled_in, self._settled_out, [], 0)
        evicted = self.evicted
        changes = None if changed is None else (
            lambda: {c: True if c in evicted else None for c in changed})
        return [self._evicted_log.snapshot(len(evicted), changes,
                                           lambda: dict.fromkeys(evicted, True)),
                self._settled_log.snapshot(self.settled, settled_in, out)]

    def _unplain(self, values: list[Any]) -> dict[str, Any]:
        (ev_blobs, entries), (settled_blobs, dropped) = values
        ev_log, settled_log = ChangeLog(ev_blobs, entries), QueueLog(settled_blobs, dropped)
        return {"evicted": set(ChangeLog.replay(ev_log.blobs)), "_evicted_log": ev_log,
                "settled": QueueLog.replay(settled_log.blobs, dropped),
                "_settled_log": settled_log,
                "_evicted_changed": [], "_settled_in": [], "_settled_out": 0}

    def _untracked(self) -> None:
        # changes tracked from the first snapshot on (never without recovery)
        self._evicted_log, self._settled_log = ChangeLog(), QueueLog()
        self._evicted_changed: list[str] | None = None
        self._settled_in: list[tuple[int, int, str]] | None = None
        self._settled_out = 0

    def __getstate__(self) -> dict[str, Any]:
        """Form 4: the cases and KPI accumulators changed since the last snapshot are packed
        (and stay packed: see :meth:`cool`); the cases' log gets those and the evicted, the
        accumulators' log those."""
        tracked = self.hot is not None and self._evicted_changed is not None
        kpi_tracked = self.hot_kpi is not None
        packed = self.cool()
        if self._cooled:
            packed, self._cooled = [*self._cooled, *packed], set()
        gone = self._evicted_changed or ()  # evicted or reloaded since the last
        state = super().__getstate__()
        cases = self.cases
        changes = None if not tracked else (
            lambda: {c: cases.get(c) for c in itertools.chain(packed, gone)})
        blobs, entries = self._cases_log.snapshot(len(cases), changes, lambda: cases)
        kpi, kpi_changes, self._kpi_changes = self.kpi, self._kpi_changes, {}
        number = self.refs.numberer()
        kpi_blobs, kpi_entries = self._kpi_log.snapshot(
            len(kpi), (lambda: kpi_changes) if kpi_tracked else None,
            lambda: {number(k): a for k, a in kpi.items()})  # (every one packed: cool())
        state["cases"] = (_CASES_KPI_LOG, marshal.dumps(
            (self.refs.outgoing(), kpi_blobs, kpi_entries)), blobs, entries)
        for name in ("heap", "kpi", "refs", "hot", "hot_kpi", "_cases_log", "_cooled",
                     "_kpi_log", "_kpi_changes"):
            del state[name]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        packed = state.get("cases")
        log, kpi_log = ChangeLog(), ChangeLog()
        form = packed[0] if type(packed) is tuple else None
        if form in (_CASES_LOG, _CASES_KPI_LOG):
            if form == _CASES_KPI_LOG:
                table, kpi_blobs, kpi_entries = marshal.loads(packed[1])
                kpi_log = ChangeLog(kpi_blobs, kpi_entries)
                accs = list(ChangeLog.replay(kpi_log.blobs).values())
            else:
                table, accs = marshal.loads(packed[1])
            log = ChangeLog(packed[2], packed[3])
            cases = ChangeLog.replay(log.blobs)
            heap = [(nd, c) for c, blob in cases.items()
                    if (nd := packed_deadline_settled(blob)[0]) is not None]
            heapq.heapify(heap)
        elif form == _PACKED_CASES:
            table, cases, heap, accs = marshal.loads(packed[1])
        if form in (_CASES_KPI_LOG, _CASES_LOG, _PACKED_CASES):
            refs = _Refs.unpacked(table)
            kpi: dict[KpiKey, KpiAcc | bytes] = {}
            for b in accs:  # the key, named by its number, as the KpiKey the engine uses
                i = marshal.loads(b)[0]
                key = refs.items[i]
                if type(key) is not KpiKey:
                    key = refs.items[i] = shared_key(KpiKey(*key))
                kpi[key] = b
            state.update(cases=cases, refs=refs, heap=[tuple(x) for x in heap], kpi=kpi,
                         hot=set(), hot_kpi=set())
        else:
            if form == _PACKED:  # else pickled objects
                state["cases"], state["heap"], state["kpi"] = unpack_shard(packed[1])
            state.update(refs=_Refs(), hot=None, hot_kpi=None)
        state["_cases_log"], state["_kpi_log"], state["_kpi_changes"] = log, kpi_log, {}
        state["_cooled"] = set()
        super().__setstate__(state)

    def cool(self) -> list[str]:
        """Pack the cases (and KPI accumulators) held as objects, those touched since the
        last call, into bytes; returns the numbers of the cases packed.

        A recovery snapshot calls it: it has to pack what changed anyway, and keeping the
        result means the next snapshot only copies an untouched case's bytes (≈ 2–3 µs)
        instead of packing it again (≈ 12 µs), and an idle case takes ≈ 130 bytes instead
        of ≈ 400 in objects. A packed case is unpacked when an event or a deadline touches
        it (:meth:`state`)."""
        cases = self.cases
        kpi = self.kpi
        # What was touched is tracked from the first call on (before it, or after a
        # restore from an older form, it is found by type): without recovery nothing is
        # ever packed, and a set of every case number would cost memory for nothing.
        gone_kpi: list[KpiKey] = []  # accumulators emptied and deleted since
        if self.hot is None or self.hot_kpi is None:
            hot = [c for c, st in cases.items() if type(st) is CaseState]
            hot_kpi = [k for k, a in kpi.items() if type(a) is KpiAcc]
        else:
            hot = [c for c in self.hot if type(cases.get(c)) is CaseState]
            hot_kpi = [k for k in self.hot_kpi if type(kpi.get(k)) is KpiAcc]
            gone_kpi = [k for k in self.hot_kpi if k not in kpi]
        self.hot, self.hot_kpi = set(), set()
        if not hot and not hot_kpi and not gone_kpi:
            return hot
        ref = self.refs.numberer()
        dumps = marshal.dumps
        for case_no in hot:
            cases[case_no] = dumps(case_row_packed(cases[case_no], ref))  # type: ignore[arg-type]
        changes = self._kpi_changes  # for the accumulators' log (see __getstate__)
        for key in hot_kpi:
            changes[ref(key)] = kpi[key] = acc_packed(key, kpi[key], ref)  # type: ignore[arg-type]
        for key in gone_kpi:
            changes[ref(key)] = None
        return hot

    def precool(self) -> int:
        """Pack the cases touched so far, between snapshots (live, with recovery): the next
        snapshot then packs only what was touched after this, so an epoch's close, which
        holds up the dataflow thread and any deadline due meanwhile, is shorter; the
        packing is spread over the epoch instead, and so are the blobs of the cases' and
        accumulators' change logs (ChangeLog.stage). Does nothing before the first
        snapshot (what is touched is not tracked yet). Returns the cases packed."""
        if self.hot is None:
            return 0
        packed = self.cool()
        self._cooled.update(packed)
        # every case touched is packed now (bytes), or gone (None: evicted)
        if self._cooled and self._evicted_changed is not None:
            cases = self.cases
            if self._cases_log.stage(len(cases), {c: cases.get(c) for c in self._cooled}):
                self._cooled = set()
        if self._kpi_changes and self._kpi_log.stage(len(self.kpi), self._kpi_changes):
            self._kpi_changes = {}
        return len(packed)

    def next_deadline(self) -> int | None:
        """The earliest deadline waiting (perhaps one that moved on since: it then fires
        nothing when it comes up)."""
        return self.heap[0][0] if self.heap else None

    def state(self, case_no: str) -> CaseState | None:
        """A case's state as objects (unpacked, and held so, if it was packed)."""
        st = self.cases.get(case_no)
        if type(st) is bytes:
            st = self.cases[case_no] = case_state_unpacked(case_no, marshal.loads(st),
                                                           self.refs.items)
            if self.hot is not None:
                self.hot.add(case_no)
        return st  # type: ignore[return-value]

    def acc(self, key: KpiKey) -> KpiAcc | None:
        """A KPI accumulator as an object (unpacked, and held so, if it was packed)."""
        a = self.kpi.get(key)
        if type(a) is bytes:
            a = self.kpi[key] = acc_unpacked(a, self.refs.items)
            if self.hot_kpi is not None:
                self.hot_kpi.add(key)
        return a  # type: ignore[return-value]

    def accs(self) -> Iterator[tuple[KpiKey, KpiAcc]]:
        """Every KPI accumulator, packed ones unpacked for the caller only."""
        items = self.refs.items
        for key, a in self.kpi.items():
            yield key, acc_unpacked(a, items) if type(a) is bytes else a  # type: ignore[misc]

    def states(self) -> Iterator[CaseState]:
        """Every case's state, packed ones unpacked for the caller only (they stay packed)."""
        items = self.refs.items
        for case_no, st in self.cases.items():
            yield (case_state_unpacked(case_no, marshal.loads(st), items)
                   if type(st) is bytes else st)  # type: ignore[misc]

    def on_batch(self, items: Iterable[Any]) -> list[Any]:
        touched: set[str] = set()
        new_receipts: dict[str, int] = {}
        items = list(items)
        if self.evicted:
            self._reload(items)
        cases = self.cases
        max_seen = self.max_seen
        for item in items:
            kind = type(item)
            if kind is Envelope:
                ev = item.event
            elif kind is Watermark:
                self.external_wm = max(self.external_wm, item.at)
                continue
            else:
                ev = item
            if ev.occurredAt > max_seen:
                max_seen = ev.occurredAt
            case_no = ev.caseNo
            st = cases.get(case_no)
            if type(st) is not CaseState:
                if st is None:
                    st = cases[case_no] = CaseState(CaseFacts(case_no))
                    if self.hot is not None:
                        self.hot.add(case_no)
                    if not self.src:
                        self.src = "c" + shard_of(case_no, self.shards)
                else:
                    st = self.state(case_no)
            if st.facts.add(ev):
                touched.add(case_no)
                if ev.type == "archive.received":
                    new_receipts[case_no] = new_receipts.get(case_no, 0) + 1
        self.max_seen = max_seen
        wm = self.watermark
        heap = self.heap
        while heap and heap[0][0] < wm:
            deadline, case_no = heapq.heappop(heap)
            st = cases.get(case_no)
            if type(st) is bytes:
                # a packed case: unpacked only if this is still its deadline (an entry
                # whose deadline moved on stays in the heap until it comes up)
                if packed_deadline_settled(st)[0] != deadline:
                    continue
                st = self.state(case_no)
            if st is not None and st.next_deadline == deadline:  # type: ignore[union-attr]
                touched.add(case_no)
        out: list[Any] = []
        dirty: set[KpiKey] = set()
        for case_no in touched:
            self._reevaluate(cases[case_no], wm, new_receipts.get(case_no, 0), out, dirty)  # type: ignore[arg-type]
        out.extend(self._kpi_rows(dirty))
        out.extend(self.counts.rows(self.src, self.clock))
        if self.eviction is not None:
            self._evict(wm)
        return out

    def _reload(self, items: list[Any]) -> None:
        """Bring evicted cases that this batch touches back, as they were."""
        batch_ids: dict[str, set[str]] = {}
        for item in items:
            ev = item.event if isinstance(item, Envelope) else item
            if not isinstance(ev, Watermark) and ev.caseNo in self.evicted:
                batch_ids.setdefault(ev.caseNo, set()).add(ev.eventId)
        if not batch_ids:
            return
        assert self.eviction is not None
        loaded = self.eviction.loader(sorted(batch_ids))
        wm = self.watermark
        for case_no, ids in batch_ids.items():
            facts = CaseFacts(case_no)
            for ev in loaded.get(case_no, ()):
                if ev.eventId not in ids:  # the batch's own copy is added by on_batch
                    facts.add(ev)
            # settled means its answer no longer depends on the watermark: this is exactly
            # what was written before it left
            anomalies, summary, next_deadline = evaluate_summary(facts, wm, self.sla)
            self.cases[case_no] = CaseState(facts, anomalies, summary, next_deadline)
            if self.hot is not None:
                self.hot.add(case_no)
            self.evicted.discard(case_no)
            if self._evicted_changed is not None:
                self._evicted_changed.append(case_no)
            self.reloads += 1

    def _evict(self, wm: int) -> None:
        ev = self.eviction
        assert ev is not None
        now = self.wall_ms()
        q = self.settled
        while q and q[0][0] <= wm - ev.after_ms and q[0][1] <= now - ev.min_wall_ms:
            settled_wm, settled_wall, case_no = q.popleft()
            self._settled_out += 1
            st = self.cases.get(case_no)
            if st is None:
                continue
            if type(st) is bytes:  # packed: without unpacking it
                next_deadline, settled = packed_deadline_settled(st)
            else:
                next_deadline, settled = st.next_deadline, st.settled
            if next_deadline is None and settled == (settled_wm, settled_wall):
                del self.cases[case_no]
                self.evicted.add(case_no)
                if self._evicted_changed is not None:
                    self._evicted_changed.append(case_no)
                self.evictions += 1

    def _reevaluate(
        self, st: CaseState, wm: int, n_new_receipts: int, out: list[Any], dirty: set[KpiKey]
    ) -> None:
        facts = st.facts
        anomalies, summary, next_deadline = evaluate_summary(facts, wm, self.sla)
        prev = st.anomalies
        if anomalies or prev:
            out.extend(diff_anomalies(prev or _NO_ANOMALIES, anomalies, self.src, self.clock,
                                      self.counts))
        st.anomalies = anomalies or None
        c = facts.completion
        prev_c = st.c_of
        rest = _rest(summary)
        written = st.written
        if rest is not written and rest != written or (c is not prev_c and c != prev_c):
            # The row and the KPI part are functions of a few values of the summary (see
            # _row_ident, _kpi_ident): compare those, and build the objects only for what
            # changed (most re-evaluations change the row, far fewer the KPI part).
            case_no = facts.case_no
            if _row_ident(c, rest) != _row_ident(prev_c, written):
                new_row = row_of(case_no, summary)
                if written is not None and (new_row is None or c is not prev_c):
                    # the sort key is the completion's: it can only move with it
                    old_row = row_of(case_no, st.summary)
                    assert old_row is not None
                    if new_row is None or _case_sort_key(old_row) != _case_sort_key(new_row):
                        out.append(Write("case_state",
                                         case_row(old_row, self.src, self.clock.next(), True)))
                if new_row is not None:
                    out.append(Write("case_state", case_row(new_row, self.src, self.clock.next())))
            if _kpi_ident(c, rest) != _kpi_ident(prev_c, written):
                old_kpi, new_kpi = kpi_of(st.summary), kpi_of(summary)
                if new_kpi != old_kpi:
                    if old_kpi is not None:
                        self.acc(old_kpi.key).apply(old_kpi, -1)  # type: ignore[union-attr]
                        dirty.add(old_kpi.key)
                    if new_kpi is not None:
                        acc = self.acc(new_kpi.key)
                        if acc is None:
                            acc = self.kpi[new_kpi.key] = KpiAcc()
                            if self.hot_kpi is not None:
                                self.hot_kpi.add(new_kpi.key)
                        acc.apply(new_kpi, +1)
                        dirty.add(new_kpi.key)
            st.written = rest
        # receipts travel on to the archive-number stage (ARCHIVE_NO_CONFLICT)
        receipts = facts.receipts
        if c is not prev_c and case_attrs(c) != case_attrs(prev_c):
            sent = receipts
        else:
            sent = receipts[len(receipts) - n_new_receipts:] if n_new_receipts else ()
        st.c_of = c
        if sent:
            attrs = case_attrs(c)
            for r in sent:
                out.append(ReceiptFact(r.archive_no, r.event_id, r.at, facts.case_no, attrs))
        if next_deadline is not None and next_deadline != st.next_deadline:
            heapq.heappush(self.heap, (next_deadline, facts.case_no))
        st.next_deadline = next_deadline
        if next_deadline is None and self.eviction is not None:
            st.settled = (wm, self.wall_ms())
            entry = (*st.settled, facts.case_no)
            self.settled.append(entry)
            if self._settled_in is not None:
                self._settled_in.append(entry)

    def anomalies_held(self) -> Iterator[Anomaly]:
        for st in self.states():
            if st.anomalies:
                yield from st.anomalies.values()

    def live_rows(self) -> list[Write]:
        """Every row this shard believes the store holds, with fresh versions."""
        out: list[Write] = []
        for st in self.states():
            if st.anomalies:
                out.extend(Write("anomaly", anomaly_row(a, self.src, self.clock.next()))
                           for a in st.anomalies.values())
            row = st.row
            if row is not None:
                out.append(Write("case_state", case_row(row, self.src, self.clock.next())))
        for key in list(self.kpi):
            self.acc(key).written = None  # type: ignore[union-attr]
        out.extend(self._kpi_rows(set(self.kpi)))
        out.extend(self.counts.all_rows(self.src, self.clock))
        return out

    def _kpi_rows(self, dirty: set[KpiKey]) -> list[Write]:
        out = []
        for key in dirty:
            acc = self.acc(key)
            assert acc is not None
            numbers = (acc.kpi, acc.archived, acc.succ, acc.fail, acc.cycle_ms_sum,
                       acc.last_receive, acc.names)
            if acc.written == numbers:
                continue
            deleted = acc.empty
            if deleted:
                del self.kpi[key]
                if acc.written is None:
                    continue  # never written: nothing to withdraw
            else:
                acc.written = numbers
            out.append(Write("kpi_task", {
                "year": key.year, "qym": key.qym, "dept_code": key.dept_code,
                "system_code": key.system_code, "task_id": key.task_id,
                "system_level": key.system_level, "src": self.src,
                "task_code": acc.names[0], "task_name": acc.names[1], "dept_name": acc.names[2],
                "system_name": acc.names[3], "area": acc.names[4],
                "kpi": acc.kpi, "archived": acc.archived, "archived_succ": acc.succ,
                "archived_fail": acc.fail, "cycle_ms_sum": acc.cycle_ms_sum,
                "last_receive": _t(acc.last_receive), "last_update": self.wall_ms() // 1000,
                "version": self.clock.next(), "is_deleted": int(deleted),
            }))
        return out


# ---------------------------------------------------------------------------
# Archive-number shard (joins receipts across cases)


class ArchiveNoShard(_Snapshottable):
    """Receipts grouped by archiveNo, from every case: finds ARCHIVE_NO_CONFLICT."""

    def __init__(self, shards: int, clock: VersionClock) -> None:
        self.shards = shards
        self.src = ""
        self.clock = clock
        self.facts: dict[str, dict[str, ReceiptFact]] = {}
        self.anomalies: dict[str, dict[str, Anomaly]] = {}
        self.counts = AnomalyCounts()
        self._untracked()

    # Every receipt's fact and the conflicts, as a log of the archive numbers changed (see
    # ChangeLog), each as plain tuples (a ReceiptFact pickled costs ≈ 4 µs: dataclasses'
    # generic __getstate__ looks its fields up each time).
    _PLAIN = ("facts", "anomalies")
    _TRACKING = ("_log", "_touched")

    def _value(self, a: str) -> list[Any] | None:
        """An archive number's entry in the log: its facts and anomalies as plain tuples."""
        per = self.facts.get(a)
        return None if per is None else [
            [(f.event_id, f.at, f.case_no, f.attrs) for f in per.values()],
            [tuple(getattr(x, n) for n in _ANOMALY_FIELDS)
             for x in self.anomalies.get(a, {}).values()]]

    def _plain(self) -> list[Any]:
        touched, self._touched = self._touched, set()
        value, facts = self._value, self.facts
        changes = None if touched is None else (lambda: {a: value(a) for a in touched})
        return [self._log.snapshot(len(facts), changes, lambda: {a: value(a) for a in facts})]

    def precool(self) -> int:
        """Between snapshots (live, with recovery): the archive numbers changed so far as
        a blob of the log now (ChangeLog.stage), so that an epoch's close, which holds up
        the dataflow, marshals only the rest (measured at 3,500 events/s on a loaded
        machine: these shards' snapshots took 67-186 ms of each close). Nothing before
        the first snapshot. Returns the archive numbers staged."""
        touched = self._touched
        if not touched:  # None: not tracked before the first snapshot
            return 0
        delta = {a: self._value(a) for a in touched}
        if not self._log.stage(len(self.facts), delta):
            return 0  # the next snapshot writes it whole: the changes stay for it
        self._touched = set()
        return len(delta)

    def _unplain(self, values: list[Any]) -> dict[str, Any]:
        log = ChangeLog(*values[0], bundles=True)
        plain = ChangeLog.replay(log.blobs)
        return {
            "facts": {a: {t[0]: ReceiptFact(a, *t) for t in v[0]} for a, v in plain.items()},
            "anomalies": {a: {t[0]: Anomaly(*t) for t in v[1]}
                          for a, v in plain.items() if v[1]},
            "_log": log, "_touched": set(),
        }

    def _untracked(self) -> None:
        # bundled folds, as the event ids': an archive number mostly gets its receipt
        # once, so its blobs are bundled as they are, not uncompressed and merged
        self._log = ChangeLog(bundles=True)
        # archive numbers changed since the last snapshot (None: not tracked before the
        # first, and never without recovery)
        self._touched: set[str] | None = None

    def on_batch(self, items: Iterable[ReceiptFact | Watermark]) -> list[Write]:
        touched: set[str] = set()
        for f in items:
            if isinstance(f, Watermark):
                continue  # only wakes a restored shard up (see Reconcile)
            if not self.src:
                self.src = "a" + shard_of(f.archive_no, self.shards)
            per = self.facts.setdefault(f.archive_no, {})
            if per.get(f.event_id) != f:
                per[f.event_id] = f
                touched.add(f.archive_no)
        if self._touched is not None:
            self._touched |= touched
        out: list[Write] = []
        for archive_no in touched:
            new = evaluate_archive_no(self.facts[archive_no])
            prev = self.anomalies.get(archive_no, {})
            out.extend(diff_anomalies(prev, new, self.src, self.clock, self.counts))
            if new:
                self.anomalies[archive_no] = new
            else:
                self.anomalies.pop(archive_no, None)
        out.extend(self.counts.rows(self.src, self.clock))
        return out

    def anomalies_held(self) -> Iterator[Anomaly]:
        for per in self.anomalies.values():
            yield from per.values()

    def live_rows(self) -> list[Write]:
        return [Write("anomaly", anomaly_row(a, self.src, self.clock.next()))
                for a in self.anomalies_held()] + self.counts.all_rows(self.src, self.clock)


# ---------------------------------------------------------------------------
# Receiver shard (heartbeat gaps)


@dataclass(slots=True)
class ReceiverState:
    facts: ReceiverFacts
    anomalies: dict[str, Anomaly] = field(default_factory=dict)
    qym: str = ""
    status_row: tuple[Any, ...] | None = None


class ReceiverShard(_Deadlines, _Snapshottable):
    """Heartbeats of the receivers of one shard; RECEIVER_DOWN for registered ones (the
    rules, cron schedules, maintenance windows and flap counts: archwatch.receivers)."""

    def __init__(
        self, shards: int, sla: Sla, clock: VersionClock, registrations: dict[str, Registration],
        flap: tuple[int, int] = (1, 1), own_time: bool = True,
    ) -> None:
        self.shards = shards
        self.own_time = own_time  # as CaseShard's
        self.src = ""
        self.sla = sla
        self.clock = clock
        self.flap = flap  # global (downAfter, upAfter) for registrations that set none
        self.regs = self._resolved(registrations)
        self.receivers: dict[str, ReceiverState] = {}
        self.counts = AnomalyCounts()
        self.max_seen = MIN_TIME
        self.external_wm = MIN_TIME
        self.last_wm = MIN_TIME
        self.pending: dict[str, int] = {}  # receiver -> next deadline

    def _resolved(self, regs: dict[str, Registration]) -> dict[str, Registration]:
        down, up = getattr(self, "flap", (1, 1))
        return {rid: r.with_defaults(down, up) for rid, r in regs.items()}

    def next_deadline(self) -> int | None:
        """The earliest deadline waiting (a receiver's next expected heartbeat)."""
        return min(self.pending.values(), default=None)

    def on_batch(self, items: Iterable[Any]) -> list[Write]:
        changed: dict[str, int] = {}
        for item in items:
            if isinstance(item, Watermark):
                self.external_wm = max(self.external_wm, item.at)
                continue
            if isinstance(item, Registrations):
                regs = self._resolved(item.regs)
                for rid in set(regs) ^ set(self.regs) | {
                        r for r in regs if regs[r] != self.regs.get(r)}:
                    if rid in self.receivers:  # re-evaluate what is not settled yet
                        changed[rid] = 0 if rid not in regs else changed.get(rid, 10**12)
                self.regs = regs
                continue
            ev = item.event if isinstance(item, Envelope) else item
            self.max_seen = max(self.max_seen, ev.occurredAt)
            st = self.receivers.get(ev.receiverId)
            if st is None:
                st = self.receivers[ev.receiverId] = ReceiverState(ReceiverFacts(ev.receiverId))
                if not self.src:
                    self.src = "r" + shard_of(ev.receiverId, self.shards)
            st.qym = ev.qym
            if isinstance(ev, ReceiverHeartbeat):
                i = st.facts.add(ev.occurredAt, ev.eventId)
                changed[ev.receiverId] = min(i, changed.get(ev.receiverId, i))
        wm = self.watermark
        if wm > self.last_wm:
            for rid, deadline in list(self.pending.items()):
                if deadline < wm:
                    start = self.receivers[rid].facts.pending_index()
                    changed[rid] = min(start, changed.get(rid, start))
        out: list[Write] = []
        for rid, start in changed.items():
            st = self.receivers[rid]
            reg = self.regs.get(rid)
            if reg is None and st.anomalies:  # unregistered or paused: withdraw open gaps
                still = {k: a for k, a in st.anomalies.items() if a.resolved_at is not None}
                out.extend(diff_anomalies(st.anomalies, still, self.src, self.clock,
                                          self.counts))
                st.anomalies = still
                st.facts.forget_open()
                self.pending.pop(rid, None)
            if reg is not None:
                if start >= 10**12 and st.facts.beats and st.facts.pending_from is None \
                        and not any(a.resolved_at is None for a in st.anomalies.values()):
                    # (re)registered while silent: a change applies to gaps that open after
                    # it, so the last silence counts only if its deadline is still ahead
                    d = alert_after(reg, st.facts.beats[-1][0])
                    if d is not None and d >= self.last_wm:
                        start = len(st.facts.beats) - 1
                res = scan(st.facts, reg, wm, start)
                candidates = gap_ids(st.facts, res.start)
                prev = {k: v for k, v in st.anomalies.items() if k in candidates}
                out.extend(diff_anomalies(prev, res.anomalies, self.src, self.clock,
                                          self.counts))
                for k in prev:
                    st.anomalies.pop(k)
                st.anomalies.update(res.anomalies)
                if res.pending is None:
                    self.pending.pop(rid, None)
                else:
                    self.pending[rid] = res.pending
            out.extend(self._status(rid, st, reg, wm))
        out.extend(self.counts.rows(self.src, self.clock))
        self.last_wm = max(self.last_wm, wm)
        return out

    def anomalies_held(self) -> Iterator[Anomaly]:
        for st in self.receivers.values():
            yield from st.anomalies.values()

    def live_rows(self) -> list[Write]:
        out = [Write("anomaly", anomaly_row(a, self.src, self.clock.next()))
               for a in self.anomalies_held()]
        for rid, st in self.receivers.items():
            st.status_row = None
            out.extend(self._status(rid, st, self.regs.get(rid), self.last_wm))
        out.extend(self.counts.all_rows(self.src, self.clock))
        return out

    def _status(
        self, rid: str, st: ReceiverState, reg: Registration | None, wm: int
    ) -> list[Write]:
        last = st.facts.beats[-1][0] if st.facts.beats else None
        down = any(a.resolved_at is None for a in st.anomalies.values())
        state = "unregistered" if reg is None else "new" if last is None else (
            "down" if down else "up")
        # when it goes down if nothing else comes (none while down: it already is)
        after = alert_after(reg, last) if reg is not None and last is not None and not down \
            else None
        row = (reg.qym if reg else st.qym, last, len(st.facts.beats), state, after)
        if row == st.status_row:
            return []
        st.status_row = row
        return [Write("receiver_status", {
            "receiver_id": rid, "qym": row[0], "registered": int(reg is not None),
            "last_beat_at": _t(last), "beats": row[2], "state": state,
            "alert_after": _t(after), "src": self.src, "version": self.clock.next(),
        })]
