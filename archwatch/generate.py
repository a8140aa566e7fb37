"""`archwatch generate`: a synthetic workload with planted anomalies and its ground truth.

The ground truth is written by the *planter*, from what it planted and the contract's
rules as plain arithmetic on the planted times, never by running the engine: a replay
that matches it is an independent check of the engine.

Every case gets at most one planted kind, and kinds are built so they do not interact
(e.g. a late receipt is pushed shortly before it arrives, so only the archive deadline
is missed). Events are delivered out of order within ``--disorder`` and some lines are
redelivered or malformed.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import json
import random
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from archwatch.catalog import REGIONS, Item, build_catalog
from archwatch.kpi import time_diff_days
from archwatch.timeutil import (
    DAY_MS,
    SHANGHAI,
    parse_duration,
    parse_ts,
    shanghai_year,
    to_iso_utc,
    to_shanghai_text,
)

H = 3_600_000
MIN = 60_000

KINDS_WEIGHTED: list[tuple[str, int]] = [
    ("missing", 8), ("late", 8), ("check_fail_fixed", 6), ("check_fail_open", 5),
    ("metadata", 5), ("invalid_no", 4), ("hash", 4), ("dup_receipt", 5), ("dup_archive", 4),
    ("conflict", 4), ("not_checked", 5), ("not_backed_up", 4), ("not_distributed", 4),
    ("dist_failed", 5), ("push_late", 5), ("orphan", 4), ("orphan_resolved", 4),
    ("pending", 6),
]

SOURCE_FILE = {
    "case.completed": "cases", "province.pushed": "pushes", "archive.received": "receipts",
    "archive.checked": "receipts", "archive.backedUp": "receipts",
    "archive.distributed": "distributions", "receiver.heartbeat": "heartbeats",
    "interface.error": "heartbeats",
}


@dataclass
class GenerateOptions:
    cases: int = 10_000
    seed: int = 1
    anomaly_rate: float = 0.05
    redelivery_rate: float = 0.01
    reject_rate: float = 0.001
    disorder: str = "PT2M"
    split_sources: bool = False
    start: str = "2024-11-01T00:00:00+08:00"  # completions span New Year 2025
    span_days: int = 90
    heartbeat_hours: int = 6  # receivers beat every minute over the last hours before asOf


def _sh(ms: int) -> str:
    """Epoch ms as RFC 3339 in +08:00, as Hangzhou's systems write it."""
    dt = datetime.fromtimestamp(ms / 1000, SHANGHAI)
    return dt.isoformat(timespec="milliseconds")


SPOOL_CHUNK = 500_000  # events sorted in memory at a time (≈ 0.5 GB)


