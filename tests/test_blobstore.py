"""Recovery snapshots' large blobs as files (archwatch.blobstore, issue #10): a snapshot
names them instead of holding them, restores the same state, and a file goes only once
no snapshot a resume could load names it."""

from __future__ import annotations

import marshal
import pickle
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from archwatch import blobstore
from archwatch.blobstore import BlobMissing, BlobStore
from archwatch.engine import ArchiveNoShard, CaseShard, ChangeLog, DedupShard
from tests.test_snapshot import _contents, _engines, _plain_attrs


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _counted(what: str) -> float:
    """What /metrics says of the blob files so far (the process's registry: counts only
    grow, so a test compares with what it did at least)."""
    from prometheus_client import REGISTRY

    name, labels = (("archwatch_snapshot_file_bytes_total", {}) if what == "bytes" else
                    ("archwatch_snapshot_files_total", {"op": what}))
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def _snap(sh: Any) -> bytes:
    return pickle.dumps(sh, protocol=pickle.HIGHEST_PROTOCOL)


def test_every_shard_kind_restores_from_its_files_and_carries_on(tmp_path: Path) -> None:
    """Every blob out of the snapshots (min_bytes=1): each snapshot restores every kind of
    shard exactly, holds a fraction of the bytes, and a run whose shards are replaced by
    their restored selves at every third batch writes the tables of one never
    snapshotted."""
    a, b, lines = _engines(tmp_path, 3_600_000)
    c, _, _ = _engines(tmp_path / "c", 3_600_000)
    store = BlobStore(tmp_path / "blobs", min_bytes=1, keep_s=0, keep_snapshots=1)
    inline = with_files = 0
    with blobstore.using(store):
        for n, i in enumerate(range(0, len(lines), 300)):
            for eng in (a, b, c):
                eng.feed(lines[i:i + 300])
            for shards in (b.dedup, b.archive_nos, b.cases):
                for sh in shards.values():
                    want = _plain_attrs(sh)
                    blob = _snap(sh)
                    with_files += len(blob)
                    restored = pickle.loads(blob)
                    assert _plain_attrs(restored) == want
                    if isinstance(sh, CaseShard):
                        assert _contents(restored) == _contents(sh)
                    with blobstore.using(None):  # the same snapshot, every blob inside
                        inline += len(_snap(restored))
            for shards in (c.dedup, c.archive_nos, c.cases):
                for key, sh in shards.items():
                    blob = _snap(sh)
                    if n % 3 == 2:
                        restored = pickle.loads(blob)
                        restored.adopt(sh)
                        shards[key] = restored
        for sh in b.cases.values():
            # the cases' log, the shared-tuple table's chunks, the KPI accumulators' log:
            # each its directory, then files only
            state = sh.__getstate__()["cases"]
            table, kpi_blobs, _entries = marshal.loads(state[1])
            for blobs in (state[2], table, kpi_blobs):
                assert blobs[0][:1] == blobstore.LOG_ID
                assert all(x[:1] == blobstore.REF for x in blobs[1:]) and len(blobs) > 1
    assert len(_files(tmp_path / "blobs")) > 0
    # (less by far in a long run: here every blob is small, its name a fifth of it)
    assert with_files < inline / 3
    for eng in (a, c):
        eng.finish()
    for table in ("anomaly", "case_state", "receiver_status"):
        assert c.tables.final(table) == a.tables.final(table), table
    assert c.tables.kpi_totals() == a.tables.kpi_totals()


def _drive(log: ChangeLog, state: dict[int, int], rounds: int, start: int = 0
           ) -> list[tuple[list[bytes], int, dict[int, int]]]:
    """Snapshots of a dict changing one key a round (merged, and rewritten whole, as the
    log's thresholds say), with what each stands for."""
    out = []
    for r in range(start, start + rounds):
        state[r % 50] = r
        changed = {r % 50: r}
        blobs, entries = log.snapshot(len(state), (lambda c=changed: c) if log.blobs else None,
                                      lambda: state)  # (a new log writes everything)
        out.append((blobs, entries, dict(state)))
    return out


