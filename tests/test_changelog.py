"""Snapshots that cost what changed (issue #10): a dict's or a queue's recovery snapshot is
the blobs of its changes since the one before, on top of the earlier blobs; replayed, the
latest snapshot is exactly the state when it was taken, whatever happened between."""

from __future__ import annotations

import pickle
import tempfile
from collections import deque
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from archwatch import blobstore, engine
from archwatch.blobstore import BlobStore
from archwatch.engine import (
    ArchiveNoShard,
    ChangeLog,
    DedupShard,
    QueueLog,
    Retirement,
    VersionClock,
)
from archwatch.models import parse_record
from archwatch.rules import ReceiptFact

# ("set", key, value) | ("del", key) | ("push", value) | ("pop",) | ("snap",) | ("stage",)
_ops = st.lists(st.one_of(
    st.tuples(st.just("set"), st.integers(0, 40), st.integers(0, 9)),
    st.tuples(st.just("del"), st.integers(0, 40)),
    st.tuples(st.just("push"), st.integers()),
    st.tuples(st.just("pop")),
    st.tuples(st.just("snap")),
    st.tuples(st.just("stage")),  # between snapshots: the changes so far as blobs now
), max_size=300)


@settings(max_examples=200, deadline=None)
@given(_ops, st.booleans(), st.booleans(), st.booleans())
def test_the_latest_snapshot_replays_to_the_state_it_was_taken_at(ops: list[tuple[Any, ...]],
                                                                  small: bool, files: bool,
                                                                  bundles: bool) -> None:
    """``files``: with a blob store whose files start at 40 bytes, so that the newest
    small blobs fold into one every few stages and snapshots (_BlobLog._fold: merged, or
    for the dict with ``bundles`` and always for the queue, bundled), and the snapshots
    are restored from their files."""
    before = (engine._LOG_SLACK, engine._LOG_BLOBS, engine._LOG_BLOBS_MAX,
              engine._LOG_MERGE_MAX)
    if small:  # rewrites and merges often, by entries and by blob count
        (engine._LOG_SLACK, engine._LOG_BLOBS, engine._LOG_BLOBS_MAX,
         engine._LOG_MERGE_MAX) = 3, 4, 6, 3
    try:
        with tempfile.TemporaryDirectory() as tmp, blobstore.using(
                BlobStore(Path(tmp), min_bytes=40) if files else None):
            _check_ops(ops, bundles)
    finally:
        (engine._LOG_SLACK, engine._LOG_BLOBS, engine._LOG_BLOBS_MAX,
         engine._LOG_MERGE_MAX) = before


def _check_ops(ops: list[tuple[Any, ...]], bundles: bool) -> None:
    """Applies ``ops`` to a dict and a queue and their logs; checks every snapshot."""
    d: dict[int, int] = {}
    q: deque[int] = deque()
    dlog, qlog = ChangeLog(bundles=bundles), QueueLog()
    changed: set[int] | None = None  # not tracked until the first snapshot
    appended: list[int] | None = None
    popped = 0
    for op in ops:
        if op[0] == "set":
            d[op[1]] = op[2]
        elif op[0] == "del":
            d.pop(op[1], None)
        elif op[0] == "push":
            q.append(op[1])
        elif op[0] == "pop" and q:
            q.popleft()
            popped += 1
        if op[0] in ("set", "del") and changed is not None:
            changed.add(op[1])
        if op[0] == "push" and appended is not None:
            appended.append(op[1])
        if op[0] == "stage" and changed is not None and appended is not None:
            if dlog.stage(len(d), {k: d.get(k) for k in changed}):
                changed = set()
            if qlog.stage(appended):
                appended = []
        if op[0] == "snap":
            delta = None if changed is None else {k: d.get(k) for k in changed}
            blobs, entries = dlog.snapshot(
                len(d), None if delta is None else (lambda: delta), lambda: d)  # noqa: B023
            qblobs, dropped = qlog.snapshot(q, appended, popped)
            changed, appended, popped = set(), [], 0
            # what a restore gets back, from these blobs alone (and their files)
            blobs, qblobs = pickle.loads(pickle.dumps((blobs, qblobs)))
            assert ChangeLog.replay(ChangeLog(blobs, entries).blobs) == d
            assert list(QueueLog.replay(QueueLog(qblobs, dropped).blobs, dropped)) \
                == list(q)
            # the blobs stay within a constant of the state
            assert entries <= 2 * len(d) + engine._LOG_SLACK
            assert len([b for b in blobs if b[:1] != blobstore.LOG_ID]) \
                <= engine._LOG_BLOBS_MAX
            assert dropped <= len(q) + engine._LOG_SLACK


