"""What recovery writes at every epoch, against what changed in it.

Bytewax snapshots every key a step touched in an epoch, whole: it pickles what the
logic's ``snapshot()`` returns and writes it into its SQLite partition, then deletes the
superseded epoch's rows. archwatch's shards hand it logs of what changed (engine
ChangeLog), so *building* a snapshot costs what changed; but the pickled logs still carry
every blob written before, so the bytes written each epoch follow the state held. So do
a case shard's KPI accumulators and its table of shared tuples, which grow with the
catalogue's items times the shards (every shard sees most items).

Drives the engine's shards (as bench/memory.py: ``case.completed`` events that stay
open, ``--batch`` new cases an epoch) and after each epoch pickles every case and
event-id shard as Bytewax does. Baseline, in the same run: the bytes new in that epoch
(change-log blobs, packed KPI accumulators and
shared-tuple chunks no earlier epoch's snapshot held). Also timed: writing the epoch's pickles into
an SQLite file the way Bytewax's recovery does (WAL, one transaction, then the previous
epoch deleted), to put a cost on the bytes.

With ``--files``, as ``archwatch run`` does with recovery (``--snapshot-file-bytes``,
archwatch.blobstore): the logs' blobs of 64 KiB or more (their newest small ones folded into one once they hold that much) are written once as files and
the snapshots name them; the files written in an epoch count as written, and their
writing (synced) is timed.

    .venv/bin/python bench/snapshot_bytes.py                  # 200k open cases
    .venv/bin/python bench/snapshot_bytes.py --files          # blobs to files
    .venv/bin/python bench/snapshot_bytes.py --cases 1000000  # a city's scale (≈ 20 min)
"""

from __future__ import annotations

import argparse
import pickle
import sqlite3
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from _common import TMP, table, write_results
from memory import completion_lines
from prometheus_client import REGISTRY

from archwatch import blobstore
from archwatch.blobstore import BlobStore

MB = 1_000_000


PARTS = ("case logs", "KPI accs", "shared tuples", "event ids")


def pieces(eng: Any) -> Iterator[tuple[str, bytes]]:
    """The pieces a snapshot is made of, by part: the case shards' change logs of packed
    cases, their packed KPI accumulators and their tables of shared tuples (items, names,
    KPI keys; one table a shard), and the event-id shards' change logs. A piece that an
    epoch did not touch is the same bytes object as before."""
    for sh in eng.cases.values():
        for b in sh._cases_log.blobs:
            yield "case logs", b
        for a in sh.kpi.values():
            if type(a) is bytes:
                yield "KPI accs", a
        for b in sh.refs.blobs:
            yield "shared tuples", b
    for sh in eng.dedup.values():
        for log in (sh._seen_log, sh._queue_log):
            for b in log.blobs:
                yield "event ids", b


class BytewaxLikeWriter:
    """Bytewax's snapshot table and write pattern (src/recovery.rs), from Python."""

    def __init__(self, path: Path) -> None:
        self.con = sqlite3.connect(path, isolation_level=None)
        self.con.execute("PRAGMA journal_mode=WAL")
        self.con.execute("CREATE TABLE snaps (step_id TEXT, state_key TEXT, snap_epoch "
                         "INTEGER, ser_change BLOB, PRIMARY KEY (step_id, state_key, "
                         "snap_epoch))")

    def write(self, epoch: int, snaps: list[tuple[str, bytes]]) -> float:
        t0 = time.perf_counter()
        self.con.execute("BEGIN")
        for key, ser in snaps:
            self.con.execute("INSERT INTO snaps VALUES ('s', ?, ?, ?) ON CONFLICT DO UPDATE "
                             "SET ser_change = excluded.ser_change", (key, epoch, ser))
        self.con.execute("COMMIT")
        self.con.execute("DELETE FROM snaps WHERE snap_epoch < ?", (epoch,))
        return time.perf_counter() - t0