@pytest.mark.parametrize("keep_snapshots", [1, 3])
def test_a_file_goes_only_after_the_snapshots_and_time_that_may_still_need_it(
        tmp_path: Path, keep_snapshots: int) -> None:
    clock = Clock()
    store = BlobStore(tmp_path / "b", min_bytes=1, keep_s=60, keep_snapshots=keep_snapshots,
                      clock=clock)
    state = {k: 0 for k in range(50)}
    with blobstore.using(store):
        log = ChangeLog()
        snaps = _drive(log, state, 1)
        for r in range(1, 400):
            clock.t += 5  # an epoch
            snaps += _drive(log, state, 1, start=r)
            # the newest keep_snapshots + 1 snapshots always restore (a resume loads one
            # of them); files are only those they name, or dropped within keep_s
            for blobs, _entries, want in snaps[-keep_snapshots - 1:]:
                assert ChangeLog.replay(ChangeLog(blobs).blobs) == want
        # without time passing nothing goes, however many snapshots
        before = _files(tmp_path / "b")
        snaps += _drive(log, state, 200, start=400)
        assert before <= _files(tmp_path / "b")
        # once keep_s has passed and keep_snapshots were taken, only what the newest
        # snapshot names is left
        clock.t += 61
        for _ in range(keep_snapshots):
            blobs, _entries = log.snapshot(len(state), dict, lambda: state)
        assert {p.name for p in _files(tmp_path / "b")} == {
            blobstore.name_of(b) for b in blobs if b[:1] == blobstore.REF}
        # an old snapshot whose files went says so, naming the folder to restore
        old = next(blobs for blobs, _e, _w in snaps
                   if not all((tmp_path / "b" / b[1:].decode().rsplit(":", 1)[0]).exists()
                              for b in blobs if b[:1] == blobstore.REF))
        with pytest.raises(BlobMissing, match="blobs/"):
            ChangeLog(old)
    assert _counted("deleted") > 0


def test_a_restore_takes_the_files_of_a_lost_future_for_deletion(tmp_path: Path) -> None:
    """Snapshots taken after the one a resume loads (a run that died before Bytewax
    committed them) named files no snapshot of the restored lineage will: they go by the
    same rule; the restored snapshot's own files stay."""
    clock = Clock()
    store = BlobStore(tmp_path / "b", min_bytes=1, keep_s=10, keep_snapshots=2, clock=clock)
    state = {k: 0 for k in range(50)}
    with blobstore.using(store):
        log = ChangeLog()
        resumed, entries, want = _drive(log, state, 5)[-1]
        kept = _files(tmp_path / "b")
        _drive(log, dict(state), 90, start=1000)  # the lost future: rewritten, merged
        lost = _files(tmp_path / "b") - kept
        assert lost
        again = ChangeLog(resumed, entries)
        assert ChangeLog.replay(again.blobs) == want
        assert {p.name for p in lost} <= set(again.files.unref)
        clock.t += 11
        _drive(again, dict(want), 3, start=5)
        assert not lost & _files(tmp_path / "b")
        assert kept <= _files(tmp_path / "b")  # still named by the restored lineage


def test_a_damaged_or_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "b", min_bytes=1)
    with blobstore.using(store):
        blobs, entries = ChangeLog().snapshot(3, None, lambda: {1: 1, 2: 2, 3: 3})
        ref = next(b for b in blobs if b[:1] == blobstore.REF)
        path = tmp_path / "b" / ref[1:].decode().rsplit(":", 1)[0]
        path.write_bytes(path.read_bytes() + b"x")
        with pytest.raises(BlobMissing, match="does not hold what was written"):
            ChangeLog(blobs, entries)
        path.unlink()
        with pytest.raises(BlobMissing, match="missing"):
            ChangeLog(blobs, entries)
    with pytest.raises(BlobMissing, match="no blob store is configured"):
        ChangeLog(blobs, entries)


def test_small_blobs_stay_in_the_snapshot_and_no_store_means_no_files(tmp_path: Path) -> None:
    a, _, lines = _engines(tmp_path, None)
    a.feed(lines[:2000])
    shards = [*a.dedup.values(), *a.archive_nos.values(), *a.cases.values()]
    plain = [_snap(sh) for sh in shards]  # no store: as before (tests, replays)
    with blobstore.using(BlobStore(tmp_path / "b", min_bytes=10**9)):
        for sh, before in zip(shards, plain, strict=True):
            blob = _snap(sh)
            assert len(blob) < len(before) + 200  # a log id per log, nothing else
            assert _plain_attrs(pickle.loads(blob)) == _plain_attrs(sh)
    assert not (tmp_path / "b").exists()
    assert {type(sh) for sh in shards} == {DedupShard, ArchiveNoShard, CaseShard}