def test_a_growing_dict_is_never_rewritten_whole_and_merges_stay_small() -> None:
    """A dict that only grows, snapshotted 2,000 times with 50 new keys each: no snapshot
    after the first writes more than _LOG_MERGE_MAX entries (a log used to be rewritten
    whole at every 64th: the whole state at once, for every shard of a step), and the
    last replays to the dict. The same for a queue that only grows."""
    d: dict[int, int] = {i: i for i in range(10_000)}
    q: deque[int] = deque(range(10_000))
    dlog, qlog = ChangeLog(), QueueLog()
    dlog.snapshot(len(d), None, lambda: d)
    qlog.snapshot(q, None, 0)
    written: list[int] = []
    blob = engine._blob

    def counting(data: Any) -> bytes:
        written.append(len(data))
        return blob(data)

    engine._blob = counting  # type: ignore[assignment]
    try:
        for n in range(2_000):
            new = {10_000 + 50 * n + i: i for i in range(50)}
            d.update(new)
            q.extend(new)
            dlog.snapshot(len(d), lambda: new, lambda: d)  # noqa: B023
            qlog.snapshot(q, list(new), 0)
    finally:
        engine._blob = blob  # type: ignore[assignment]
    assert max(written) <= engine._LOG_MERGE_MAX
    # each entry written a few times (the newest blob merged again until it is full),
    # where rewriting all at every 64th snapshot wrote each ≈ 19 times
    assert sum(written) < 6 * 2_000 * 50 * 2
    assert len(dlog.blobs) < 2 * dlog.trigger and len(qlog.blobs) < 2 * qlog.trigger
    assert len(dlog.blobs) > 1  # never rewritten whole
    assert ChangeLog.replay(dlog.blobs) == d
    assert list(QueueLog.replay(qlog.blobs, qlog.dropped)) == list(q)


def _env(i: int, day: int = 0) -> Any:
    rec = parse_record(
        f'{{"eventId":"ev-{i:06d}","type":"province.pushed",'
        f'"occurredAt":"2024-11-{1 + day:02d}T08:00:00Z","source":"ZJ-PROVINCE",'
        f'"caseNo":"HZ2024110100{i:06d}","batchNo":"B1","targetQym":"330102"}}', f"t/0/{i}")
    assert not hasattr(rec, "reason"), rec
    return rec


def test_a_dedup_shard_snapshot_after_a_few_events_writes_only_those() -> None:
    """Ten thousand ids, a snapshot, then ten more: the next snapshot adds a blob of those
    ten. Then the ten thousand retire: the log is compacted to what is held. Restored from
    each, the shard holds what the original does."""
    sh = DedupShard(Retirement(lambda ids: {}, after_ms=86_400_000, min_wall_ms=0), lambda: 0)

    def add(envs: list[Any]) -> bytes:
        sh.classify_batch(envs)
        for e in envs:
            sh.logged(e)
        sh.retire_due()
        blob = pickle.dumps(sh)
        restored = pickle.loads(blob)
        # what its decisions read: the ids held, the queue, the retired ids' filter
        assert restored.seen == sh.seen and list(restored.queue) == list(sh.queue)
        assert pickle.dumps(restored.retired) == pickle.dumps(sh.retired)
        return blob

    add([_env(i) for i in range(10_000)])
    add([_env(i) for i in range(10_000, 10_010)])
    for log in (sh._seen_log, sh._queue_log):
        assert len(log.blobs) == 2 and len(log.blobs[1]) * 20 < len(log.blobs[0])
    add([_env(i, day=2) for i in range(10_010, 10_020)])  # day 3: days 1's ids retire
    assert len(sh.seen) == 10
    for log in (sh._seen_log, sh._queue_log):
        assert len(log.blobs) == 1 and len(log.blobs[0]) < 1000


