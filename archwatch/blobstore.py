"""The large blobs of recovery snapshots, kept as files beside Bytewax's partitions.

Why: Bytewax writes the whole snapshot of every key an epoch touched, and every shard is
touched every epoch, so what recovery writes an epoch followed the state, not the change:
≈ 184 MB a close at 300,000 live cases, written into SQLite on the dataflow thread
(bench/RESULTS.md, sections 2 and 5, session 18). The bulk of a shard's snapshot is the
blobs of its change logs (engine.ChangeLog, QueueLog), and a blob never changes once
made: a merge makes a new one. So a blob of ``min_bytes`` or more is written once, as a
file under a directory of its log, and the snapshot holds only its name and length (a
*ref*); a restore reads the file back and checks its length (a compressed blob's own
checksum checks the rest). Names are unique to the process that wrote them (a random
prefix, then a count), not digests: hashing a blob gives the GIL up (see
_durable_write).

When a file may go: Bytewax resumes each key from its newest snapshot before the resume
epoch, and the resume epoch only grows; every epoch's rows are written before it commits,
so a shard is never more than an epoch or two of snapshots ahead of the last committed
one. A file no snapshot of its log refers to any more is deleted once the log has taken
``keep_snapshots`` snapshots since and ``keep_s`` seconds have passed (the second covers
``--backup-interval``: Bytewax keeps a superseded snapshot that long for a copy of the
partitions taken meanwhile). A restored log takes the files of its directory that its
snapshot does not name (written after it, by a run that died before committing them)
for deletion by the same rule.

Thread-safe as it is used: each log has a directory of its own and belongs to one worker.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from archwatch.metrics import SNAPSHOT_FILE_BYTES, SNAPSHOT_FILE_SECONDS, SNAPSHOT_FILES

REF = b"f"  # a blob's first byte when it stands for a file: b"f<log>/<name>:<length>"
LOG_ID = b"i"  # the first item of a log's snapshot: b"i<log>" (its directory)


class BlobMissing(RuntimeError):
    """A snapshot names a file that is not there (or not what was written)."""


@dataclass
class BlobStore:
    root: Path
    # Blobs smaller stay inside the snapshot, until a log's newest small ones hold this
    # much together and become one file (engine._BlobLog._fold): so at most about this
    # much a log is written again at every epoch, and a file is written per this much of
    # changes. A file costs 1–2 ms of the dataflow thread in a loaded `archwatch up`
    # (≈ 0.3 ms alone), what stays inside ≈ 8 ms a MB (pickled, then written by
    # Bytewax into SQLite): one file per log at every epoch (1 KiB) was ≈ 230 files an
    # epoch's close at 10,000 events/s.
    min_bytes: int = 64 * 1024
    keep_s: float = 300.0
    keep_snapshots: int = 3
    clock: Callable[[], float] = field(default=time.monotonic)
    _dirs: set[str] = field(default_factory=set, init=False, repr=False)  # folders made

    def put(self, log: str, blob: bytes) -> bytes:
        """Write ``blob`` and return its ref. Synced before it returns: Bytewax's SQLite
        commit, which will name it, syncs too (and a restored shard's reconcile step
        relies on its snapshot being what was committed)."""
        t0 = time.perf_counter()
        name = f"{_PREFIX}{next(_names):x}"
        if log not in self._dirs:
            (self.root / log).mkdir(parents=True, exist_ok=True)
            self._dirs.add(log)
        _durable_write(os.fsencode(self.root / log), name.encode(), blob)
        SNAPSHOT_FILES.labels("written").inc()
        SNAPSHOT_FILE_BYTES.inc(len(blob))
        SNAPSHOT_FILE_SECONDS.inc(time.perf_counter() - t0)
        return REF + f"{log}/{name}:{len(blob)}".encode()

    def get(self, ref: bytes) -> bytes:
        """The blob a ref names, checked against its length."""
        rel, length = ref[1:].decode().rsplit(":", 1)
        try:
            blob = (self.root / rel).read_bytes()
        except FileNotFoundError:
            raise BlobMissing(
                f"recovery snapshot names {self.root / rel}, which is missing: the "
                f"recovery directory was copied without its blobs/ folder, or with a "
                f"different one (see docs/operations.md, backups)") from None
        if len(blob) != int(length):
            raise BlobMissing(f"{self.root / rel} does not hold what was written "
                              f"({len(blob)} bytes, not {length})")
        return blob

    def names(self, log: str) -> set[str]:
        """The files of a log's directory (half-written ones too: a crash may leave one)."""
        try:
            return set(os.listdir(self.root / log))
        except FileNotFoundError:
            return set()

    def delete(self, log: str, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.root / log / name)
            SNAPSHOT_FILES.labels("deleted").inc()


# The write, sync and rename of a file, with the GIL held. Each blocking call of ``os``
# gives the GIL up, and the dataflow thread then waits for it behind whichever thread
# takes it (up to the 5 ms switch interval): in `archwatch up` a put cost 2–3 ms of the
# dataflow thread for ≈ 0.1 ms of I/O, ≈ 230 puts an epoch's close at 10,000 events/s;
# against a thread running Python, 17–30 ms a put with ``os``, 0.45–1.0 ms through libc
# called from ``ctypes.PyDLL`` (which keeps the GIL; bench/RESULTS.md section 2, session
# 19). The other threads wait for the I/O instead — the API and the store writer, which
# hold the GIL ≈ 11% of the time.
try:
    _libc: ctypes.CDLL | None = ctypes.PyDLL(None, use_errno=True)
    for _f in ("open", "openat", "close", "fdatasync", "fsync", "renameat"):
        getattr(_libc, _f)
    _libc.openat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_int]
    _libc.open.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_int]
    _libc.write.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t]
    _libc.write.restype = ctypes.c_ssize_t
    _libc.renameat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