class _Spool:
    """The workload's events, handed back in delivery order, in bounded memory: kept as
    their JSON lines, sorted a chunk at a time, spilled to temporary files and merged
    (an external sort). Held whole, 10M events took more than this machine's 24 GiB."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.chunk = SPOOL_CHUNK
        self.buf: list[tuple[int, int, str, str]] = []  # (delivery, seq, type, line)
        self.files: list[Path] = []
        self.n = 0

    def add(self, delivery: int, seq: int, etype: str, line: str) -> None:
        self.buf.append((delivery, seq, etype, line))
        self.n += 1
        if len(self.buf) >= self.chunk:
            self._spill()

    def _spill(self) -> None:
        self.buf.sort()
        path = self.tmp / f"spool-{len(self.files):04d}.tsv"
        with path.open("w", encoding="utf-8") as f:  # JSON escapes tabs and newlines
            f.writelines(f"{d}\t{q}\t{t}\t{line}\n" for d, q, t, line in self.buf)
        self.files.append(path)
        self.buf = []

    def __iter__(self) -> Iterator[tuple[str, str]]:
        """(type, line) of every event, by delivery time (ties: the order emitted)."""
        if not self.files:
            self.buf.sort()
            for _d, _q, etype, line in self.buf:
                yield etype, line
            return
        if self.buf:
            self._spill()

        def read(path: Path) -> Iterator[tuple[int, int, str, str]]:
            with path.open(encoding="utf-8") as f:
                for row in f:
                    d, q, t, line = row.rstrip("\n").split("\t", 3)
                    yield int(d), int(q), t, line

        for _d, _q, etype, line in heapq.merge(*(read(f) for f in self.files)):
            yield etype, line


class _Planter:
    def __init__(self, opts: GenerateOptions, tmp: Path) -> None:
        self.opts = opts
        self.rng = random.Random(opts.seed)
        self.catalog = build_catalog(opts.seed)
        ranks = range(1, len(self.catalog) + 1)
        weights = [1 / r**0.7 for r in ranks]
        self.rng.shuffle(self.catalog)
        total = 0.0
        self.cum: list[float] = []
        for w in weights:
            total += w
            self.cum.append(total)
        self.events = _Spool(tmp)
        self.seq = 0
        self.case_seq = 0
        self.anomalies: list[dict[str, Any]] = []
        self.cases: dict[str, dict[str, Any]] = {}  # caseNo -> truth
        self.start = parse_ts(opts.start)
        self.last_completion = self.start + opts.span_days * DAY_MS
        self.as_of = self.last_completion + 45 * DAY_MS
        self.disorder = parse_duration(opts.disorder)

    # -- helpers ---------------------------------------------------------------
    def emit(self, etype: str, at: int, source: str, **payload: Any) -> dict[str, Any]:
        self.seq += 1
        ev = {"eventId": f"ev-{self.opts.seed}-{self.seq:09d}", "type": etype,
              "occurredAt": _sh(at), "source": source, **payload}
        delay = self.rng.randint(0, self.disorder) if self.disorder else 0
        self.events.add(at + delay, self.seq, etype, json.dumps(ev, ensure_ascii=False))
        return ev

    def anomaly(self, code: str, opened: int, resolved: int | None, case_no: str | None = None,
                archive_no: str | None = None, receiver_id: str | None = None) -> None:
        self.anomalies.append({
            "code": code, "caseNo": case_no, "archiveNo": archive_no, "receiverId": receiver_id,
            "openedAt": to_iso_utc(opened), "resolvedAt": to_iso_utc(resolved),
        })

    def item(self) -> Item:
        return self.rng.choices(self.catalog, cum_weights=self.cum)[0]

    def new_case_no(self, completed: int) -> str:
        self.case_seq += 1
        day = datetime.fromtimestamp(completed / 1000, SHANGHAI).strftime("%Y%m%d")
        return f"HZ{day}{self.case_seq:08d}"

    def archive_no(self, item: Item, completed: int, seq: int, year: int | None = None,
                   retention: str = "D100") -> str:
        y = year if year is not None else shanghai_year(completed)
        return (f"{item.qym}-{item.kind_no:02d}-{item.main:05d}-{item.sub:03d}-{y}-"
                f"{retention}-{seq % 10_000_000:07d}")

    def completion(self, case_no: str, item: Item, completed: int, reported: int) -> None:
        self.emit("case.completed", reported, item.system_code, caseNo=case_no,
                  taskId=item.task_id, taskCode=item.task_code, taskName=item.task_name,
                  deptCode=item.dept_code, deptName=item.dept_name, qym=item.qym,
                  area=item.area, systemCode=item.system_code, systemName=item.system_name,
                  systemLevel=item.system_level, completedAt=_sh(completed))

    def receipt(self, case_no: str, archive_no: str, item: Item, completed: int, at: int,
                sha: str, dept_code: str | None = None) -> None:
        self.emit("archive.received", at, "ARCHIVE-CENTER", caseNo=case_no, archiveNo=archive_no,
                  receiverQym=item.qym, packageSha256=sha,
                  meta={"taskCode": item.task_code, "deptCode": dept_code or item.dept_code,
                        "qym": item.qym, "completedAt": _sh(completed)})

    def downstream(self, case_no: str, archive_no: str, item: Item, received: int, sha: str,
                   check: str = "pass", backup: str = "ok", dist: str = "ok") -> tuple[int, int]:
        """Check, backup and distribution of one archive; returns (check, backup) times."""
        rng = self.rng
        k = received + rng.randint(MIN, 5 * H)
        if check == "pass":
            self.emit("archive.checked", k, "ARCHIVE-CENTER", archiveNo=archive_no,
                      caseNo=case_no, passed=True, failedItems=[])
        elif check in ("fail_fixed", "fail_open"):
            self.emit("archive.checked", k, "ARCHIVE-CENTER", archiveNo=archive_no,
                      caseNo=case_no, passed=False,
                      failedItems=[rng.choice(["GD-1-1", "GD-1-7", "GD-2-6", "GD-3-8", "GD-4-3"])])
            if check == "fail_fixed":
                self.emit("archive.checked", k + H, "ARCHIVE-CENTER", archiveNo=archive_no,
                          caseNo=case_no, passed=True, failedItems=[])
                self.anomaly("CHECK_FAILED", k, k + H, case_no, archive_no)
            else:
                self.anomaly("CHECK_FAILED", k, None, case_no, archive_no)
        elif check == "none":
            self.anomaly("NOT_CHECKED", received + 6 * H, None, case_no, archive_no)
        if backup == "none":
            self.anomaly("NOT_BACKED_UP", received + DAY_MS, None, case_no, archive_no)
            return k, -1
        b = received + rng.randint(H, 20 * H)
        backup_id = f"bk-{archive_no[-7:]}-{self.seq}"
        self.emit("archive.backedUp", b, "BACKUP-CENTER", archiveNo=archive_no, caseNo=case_no,
                  backupId=backup_id, sha256=sha if backup == "ok" else "f" * 64)
        if backup == "bad_hash":
            self.anomaly("BACKUP_HASH_MISMATCH", max(b, received), None, case_no, archive_no)
        if dist == "none":
            self.anomaly("NOT_DISTRIBUTED", b + DAY_MS, None, case_no, archive_no)
            return k, b
        s = b + rng.randint(10 * MIN, 10 * H)
        dist_no = f"FF{self.seq:09d}"
        common = {"archiveNo": archive_no, "caseNo": case_no, "distributionNo": dist_no,
                  "targetQym": item.qym}
        self.emit("archive.distributed", s, "ARCHIVE-CENTER", status="sent", **common)
        if dist == "failed":
            self.emit("archive.distributed", s + 5 * MIN, "ARCHIVE-CENTER", status="failed",
                      **common)
            self.emit("archive.distributed", s + H, "ARCHIVE-CENTER", status="acked", **common)
            self.anomaly("DISTRIBUTION_FAILED", s + 5 * MIN, s + H, case_no, archive_no)
        else:
            self.emit("archive.distributed", s + rng.randint(MIN, H), "ARCHIVE-CENTER",
                      status="acked", **common)
        return k, b

    # -- one case ----------------------------------------------------------------
    def plant_case(self, kind: str) -> None:
        rng = self.rng
        item = self.item()
        completed = self.start + rng.randint(0, self.opts.span_days * DAY_MS)
        if kind == "pending":
            completed = self.as_of - rng.randint(DAY_MS, 20 * DAY_MS)
        case_no = self.new_case_no(completed)
        sha = hashlib.sha256(case_no.encode()).hexdigest()
        truth: dict[str, Any] = {"item": item, "completed": completed, "first": None,
                                 "archives": 0, "status": "ARCHIVED_OK"}
        reported = completed + MIN
        if kind != "orphan":
            self.cases[case_no] = truth

        if kind == "pending":
            self.completion(case_no, item, completed, reported)
            truth["status"] = "PENDING"
            return
        if kind == "missing":
            self.completion(case_no, item, completed, reported)
            pushed = completed + 2 * H
            self.emit("province.pushed", pushed, "ZJ-PROVINCE", caseNo=case_no,
                      batchNo=f"B{self.seq:09d}", targetQym=item.qym)
            self.anomaly("MISSING_ARCHIVE", completed + 30 * DAY_MS, None, case_no)
            self.anomaly("PUSH_NOT_RECEIVED", pushed + 2 * DAY_MS, None, case_no)
            truth["status"] = "MISSING"
            return

        if kind == "late":
            received = completed + 30 * DAY_MS + rng.randint(H, 5 * DAY_MS)
        elif kind == "push_late":
            received = completed + rng.randint(4 * DAY_MS, 20 * DAY_MS)
        else:
            received = completed + rng.randint(4 * H, 20 * DAY_MS)
        if kind == "push_late":
            pushed = received - 3 * DAY_MS
            self.anomaly("PUSH_NOT_RECEIVED", pushed + 2 * DAY_MS, received, case_no)
        else:
            span = min(received - completed - H, DAY_MS)
            pushed = received - int(span * rng.uniform(0.1, 0.9))
        if kind == "orphan_resolved":
            reported = received + 2 * DAY_MS
            self.anomaly("ORPHAN_ARCHIVE", received + DAY_MS, reported, case_no)
        if kind != "orphan":
            self.completion(case_no, item, completed, reported)
        else:
            self.anomaly("ORPHAN_ARCHIVE", received + DAY_MS, None, case_no)
        self.emit("province.pushed", pushed, "ZJ-PROVINCE", caseNo=case_no,
                  batchNo=f"B{self.seq:09d}", targetQym=item.qym)
        if kind == "late":
            self.anomaly("MISSING_ARCHIVE", completed + 30 * DAY_MS, received, case_no)
            self.anomaly("LATE_ARCHIVE", received, None, case_no)

        seq = self.case_seq
        year = shanghai_year(completed) - 1 if kind == "invalid_no" else None
        archive_no = self.archive_no(item, completed, seq, year)
        self.receipt(case_no, archive_no, item, completed, received, sha,
                     dept_code="001008999999999" if kind == "metadata" else None)
        truth["first"], truth["archives"] = received, 1
        if kind == "metadata":
            self.anomaly("METADATA_MISMATCH", max(received, reported), None, case_no, archive_no)
            truth["status"] = "ARCHIVED_FAIL"
        if kind == "invalid_no":
            self.anomaly("INVALID_ARCHIVE_NO", max(received, reported), None, case_no, archive_no)
            truth["status"] = "ARCHIVED_FAIL"
        check = {"check_fail_fixed": "fail_fixed", "check_fail_open": "fail_open",
                 "not_checked": "none"}.get(kind, "pass")
        backup = {"hash": "bad_hash", "not_backed_up": "none"}.get(kind, "ok")
        dist = {"not_distributed": "none", "dist_failed": "failed"}.get(kind, "ok")
        self.downstream(case_no, archive_no, item, received, sha, check, backup, dist)
        if kind in ("check_fail_open", "hash"):
            truth["status"] = "ARCHIVED_FAIL"
        elif kind == "not_checked":
            truth["status"] = "ARCHIVED_UNCHECKED"
        if kind == "dup_receipt":
            again = received + 2 * H
            self.receipt(case_no, archive_no, item, completed, again, sha)
            self.anomaly("DUPLICATE_RECEIPT", again, None, case_no, archive_no)
        elif kind == "dup_archive":
            second = self.archive_no(item, completed, seq, retention="D30")
            at = received + 3 * H
            self.receipt(case_no, second, item, completed, at, sha)
            self.downstream(case_no, second, item, at, sha)
            self.anomaly("DUPLICATE_ARCHIVE", at, None, case_no, second)
            truth["archives"] = 2
        elif kind == "conflict":
            self.plant_conflict(case_no, archive_no, item, completed, received)

    def plant_conflict(self, owner: str, archive_no: str, item: Item, completed: int,
                       received: int) -> None:
        """A second case (same item, an hour later) receives the owner's archive number."""
        other_completed = completed + H
        if shanghai_year(other_completed) != shanghai_year(completed):
            other_completed = completed  # keep the archive number's year valid
        case_no = self.new_case_no(other_completed)
        sha = hashlib.sha256(case_no.encode()).hexdigest()
        at = received + H
        self.completion(case_no, item, other_completed, other_completed + MIN)
        self.emit("province.pushed", at - 2 * H, "ZJ-PROVINCE", caseNo=case_no,
                  batchNo=f"B{self.seq:09d}", targetQym=item.qym)
        self.receipt(case_no, archive_no, item, other_completed, at, sha)
        self.downstream(case_no, archive_no, item, at, sha)
        self.anomaly("ARCHIVE_NO_CONFLICT", at, None, case_no, archive_no)
        self.cases[case_no] = {"item": item, "completed": other_completed, "first": at,
                               "archives": 1, "status": "ARCHIVED_OK"}

    # -- receivers -------------------------------------------------------------
    def plant_receivers(self) -> list[dict[str, Any]]:
        rng = self.rng
        regs = []
        hours = self.opts.heartbeat_hours
        start = self.as_of - hours * H
        for i, (qym, _area) in enumerate(REGIONS):
            rid = f"recv-{qym}"
            regs.append({"receiverId": rid, "qym": qym, "period": "PT1M", "grace": "PT2M"})
            t = start + rng.randint(0, 30_000)
            stop = self.as_of - MIN
            silent_from = self.as_of - 20 * MIN if i == 3 else None
            gap_at = start + rng.randint(H // 4, hours * H - H // 2) if i % 4 == 1 else None
            last = None
            while t <= stop:
                if silent_from is not None and t >= silent_from:
                    break
                if gap_at is not None and last is not None and t >= gap_at:
                    nxt = t + 5 * MIN
                    self.anomaly("RECEIVER_DOWN", last + 3 * MIN, nxt, receiver_id=rid)
                    t, gap_at = nxt, None
                self.emit("receiver.heartbeat", t, rid.upper(), receiverId=rid, qym=qym,
                          status="ok" if rng.random() > 0.02 else "degraded", version="2.3.1")
                last = t
                t += MIN + rng.randint(-500, 500)
            if silent_from is not None and last is not None or last is not None and last + 3 * MIN < self.as_of:
                self.anomaly("RECEIVER_DOWN", last + 3 * MIN, None, receiver_id=rid)
        for k in range(3):  # an unregistered receiver: kept and flagged, never alerted
            self.emit("receiver.heartbeat", self.as_of - (k + 2) * MIN, "ZZ-RECV",
                      receiverId="recv-unregistered", qym="330199")
        self.emit("interface.error", self.as_of - 30 * MIN, "RECV-330110",
                  receiverId="recv-330110", qym="330110", endpoint="/archive/receive",
                  errorCode="E503", message="上游超时")
        return regs


BAD_LINES = [
    '{"eventId": "bad", "type": "case.completed", ',
    '{"eventId": "bad-%d", "type": "case.reopened", "occurredAt": "2025-01-01T10:00:00+08:00", "source": "X", "caseNo": "HZ1"}',
    '{"eventId": "bad-%d", "type": "receiver.heartbeat", "occurredAt": "2025-01-01T10:00:00", "source": "X", "receiverId": "r", "qym": "330101"}',
    '{"eventId": "bad-%d", "type": "archive.checked", "occurredAt": "2025-01-01T10:00:00+08:00", "source": "X", "caseNo": "HZ1", "archiveNo": "A", "passed": "yes", "failedItems": []}',
    '[1, 2, 3]',
]


def generate(out: Path, opts: GenerateOptions, progress: bool = False) -> dict[str, Any]:
    """Write ``events.jsonl``, ``receivers.json``, ``truth.json`` (and per-source files)."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=".spool-") as tmp:
        return _generate(out, opts, progress, Path(tmp))


def _generate(out: Path, opts: GenerateOptions, progress: bool, tmp: Path) -> dict[str, Any]:
    p = _Planter(opts, tmp)
    rng = p.rng
    kinds = [k for k, _ in KINDS_WEIGHTED]
    weights = [w for _, w in KINDS_WEIGHTED]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=opts.cases, unit="case", desc="generate")
    planted: Counter[str] = Counter()
    for i in range(opts.cases):
        kind = rng.choices(kinds, weights)[0] if rng.random() < opts.anomaly_rate else "normal"
        planted[kind] += 1
        p.plant_case(kind)
        if bar is not None and i % 1000 == 999:
            bar.update(1000)
    if bar is not None:
        bar.close()
    regs = p.plant_receivers()
    # events after --as-of: read, not applied
    n_after = max(1, opts.cases // 2000)
    for _ in range(n_after):
        item = p.item()
        completed = p.as_of + rng.randint(MIN, DAY_MS)
        p.completion(p.new_case_no(completed), item, completed, completed + MIN)

    n_events = p.events.n
    # redeliveries: an exact copy of the i-th line, 1 to 50 lines after it; malformed
    # lines at random places. Drawn first, then woven in while the sorted events stream out.
    dups = int(n_events * opts.redelivery_rate)
    copies: dict[int, list[int]] = {}
    for _ in range(dups):
        copies.setdefault(rng.randrange(n_events), []).append(rng.randint(1, 50))
    rejects = max(len(BAD_LINES), int(n_events * opts.reject_rate))
    bad_at: dict[int, list[str]] = {}
    for r in range(rejects):
        bad = BAD_LINES[r % len(BAD_LINES)]
        bad_at.setdefault(rng.randrange(n_events + 1), []).append(bad % r if "%d" in bad else bad)

    files = ["events.jsonl"]
    with contextlib.ExitStack() as stack:
        main = stack.enter_context((out / "events.jsonl").open("w", encoding="utf-8"))
        split: dict[str, TextIO] = {}

        def write(etype: str | None, line: str) -> None:
            main.write(line + "\n")
            if opts.split_sources:
                name = SOURCE_FILE.get(etype or "", "other")
                f = split.get(name)
                if f is None:
                    f = split[name] = stack.enter_context(
                        (out / f"{name}.jsonl").open("w", encoding="utf-8"))
                f.write(line + "\n")

        pending: list[tuple[int, int, str, str]] = []  # (after line i, order, type, line)
        for i, (etype, line) in enumerate(p.events):
            for bad in bad_at.pop(i, ()):
                write(_type_of(bad), bad)
            write(etype, line)
            for offset in copies.get(i, ()):
                heapq.heappush(pending, (i + offset, len(pending), etype, line))
            while pending and pending[0][0] <= i:
                _at, _o, dtype, dline = heapq.heappop(pending)
                write(dtype, dline)
        while pending:
            _at, _o, dtype, dline = heapq.heappop(pending)
            write(dtype, dline)
        for bads in bad_at.values():
            for bad in bads:
                write(_type_of(bad), bad)
        files += sorted(f"{name}.jsonl" for name in split)
    (out / "receivers.json").write_text(json.dumps(regs, ensure_ascii=False, indent=1))

    truth = _truth(p, n_events, dups, rejects, n_after, planted, regs)
    truth["files"] = files
    (out / "truth.json").write_text(json.dumps(truth, ensure_ascii=False, indent=1))
    return truth


def _type_of(line: str) -> str | None:
    """A malformed line's ``type``, if it has one (it goes to that source's file)."""
    try:
        return json.loads(line).get("type")
    except (json.JSONDecodeError, AttributeError):
        return None


def _truth(p: _Planter, n_events: int, dups: int, rejects: int, n_after: int,
           planted: Counter[str], regs: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, dict[str, int]] = {}
    receiver_qym = {r["receiverId"]: r["qym"] for r in regs}
    for a in p.anomalies:
        # the case's attributes, filled in whenever the case is known (contract §4)
        case = p.cases.get(a["caseNo"]) if a["caseNo"] else None
        item: Item | None = case["item"] if case else None
        a["qym"] = item.qym if item else receiver_qym.get(a["receiverId"])
        a["deptCode"] = item.dept_code if item else None
        a["systemCode"] = item.system_code if item else None
        a["taskCode"] = item.task_code if item else None
        s = summary.setdefault(a["code"], {"total": 0, "open": 0})
        s["total"] += 1
        s["open"] += a["resolvedAt"] is None
    kpi: dict[tuple[str, ...], dict[str, Any]] = {}
    statuses: Counter[str] = Counter()
    for c in p.cases.values():
        item: Item = c["item"]
        statuses[c["status"]] += 1
        key = (str(shanghai_year(c["completed"])), item.qym, item.dept_code, item.system_code,
               item.task_id)
        k = kpi.setdefault(key, {"kpi": 0, "archived": 0, "archivedSucc": 0, "archivedFail": 0,
                                 "cycle": 0, "last": None})
        k["kpi"] += 1
        if c["first"] is not None:
            k["archived"] += 1
            k["cycle"] += c["first"] - c["completed"]
            k["last"] = c["first"] if k["last"] is None else max(k["last"], c["first"])
            k["archivedSucc"] += c["status"] == "ARCHIVED_OK"
            k["archivedFail"] += c["status"] == "ARCHIVED_FAIL"
    kpi_rows = []
    for key in sorted(kpi):
        k = kpi[key]
        kpi_rows.append({
            "year": key[0], "qym": key[1], "deptCode": key[2], "systemCode": key[3],
            "taskId": key[4], "kpi": k["kpi"], "archived": k["archived"],
            "archivedSucc": k["archivedSucc"], "archivedFail": k["archivedFail"],
            "UnArchived": k["kpi"] - k["archived"],
            "timeDiff": time_diff_days(k["cycle"], k["archived"]),
            "lastReceive": to_shanghai_text(k["last"]),
        })
    return {
        "asOf": datetime.fromtimestamp(p.as_of / 1000, UTC).isoformat().replace("+00:00", "Z"),
        "events": n_events + dups + rejects,
        "counts": {"read": n_events + dups + rejects, "applied": n_events - n_after,
                   "duplicate": dups, "rejected": rejects, "afterAsOf": n_after},
        "planted": dict(sorted(planted.items())),
        "statuses": dict(sorted(statuses.items())),
        "summary": dict(sorted(summary.items())),
        "anomalies": sorted(p.anomalies, key=lambda a: json.dumps(a, sort_keys=True)),
        "kpi": kpi_rows,
    }