def test_a_dedup_shard_staging_between_snapshots_restores_the_same() -> None:
    """Live with recovery, an event-id shard writes the ids added since the last snapshot
    into its logs' blobs between closes (precool): each snapshot still restores the ids
    and the queue as they are, and what a snapshot adds itself is only what came after
    the last stage."""
    sh = DedupShard(Retirement(lambda ids: {}, after_ms=86_400_000, min_wall_ms=0), lambda: 0)
    assert sh.precool() == 0  # not tracked before the first snapshot
    n, staged = 0, 0
    for epoch in range(6):
        for _ in range(3):
            envs = [_env(i, day=2 * (epoch >= 4)) for i in range(n, n + 500)]
            n += 500
            sh.classify_batch(envs)
            for e in envs:
                sh.logged(e)
            sh.retire_due()
            took = sh.precool()
            if 1 <= epoch <= 3:  # tracked, and no ids leaving: each stage takes its 500
                assert took == 500
            staged += took
        last = [_env(i, day=2 * (epoch >= 4)) for i in range(n, n + 7)]
        n += 7
        sh.classify_batch(last)
        for e in last:
            sh.logged(e)
        blobs_before = len(sh._seen_log.blobs)
        restored = pickle.loads(pickle.dumps(sh))
        assert restored.seen == sh.seen and list(restored.queue) == list(sh.queue)
        if 1 <= epoch <= 3:  # the snapshot added only the 7 ids after the last stage
            assert len(sh._seen_log.blobs) == blobs_before + 1
            assert len(engine._unblob(sh._seen_log.blobs[-1])) == 7
            assert not sh._seen_log.staged and not sh._queue_log.staged
    assert staged >= 3 * 3 * 500
    assert len(sh.seen) < n  # day 0's ids retired at day 2 (the queue popped after stages)


def test_an_archive_no_shard_staging_between_snapshots_restores_the_same() -> None:
    """Live with recovery, an archive-number shard writes the numbers changed since the
    last snapshot into its log's blobs between closes (precool): each snapshot still
    restores the receipts and the conflicts as they are, and what a snapshot adds itself
    is only what changed after the last stage."""
    sh = ArchiveNoShard(4, VersionClock())
    attrs = ("330102", "d", "s", "t")

    conflicts = 0

    def receipts(start: int, n: int) -> list[ReceiptFact]:
        # every tenth archive number is claimed by a second case too: a conflict
        nonlocal conflicts
        out = [ReceiptFact(f"A{i}", f"e{i}", i, f"C{i}", attrs) for i in range(start, start + n)]
        out += [ReceiptFact(f"A{i}", f"x{i}", i + 1, f"D{i}", attrs)
                for i in range(start, start + n, 10)]
        conflicts += len(range(start, start + n, 10))
        return out

    sh.on_batch(receipts(0, 100))
    assert sh.precool() == 0  # not tracked before the first snapshot
    pickle.dumps(sh)
    n, staged = 100, 0
    for _epoch in range(4):
        for _ in range(3):
            sh.on_batch(receipts(n, 50))
            n += 50
            took = sh.precool()
            assert took == 50
            staged += took
        sh.on_batch(receipts(n, 3))
        n += 3
        blobs_before = len(sh._log.blobs)
        restored = pickle.loads(pickle.dumps(sh))
        assert restored.facts == sh.facts and restored.anomalies == sh.anomalies
        assert sum(len(per) for per in sh.anomalies.values()) == conflicts
        assert len(sh._log.blobs) <= blobs_before + 1  # (folded into fewer at times)
        assert len(engine._unblob(sh._log.blobs[-1])) in (3, n)  # the rest, or all rewritten
        assert not sh._log.staged
    assert staged == 4 * 3 * 50


def test_logs_taking_alike_do_not_all_rewrite_at_the_same_snapshot() -> None:
    """The shards of a step take alike (one epoch's events hashed among them): their logs
    reach the blob count that rewrites a small state at different snapshots."""
    logs = [ChangeLog() for _ in range(32)]
    dicts: list[dict[int, int]] = [{} for _ in logs]
    rewritten: list[set[int]] = [set() for _ in logs]
    for n in range(200):
        for i, (log, d) in enumerate(zip(logs, dicts, strict=True)):
            new = {10 * n + k: k for k in range(10)}
            d.update(new)
            blobs, _ = log.snapshot(len(d), None if n == 0 else (lambda: new),  # noqa: B023
                                    lambda: d)  # noqa: B023
            if n and len(blobs) == 1:
                rewritten[i].add(n)
            assert ChangeLog.replay(blobs) == d
    firsts = {min(r) for r in rewritten}
    assert len(firsts) >= 8, firsts  # spread over a quarter of 64 snapshots


def test_a_backlogs_big_blobs_are_rewritten_whole_at_the_cap() -> None:
    """Blobs too big to merge (a backlog's epochs) do not pile up without end."""
    d: dict[int, int] = {}
    log = ChangeLog()
    for n in range(engine._LOG_BLOBS_MAX + 5):
        new = {n * 10_000 + k: k for k in range(10_000)}  # over half of a merge's most
        d.update(new)
        blobs, _ = log.snapshot(len(d), None if n == 0 else (lambda: new),  # noqa: B023
                                lambda: d)  # noqa: B023
        assert len(blobs) < engine._LOG_BLOBS_MAX
    assert ChangeLog.replay(blobs) == d