@pytest.mark.parametrize("libc", [True, False], ids=["libc-keeping-the-gil", "os"])
def test_a_put_writes_the_file_whole_under_a_name_of_its_own(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, libc: bool) -> None:
    if not libc:
        monkeypatch.setattr(blobstore, "_libc", None)
    else:
        assert blobstore._libc is not None  # (Linux: the path archwatch run takes)
    store = BlobStore(tmp_path / "b")
    blob = bytes(range(256)) * 1000
    refs = [store.put("log1", blob) for _ in range(2)]
    assert refs[0] != refs[1] and all(store.get(r) == blob for r in refs)
    assert _counted("written") >= 2 and _counted("bytes") >= 2 * len(blob)
    assert store.names("log1") == {blobstore.name_of(r) for r in refs}  # no temporary left
    cut = tmp_path / "b" / "log1" / blobstore.name_of(refs[0])
    cut.write_bytes(blob[:10])  # as if cut short
    with pytest.raises(BlobMissing, match="10 bytes, not 256000"):
        store.get(refs[0])
    (tmp_path / "b" / "log1").rename(tmp_path / "gone")
    with pytest.raises(OSError):
        store.put("log1", b"x" * 2000)


class _Recorder:
    """Stands in for the libc handle (or ``os``): the file calls are noted, with the
    descriptor or name each was given and what it returned, and made for real; ``fail``
    makes one fail as a power cut at that point would end it (nothing after it runs)."""

    FILE_CALLS = frozenset({"open", "openat", "write", "fdatasync", "fsync", "close",
                            "rename", "renameat"})

    def __init__(self, real: Any, fail: str | None = None) -> None:
        self.real, self.fail = real, fail
        self.calls: list[tuple[str, Any, Any]] = []

    def __getattr__(self, name: str) -> Any:
        fn = getattr(self.real, name)
        if name not in self.FILE_CALLS:
            return fn

        def call(*args: Any, **kwargs: Any) -> Any:
            arg = args[1] if name in ("openat", "renameat") else args[0]
            if name == self.fail:
                self.calls.append((name, arg, None))
                raise OSError(5, "injected: the power went")
            ret = fn(*args, **kwargs)
            self.calls.append((name, arg.decode() if isinstance(arg, bytes) else arg, ret))
            return ret

        return call


@pytest.mark.parametrize("libc", [True, False], ids=["libc-keeping-the-gil", "os"])
def test_a_put_syncs_the_file_before_naming_it_and_the_folder_after(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, libc: bool) -> None:
    """A ref is returned (and Bytewax's commit may name it) only once the file is synced
    under its final name: written to a temporary, its data synced, renamed, the folder
    synced. A failure on the way leaves no file under the name a snapshot would hold,
    only the temporary, which the folder's listing shows (a restore deletes such files:
    test_a_restore_takes_the_files_of_a_lost_future_for_deletion)."""
    def recorded(fail: str | None = None) -> _Recorder:
        monkeypatch.undo()
        if libc:
            assert blobstore._libc is not None  # (Linux: the path archwatch run takes)
            rec = _Recorder(blobstore._libc, fail)
            monkeypatch.setattr(blobstore, "_libc", rec)
        else:
            rec = _Recorder(blobstore.os, fail)
            monkeypatch.setattr(blobstore, "_libc", None)
            monkeypatch.setattr(blobstore, "os", rec)
        return rec

    store = BlobStore(tmp_path / "b")
    blob = b"x" * 5000
    rec = recorded()
    ref = store.put("log1", blob)
    name = blobstore.name_of(ref)
    sync, rename = ("fdatasync", "renameat") if libc else ("fsync", "rename")
    (op1, folder, dfd), (op2, tmp, fd) = rec.calls[:2]
    assert (op1, op2) == ("open", "openat" if libc else "open")
    assert (folder, tmp) == (str(tmp_path / "b" / "log1"), f".{name}.tmp")
    writes = [c for c in rec.calls if c[0] == "write"]
    assert writes and all(arg == fd for _, arg, _ in writes)
    assert rec.calls[2:2 + len(writes)] == writes  # the data, then nothing else, then:
    assert [(op, arg) for op, arg, _ in rec.calls[2 + len(writes):]] == [
        (sync, fd), ("close", fd), (rename, tmp), ("fsync", dfd), ("close", dfd)]
    assert store.get(ref) == blob

    for point in (sync, rename):
        before = store.names("log1")
        recorded(fail=point)
        with pytest.raises(OSError, match="the power went"):
            store.put("log1", b"y" * 5000)
        left = store.names("log1") - before
        assert len(left) == 1 and next(iter(left)).endswith(".tmp"), (point, left)
    monkeypatch.undo()
    assert store.get(ref) == blob