def files_written() -> tuple[float, float]:
    """Bytes of blob files written so far, and the seconds taken (archwatch's /metrics
    counters, in this process)."""
    return (REGISTRY.get_sample_value("archwatch_snapshot_file_bytes_total") or 0.0,
            REGISTRY.get_sample_value("archwatch_snapshot_file_write_seconds_total") or 0.0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=200_000, help="open cases at the end")
    ap.add_argument("--batch", type=int, default=25_000,
                    help="new cases an epoch (25,000: 5 s epochs at 5,000 events/s)")
    ap.add_argument("--files", action="store_true",
                    help="large log blobs to files, as `archwatch run` with recovery")
    ap.add_argument("--report-every", dest="every", type=int, default=2,
                    help="print every Nth epoch")
    args = ap.parse_args()

    from archwatch.catalog import build_catalog
    from archwatch.harness import Engine
    from archwatch.settings import EngineSettings

    class StateOnly(Engine):
        def _write(self, out: Any) -> None:  # the sink ships rows away; keep none
            return None

    catalog = build_catalog(1)
    eng = StateOnly(EngineSettings())
    rows: list[list[Any]] = []
    results: list[dict[str, Any]] = []
    held: dict[int, tuple[str, bytes]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-snapbytes-", dir=TMP) as tmp, \
            blobstore.using(BlobStore(Path(tmp) / "blobs") if args.files else None):
        writer = BytewaxLikeWriter(Path(tmp) / "part-0.sqlite3")
        for epoch, first in enumerate(range(0, args.cases, args.batch), start=1):
            eng.feed(completion_lines(catalog, first, min(args.batch, args.cases - first)))
            bytes0, seconds0 = files_written()
            t0 = time.perf_counter()
            snaps = [(f"{step}/{key}", pickle.dumps(sh, protocol=pickle.HIGHEST_PROTOCOL))
                     for step, group in (("cases", eng.cases), ("dedup", eng.dedup))
                     for key, sh in group.items()]
            pickle_s = time.perf_counter() - t0
            bytes1, seconds1 = files_written()
            to_files, files_s = int(bytes1 - bytes0), seconds1 - seconds0
            written = sum(len(s) for _k, s in snaps) + to_files
            # the baseline: the pieces no earlier epoch's snapshot held (what a writer
            # of the changes only would write)
            now = {id(b): (part, b) for part, b in pieces(eng)}
            r_parts = dict.fromkeys(PARTS, 0)
            new = 0
            for key, (part, b) in now.items():
                r_parts[part] += len(b)
                if key not in held:
                    new += len(b)
            held = now  # (holding the pieces keeps their ids from being reused)
            write_s = writer.write(epoch, snaps)
            open_cases = sum(len(sh.cases) for sh in eng.cases.values())
            r = {"epoch": epoch, "open_cases": open_cases, "written_bytes": written,
                 "new_bytes": new, "ratio": written / max(new, 1), "pickle_s": pickle_s,
                 "sqlite_s": write_s, "file_bytes": to_files, "files_s": files_s}
            results.append(r)
            r.update(r_parts)
            if epoch % args.every == 0 or first + args.batch >= args.cases:
                rows.append([open_cases, written / MB, new / MB, r["ratio"],
                             *(r[p] / MB for p in PARTS), to_files / MB, pickle_s * 1000,
                             files_s * 1000, write_s * 1000])
            print(f"  epoch {epoch}: {open_cases:,} open cases, {written / MB:,.1f} MB "
                  f"written", file=sys.stderr)
        writer.con.close()
    table(["open cases", "MB written", "MB new (baseline)", "x baseline",
           *(f"MB {p}" for p in PARTS), "MB to files", "pickle ms", "files ms",
           "SQLite ms"], rows,
          f"recovery's writes an epoch ({args.batch:,} new open cases each"
          f"{'; large log blobs to files' if args.files else ''})")
    write_results("snapshot_bytes" + ("_files" if args.files else ""),
                  {"cases": args.cases, "batch": args.batch, "files": args.files,
                   "epochs": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