except (AttributeError, OSError):  # not glibc-like: os, giving the GIL up
    _libc = None


def _check(ret: int) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


def _durable_write(folder: bytes, name: bytes, blob: bytes) -> None:
    """``folder/name`` holds ``blob``, synced with its directory entry: written as a
    temporary file, synced, renamed, the folder synced."""
    tmp = b"." + name + b".tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
    libc = _libc
    if libc is None:
        dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fd = os.open(tmp, flags, 0o644, dir_fd=dfd)
            try:
                view = memoryview(blob)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
            os.fsync(dfd)
        finally:
            os.close(dfd)
        return
    dfd = _check(libc.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, 0))
    try:
        fd = _check(libc.openat(dfd, tmp, flags, 0o644))
        try:
            done = 0
            while done < len(blob):
                done += _check(libc.write(fd, blob[done:] if done else blob, len(blob) - done))
            _check(libc.fdatasync(fd))
        finally:
            libc.close(fd)
        _check(libc.renameat(dfd, tmp, dfd, name))
        _check(libc.fsync(dfd))
    finally:
        libc.close(dfd)


def name_of(ref: bytes) -> str:
    """The file name a ref names."""
    return ref[ref.rindex(b"/") + 1:ref.rindex(b":")].decode()


_PREFIX = secrets.token_hex(6)  # this process's file names: then a count
_names = itertools.count()


class LogFiles:
    """Which of one log's blobs its snapshots name as files (a change log's, or a table's
    chunks: blobs that never change once made), and when its files go."""

    __slots__ = ("logid", "sealed", "unref", "snaps")

    def __init__(self) -> None:
        self.logid: str | None = None  # the log's directory in the store
        # id(blob) -> (blob, ref) of the blobs written as files (the blob is held there
        # too, so that its id is not reused while the entry stands)
        self.sealed: dict[int, tuple[bytes, bytes]] = {}
        # files no longer named -> (snapshots taken, clock) when they stopped being named
        self.unref: dict[str, tuple[int, float]] = {}
        self.snaps = 0  # snapshots taken since this log was made or restored

    def restored(self, blobs: list[bytes]) -> list[bytes]:
        """A snapshot's blobs with the files it names read back; the files of the log's
        directory that it does not name are taken for deletion (a lost future's)."""
        out: list[bytes] = []
        named: set[str] = set()
        for b in blobs:
            tag = b[:1]
            if tag == LOG_ID:
                self.logid = b[1:].decode()
            elif tag == REF:
                blob = required().get(b)
                self.sealed[id(blob)] = (blob, b)
                named.add(name_of(b))
                out.append(blob)
            else:
                out.append(b)
        store = current()
        if store is not None and self.logid is not None:
            self.unref = dict.fromkeys(store.names(self.logid) - named, (0, store.clock()))
        return out

    def outgoing(self, blobs: list[bytes]) -> list[bytes]:
        """The blobs as a snapshot holds them: large ones as refs to files (written now if
        new), the log's directory first; files no longer named are deleted once old
        enough. Without a store, the blobs themselves."""
        store = current()
        if store is None:
            return list(blobs)
        if self.logid is None:
            self.logid = secrets.token_hex(8)
        out = [LOG_ID + self.logid.encode()]
        old, sealed = self.sealed, {}
        for b in blobs:
            if len(b) < store.min_bytes:
                out.append(b)
                continue
            hit = old.get(id(b))
            ref = hit[1] if hit is not None else store.put(self.logid, b)
            sealed[id(b)] = (b, ref)
            out.append(ref)
        self.sealed = sealed
        self.snaps += 1
        if old.keys() != sealed.keys() or self.unref:
            now = store.clock()
            named = {name_of(r) for _b, r in sealed.values()}
            for _b, r in old.values():
                if (name := name_of(r)) not in named:
                    self.unref.setdefault(name, (self.snaps, now))
            for name in named:
                self.unref.pop(name, None)  # (a restored log's: named again)
            for name, (n, t) in list(self.unref.items()):
                if self.snaps - n >= store.keep_snapshots and now - t >= store.keep_s:
                    store.delete(self.logid, name)
                    del self.unref[name]
        return out


_current: BlobStore | None = None


def configure(store: BlobStore | None) -> None:
    """Set the store every change log of this process writes its snapshots' large blobs
    to (``archwatch run`` with recovery: ``<recovery dir>/blobs``); None: blobs stay in
    the snapshots, as without recovery, in tests and in a replay."""
    global _current
    _current = store


@contextlib.contextmanager
def using(store: BlobStore | None) -> Iterator[None]:
    """:func:`configure` for a block (a run, a test), then the store before it again."""
    before = _current
    configure(store)
    try:
        yield
    finally:
        configure(before)


def current() -> BlobStore | None:
    return _current


def required() -> BlobStore:
    """The store, for reading a snapshot that names files."""
    if _current is None:
        raise BlobMissing("a recovery snapshot names blob files, but no blob store is "
                          "configured in this process (archwatch.blobstore.configure)")
    return _current