def test_small_blobs_fold_into_a_file_once_they_hold_min_bytes(tmp_path: Path) -> None:
    """A log's newest blobs too small to be files stay inside the snapshot until together
    they hold min_bytes; then they become one blob, written as one file. Every snapshot
    restores its dict and queue exactly, inside it stays at most about min_bytes a log,
    and a file is written per min_bytes of changes, not per snapshot."""
    from collections import deque

    from archwatch.engine import QueueLog

    store = BlobStore(tmp_path / "b", min_bytes=4096)
    state: dict[str, int] = {}
    q: deque[tuple[int, str]] = deque()
    puts = 0
    real_put = store.put

    def counting_put(log: str, blob: bytes) -> bytes:
        nonlocal puts
        puts += 1
        return real_put(log, blob)

    store.put = counting_put  # type: ignore[method-assign]
    with blobstore.using(store):
        changes, queue = ChangeLog(), QueueLog()
        for r in range(300):
            new = {f"event-{r}-{i}-{r * 7919 % 1000}": r * 31 + i for i in range(20)}
            state.update(new)
            appended = [(r, k) for k in new]
            q.extend(appended)
            popped = 0
            while len(q) > 2000:
                q.popleft()
                popped += 1
            c_blobs, entries = changes.snapshot(len(state), (lambda n=new: n) if r else None,
                                                lambda: state)
            q_blobs, dropped = queue.snapshot(q, appended if r else None, popped)
            for blobs in (c_blobs, q_blobs):
                inside = sum(len(b) for b in blobs if b[:1] not in (blobstore.REF,
                                                                       blobstore.LOG_ID))
                assert inside < 2 * 4096
            assert ChangeLog.replay(ChangeLog(c_blobs, entries).blobs) == state
            assert QueueLog.replay(QueueLog(q_blobs, dropped).blobs, dropped) == q
    assert 0 < puts < 300  # both logs: far fewer files than snapshots


@pytest.mark.parametrize("bundles", [True, False])
def test_staged_blobs_fold_into_one_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         bundles: bool) -> None:
    """Between snapshots a log's staged blobs fold into one file once they hold min_bytes.
    A log of ids set once (``bundles``) folds them into a bundle of the blobs as they were
    made, none read back (uncompressed) or compressed again, which is what a fold used to
    cost; a log whose keys come again merges them, each key written once. Restored, either
    is the changes in order, deletions and keys set twice included."""
    from archwatch import engine

    store = BlobStore(tmp_path / "b", min_bytes=8192)
    with blobstore.using(store):
        # more than a merge takes (engine._LOG_MERGE_MAX), or the snapshot rewrites it whole
        log = ChangeLog(bundles=bundles)
        state = {f"HZ{i:012d}": f"v0-{i}" for i in range(20_000)}
        log.snapshot(len(state), None, lambda: state)
        read: list[bytes] = []
        real_unblob = engine._unblob
        monkeypatch.setattr(engine, "_unblob", lambda b: read.append(b) or real_unblob(b))
        staged = 0
        for r in range(1, 40):
            delta: dict[str, str | None] = {f"HZ{(r * 7 + i) % 100:012d}": f"v{r}-{i}" * 20
                                            for i in range(30)}
            delta[f"HZ{r:012d}"] = None  # one gone each time
            for k, v in delta.items():
                if v is None:
                    state.pop(k, None)
                else:
                    state[k] = v
            assert log.stage(len(state), delta)
            staged += len(delta)
        bundled = [b for b in log.blobs if b[:1] == engine._BUNDLE]
        if bundles:
            assert bundled and not read
            assert log.entries == 20_000 + staged
        else:
            assert not bundled and read  # merged: the keys set again are written once
            assert log.entries < 20_000 + 100 + 39
        monkeypatch.undo()
        assert ChangeLog.replay(log.blobs) == state
        blobs, entries = log.snapshot(len(state), lambda: {}, lambda: state)
        inside = [b for b in blobs[2:] if b[:1] != blobstore.REF]
        assert sum(map(len, inside)) < 2 * 8192
        # bundled, the folds are files; merged, the keys set again shrink them below one
        assert any(b[:1] == blobstore.REF for b in blobs[2:]) == bundles
    with blobstore.using(BlobStore(tmp_path / "b", min_bytes=8192)):
        assert ChangeLog.replay(ChangeLog(blobs, entries).blobs) == state


def test_zlib_held_reads_and_writes_zlib_streams() -> None:
    """The GIL-held compressor's output is zlib's own format, and it reads zlib's; a
    damaged or mislabelled blob is an error, not a wrong state; blobs written before it
    (b"z": no length) still read."""
    import marshal
    import zlib

    from archwatch import engine, zlib_held

    raw = marshal.dumps({f"ev-{i}": bytes([i % 256]) * 12 for i in range(2000)})
    packed = zlib_held.compress(raw)
    assert zlib.decompress(packed) == raw
    assert zlib_held.uncompress(zlib.compress(raw, 6), len(raw)) == raw
    with pytest.raises(zlib.error):
        zlib_held.uncompress(packed, len(raw) - 1)
    with pytest.raises(zlib.error):
        zlib_held.uncompress(packed[:-9], len(raw))
    data = marshal.loads(raw)
    assert engine._unblob(engine._blob(data)) == data
    assert engine._unblob(b"z" + zlib.compress(raw, 1)) == data
    lib, zlib_held._lib = zlib_held._lib, None  # no loadable libz: the module, the same bytes
    try:
        assert zlib_held.compress(raw) == zlib.compress(raw, 1)
        assert zlib_held.uncompress(packed, len(raw)) == raw
        with pytest.raises(zlib.error):
            zlib_held.uncompress(packed, len(raw) + 1)
    finally:
        zlib_held._lib = lib


def test_run_says_in_one_line_when_a_snapshot_names_a_missing_file() -> None:
    """Bytewax re-raises a builder's error as its own, the cause chained: `archwatch run`
    finds the missing file in the chain and says so (exit 2), anything else is raised."""
    from archwatch.cli import CliError, run_dataflow

    def fails(cause: BaseException) -> None:
        try:
            raise cause
        except BaseException as inner:
            raise RuntimeError("(src/recovery.rs:1): error calling builder") from inner

    with pytest.raises(CliError, match="cannot resume from the recovery snapshots: "
                                       "recovery snapshot names x"):
        run_dataflow(fails, BlobMissing("recovery snapshot names x, which is missing"))
    with pytest.raises(RuntimeError, match="error calling builder"):
        run_dataflow(fails, ValueError("something else"))


def test_with_files_turned_off_a_run_still_reads_an_earlier_runs_files(tmp_path: Path) -> None:
    """`--snapshot-file-bytes 0` after a run that wrote files: its snapshots restore, the
    next snapshot holds every blob itself, and the old files go by the usual rule."""
    from archwatch.live import LiveOptions, recovery_blobs

    def opts(n: int) -> LiveOptions:
        return LiveOptions(kafka=None, recovery_dir=tmp_path, snapshot_file_bytes=n)  # type: ignore[arg-type]

    assert recovery_blobs(replace(opts(0), recovery_dir=None)) is None
    on, off = recovery_blobs(opts(1)), recovery_blobs(opts(0))
    assert on is not None and off is not None and on.root == off.root == tmp_path / "blobs"
    state = {i: i for i in range(100)}
    with blobstore.using(on):
        blobs, entries = ChangeLog().snapshot(len(state), None, lambda: state)
    assert any(b[:1] == blobstore.REF for b in blobs)
    off.keep_s, clock = 0, Clock()
    off.clock = clock
    with blobstore.using(off):
        log = ChangeLog(blobs, entries)
        for _ in range(off.keep_snapshots + 1):
            again, _ = log.snapshot(len(state), dict, lambda: state)
    assert not any(b[:1] == blobstore.REF for b in again)
    assert ChangeLog.replay(ChangeLog(again).blobs) == state
    assert not _files(tmp_path / "blobs")
