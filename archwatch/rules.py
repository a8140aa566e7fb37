"""The reconciliation rules of one case: pure functions, no Bytewax, no I/O.

Design: per case we keep the *set* of facts seen (compact records of its events) and
evaluate the contract's rules over that set at a watermark ``wm``. The result is the
batch answer for that case, so it cannot depend on the order in which the facts
arrived (contract §3); the engine only diffs successive results to emit changes.
A case has ~7 events, so re-evaluating it whole on every change is cheap and removes
a whole class of incremental-update bugs.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from dataclasses import dataclass
from sys import intern
from typing import Any, NamedTuple, TypeVar

from archwatch.timeutil import DAY_MS, parse_duration, parse_ts, shanghai_year

# ---------------------------------------------------------------------------
# Anomaly codes and their classes (§4)

CLASS_OF_CODE: dict[str, str] = {
    "MISSING_ARCHIVE": "漏",
    "LATE_ARCHIVE": "漏",
    "PUSH_NOT_RECEIVED": "漏",
    "NOT_CHECKED": "漏",
    "NOT_BACKED_UP": "漏",
    "NOT_DISTRIBUTED": "漏",
    "DISTRIBUTION_FAILED": "漏",
    "CHECK_FAILED": "错",
    "METADATA_MISMATCH": "错",
    "INVALID_ARCHIVE_NO": "错",
    "ORPHAN_ARCHIVE": "错",
    "BACKUP_HASH_MISMATCH": "错",
    "DUPLICATE_ARCHIVE": "重",
    "DUPLICATE_RECEIPT": "重",
    "ARCHIVE_NO_CONFLICT": "重",
    "RECEIVER_DOWN": "link",
}
ERROR_CODES = frozenset(c for c, k in CLASS_OF_CODE.items() if k == "错")

ARCHIVE_NO_RE = re.compile(r"^\d{6}-\d{2}-\d{5}-\d{3}-(\d{4})-(?:Y|D\d{2,3})-\d{7}$")


@dataclass(frozen=True, slots=True)
class Sla:
    """Deadlines in milliseconds (§3 table); build with :meth:`from_iso`."""

    archive: int = 30 * DAY_MS
    push: int = 2 * DAY_MS
    check: int = 6 * 3_600_000
    backup: int = DAY_MS
    distribution: int = DAY_MS
    orphan: int = DAY_MS
    lateness: int = 5 * 60_000

    @classmethod
    def from_iso(cls, **durations: str | None) -> Sla:
        """``Sla.from_iso(archiveSla="P30D", lateness="PT5M", ...)``; None keeps a default."""
        names = {
            "archiveSla": "archive", "pushSla": "push", "checkSla": "check",
            "backupSla": "backup", "distributionSla": "distribution",
            "orphanGrace": "orphan", "lateness": "lateness",
        }
        kwargs = {}
        for key, value in durations.items():
            if key not in names:
                raise ValueError(f"unknown SLA setting {key!r}")
            if value is not None:
                kwargs[names[key]] = parse_duration(value)
        return cls(**kwargs)


def anomaly_id(code: str, case_no: str, archive_no: str, receiver_id: str, disc: str) -> str:
    """Stable id: a hash of the code, its keys and the discriminator (§4)."""
    text = "\x1f".join((code, case_no, archive_no, receiver_id, disc))
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


# ---------------------------------------------------------------------------
# Facts kept per case (compact; what the rules need and nothing else)


_ITEMS: dict[tuple[str, ...], tuple[str, ...]] = {}
_T = TypeVar("_T")

# Every shared tuple (an item, its display names, a KPI group's key) has a number for the
# process's life, by identity (the registries keep them alive, so their ids are not
# reused; see _shared for one that loses a race): a case shard's snapshot table finds a
# tuple's place in it through this number (engine._Refs) instead of an index of the
# whole table built at every snapshot.
SHARED_NO: dict[int, int] = {}
_next_no = itertools.count()  # next() is atomic: worker threads may register at once


def _shared(registry: dict[Any, Any], key: Any, new: _T) -> _T:
    """``registry[key]``, set to ``new`` (numbered) unless another thread got there first:
    a number is given before the tuple is visible, and one that loses the race is never
    placed in a table (a table keeps what it holds alive, so its id is not reused)."""
    SHARED_NO[id(new)] = next(_next_no)
    return registry.setdefault(key, new)  # type: ignore[no-any-return]


def _shared_item(item: tuple[str, ...]) -> tuple[str, ...]:
    """One tuple per distinct item (task, department, system, region) for all its cases:
    the catalogue has thousands of items and a city millions of open cases."""
    got = _ITEMS.get(item)
    if got is None:
        got = _shared(_ITEMS, item, tuple(intern(s) for s in item))
    return got


class Completion:
    """The case's defining completion: its event, times and a shared item tuple
    (task id/code/name, dept code/name, qym, area, system code/name/level)."""

    __slots__ = ("event_id", "at", "completed_at", "item")

    def __init__(self, event_id: str, at: int, completed_at: int, *item: str) -> None:
        self.event_id = event_id
        self.at = at
        self.completed_at = completed_at
        self.item = _shared_item(item)

    def __getstate__(self) -> tuple[Any, ...]:
        return (self.event_id, self.at, self.completed_at, self.item)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.event_id, self.at, self.completed_at, item = state
        self.item = _shared_item(item)  # restored snapshots share items again

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Completion) and self.__getstate__() == other.__getstate__()

    def __hash__(self) -> int:
        return hash(self.__getstate__())

    def __repr__(self) -> str:
        return f"Completion{self.__getstate__()!r}"

    task_id = property(lambda self: self.item[0])
    task_code = property(lambda self: self.item[1])
    task_name = property(lambda self: self.item[2])
    dept_code = property(lambda self: self.item[3])
    dept_name = property(lambda self: self.item[4])
    qym = property(lambda self: self.item[5])
    area = property(lambda self: self.item[6])
    system_code = property(lambda self: self.item[7])
    system_name = property(lambda self: self.item[8])
    system_level = property(lambda self: self.item[9])

    def order(self) -> tuple[int, str]:
        return (self.at, self.event_id)


@dataclass(slots=True)
class Receipt:
    event_id: str
    at: int
    archive_no: str
    package_sha: str
    # taskCode, deptCode, qym as the package states them, and its completedAt in epoch ms
    # (None when absent or unreadable: that disagrees with any case)
    meta: tuple[Any, Any, Any, int | None]


@dataclass(slots=True)
class Step:
    """A check, backup or distribution report: ``flag`` is passed / backupId / status."""

    event_id: str
    at: int
    key: str  # "" for checks, backupId, distributionNo
    value: Any  # passed (bool), sha256 (str), status (str)


class CaseFacts:
    """The facts of one case. Containers are created on first use (``None``/``()``
    until then): most open cases have a completion and nothing else yet, and five empty
    containers cost ~300 bytes a case."""

    __slots__ = ("case_no", "completion", "pushes", "receipts", "checks", "backups", "dists")

    def __init__(self, case_no: str) -> None:
        self.case_no = case_no
        self.completion: Completion | None = None
        self.pushes: dict[str, tuple[int, str]] | None = None  # batchNo -> earliest
        self.receipts: list[Receipt] | tuple[()] = ()
        self.checks: dict[str, list[Step]] | None = None  # archiveNo -> checks
        self.backups: dict[str, list[Step]] | None = None
        self.dists: dict[str, list[Step]] | None = None

    def __getstate__(self) -> tuple[Any, ...]:
        return tuple(getattr(self, n) for n in self.__slots__)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        for n, v in zip(self.__slots__, state, strict=True):
            setattr(self, n, v)

    def add(self, ev: Any) -> bool:
        """Add one validated event's facts; returns False when it cannot change anything."""
        t = ev.type
        if t == "case.completed":
            # item, department and system strings repeat across many cases: one copy each
            c = Completion(
                ev.eventId, ev.occurredAt, ev.completedAt, ev.taskId, ev.taskCode,
                ev.taskName, ev.deptCode, ev.deptName, ev.qym, ev.area, ev.systemCode,
                ev.systemName, ev.systemLevel,
            )
            # The case is defined by its earliest completion; later ones change nothing.
            if self.completion is not None and self.completion.order() <= c.order():
                return False
            self.completion = c
        elif t == "province.pushed":
            if self.pushes is None:
                self.pushes = {}
            cur = self.pushes.get(ev.batchNo)
            new = (ev.occurredAt, ev.eventId)
            if cur is not None and cur <= new:
                return False
            self.pushes[ev.batchNo] = new
        elif t == "archive.received":
            m = ev.meta
            if not self.receipts:
                self.receipts = []
            self.receipts.append(  # type: ignore[union-attr]
                Receipt(
                    ev.eventId, ev.occurredAt, ev.archiveNo, ev.packageSha256,
                    (_intern(m.get("taskCode")), _intern(m.get("deptCode")),
                     _intern(m.get("qym")), _instant(m.get("completedAt"))),
                )
            )
        elif t == "archive.checked":
            if self.checks is None:
                self.checks = {}
            self.checks.setdefault(ev.archiveNo, []).append(
                Step(ev.eventId, ev.occurredAt, "", ev.passed)
            )
        elif t == "archive.backedUp":
            if self.backups is None:
                self.backups = {}
            self.backups.setdefault(ev.archiveNo, []).append(
                Step(ev.eventId, ev.occurredAt, ev.backupId, ev.sha256)
            )
        elif t == "archive.distributed":
            if self.dists is None:
                self.dists = {}
            self.dists.setdefault(ev.archiveNo, []).append(
                Step(ev.eventId, ev.occurredAt, ev.distributionNo, ev.status)
            )
        else:  # pragma: no cover - routed elsewhere
            raise ValueError(f"not a case event: {t}")
        return True


# ---------------------------------------------------------------------------
# Results


@dataclass(frozen=True, slots=True)
class Anomaly:
    anomaly_id: str
    code: str
    case_no: str
    archive_no: str
    receiver_id: str
    qym: str
    dept_code: str
    system_code: str
    task_code: str
    opened_at: int
    resolved_at: int | None
    detail: str

    @property
    def is_open(self) -> bool:
        return self.resolved_at is None


class CaseRow(NamedTuple):
    """A case's row (case_state). A named tuple: one is built for every changed case,
    and a tuple is built in C (a frozen dataclass sets each of its 16 fields through
    ``object.__setattr__``)."""

    case_no: str
    task_id: str
    task_code: str
    task_name: str
    dept_code: str
    dept_name: str
    qym: str
    area: str
    system_code: str
    system_name: str
    system_level: str
    completed_at: int
    first_received_at: int | None
    archive_count: int
    status: str
    year: int


class KpiKey(NamedTuple):
    """A KPI group. A named tuple, not a dataclass: it is hashed for every dict access
    of the KPI accumulators, and a tuple's hash runs in C."""

    year: int
    qym: str
    dept_code: str
    system_code: str
    task_id: str
    system_level: str


class KpiPart(NamedTuple):
    """One case's contribution to its KPI group (§5); a named tuple, like CaseRow."""

    key: KpiKey
    archived: int
    succ: int
    fail: int
    cycle_ms: int
    first_received_at: int | None
    names: tuple[str, str, str, str, str] = ("", "", "", "", "")  # task code/name, dept, system, area


@dataclass(frozen=True, slots=True)
class ReceiptFact:
    """What the archive-number stage needs of one receipt to find ARCHIVE_NO_CONFLICT."""

    archive_no: str
    event_id: str
    at: int
    case_no: str
    attrs: tuple[str, str, str, str]  # qym, deptCode, systemCode, taskCode ("" if unknown)


@dataclass(slots=True)
class CaseResult:
    anomalies: dict[str, Anomaly]
    row: CaseRow | None
    kpi: KpiPart | None
    next_deadline: int | None  # earliest deadline >= wm whose passing would change the answer


def _intern(value: Any) -> Any:
    return intern(value) if isinstance(value, str) else value


def _instant(value: Any) -> int | None:
    if not isinstance(value, str):
        return None
    try:
        return parse_ts(value)
    except ValueError:
        return None


def _meta_mismatch(meta: tuple[Any, Any, Any, int | None], c: Completion) -> bool:
    """The package's own metadata against the case; instants compare across offsets."""
    task_code, dept_code, qym, completed_at = meta
    item = c.item  # (the properties are Python calls; this runs per receipt per evaluation)
    return (task_code != item[1] or dept_code != item[3] or qym != item[5]
            or completed_at is None or completed_at != c.completed_at)


def case_attrs(c: Completion | None) -> tuple[str, str, str, str]:
    if c is None:
        return ("", "", "", "")
    item = c.item  # qym, dept_code, system_code, task_code
    return (item[5], item[3], item[7], item[1])


Summary = tuple[Completion, int | None, int, str, int, int, int]
"""What a case's row and KPI part are made of: (completion, first receipt, archives,
status, archived, succ, fail). The engine keeps this per case instead of the row and
the KPI part themselves, and builds those only when it has to write or subtract them."""


def evaluate(f: CaseFacts, wm: int, sla: Sla) -> CaseResult:
    """The batch answer for one case at watermark ``wm`` (deadline D fires iff D < wm)."""
    out, summary, next_deadline = evaluate_summary(f, wm, sla)
    return CaseResult(out, row_of(f.case_no, summary), kpi_of(summary), next_deadline)


def row_of(case_no: str, s: Summary | None) -> CaseRow | None:
    if s is None:
        return None
    c = s[0]
    # the item is (task id, code, name, dept code, name, qym, area, system code, name,
    # level): the row's columns in the row's order
    return CaseRow(case_no, *c.item, c.completed_at, s[1], s[2], s[3],
                   shanghai_year(c.completed_at))


def kpi_of(s: Summary | None) -> KpiPart | None:
    if s is None:
        return None
    c, first_at, _n, _status, archived, succ, fail = s
    return KpiPart(
        kpi_key(c), archived, succ, fail,
        (first_at - c.completed_at) if first_at is not None else 0,
        first_at,
        _names_of(c.item),
    )


_NAMES: dict[tuple[str, ...], tuple[str, str, str, str, str]] = {}


def _names_of(item: tuple[str, ...]) -> tuple[str, str, str, str, str]:
    """The display names of an item's KPI group, one tuple per item (each KPI
    accumulator keeps the names of its latest case)."""
    names = _NAMES.get(item)
    if names is None:
        names = _shared(_NAMES, item, (item[1], item[2], item[4], item[8], item[6]))
    return names


_KEYS: dict[KpiKey, KpiKey] = {}


def shared_key(key: KpiKey) -> KpiKey:
    """One KpiKey per KPI group for the whole process (every shard holds an accumulator
    for the groups of its cases, all under this one key)."""
    got = _KEYS.get(key)
    if got is None:
        got = _shared(_KEYS, key, key)
    return got


def kpi_key(c: Completion) -> KpiKey:
    item = c.item  # (year, qym, dept_code, system_code, task_id, system_level)
    return shared_key(KpiKey(shanghai_year(c.completed_at), item[5], item[3], item[7],
                             item[0], item[9]))


def evaluate_summary(
    f: CaseFacts, wm: int, sla: Sla
) -> tuple[dict[str, Anomaly], Summary | None, int | None]:
    """:func:`evaluate` without building the row and the KPI part: anomalies, summary
    and the next deadline.

    A case with its completion and no receipt yet (most open cases, and about half of
    all evaluations) takes :func:`_evaluate_unreceived`, which gives exactly what
    :func:`evaluate_summary_full` gives for it (tests/test_rules_fast.py compares them
    over random fact sets); every other case takes the full evaluation."""
    if not f.receipts and f.completion is not None:
        return _evaluate_unreceived(f, wm, sla)
    return evaluate_summary_full(f, wm, sla)


def _evaluate_unreceived(
    f: CaseFacts, wm: int, sla: Sla
) -> tuple[dict[str, Anomaly], Summary, int | None]:
    """:func:`evaluate_summary_full` of a case with a completion and no receipt: without
    a receipt no 重, 错 or per-archive rule has anything to look at, so only the archive
    deadline and the push deadlines remain (same anomalies in the same order)."""
    c = f.completion
    assert c is not None and not f.receipts
    case_no = f.case_no
    item = c.item
    out: dict[str, Anomaly] = {}
    pending: list[int] = []
    deadline = c.completed_at + sla.archive
    if deadline < wm:
        aid = anomaly_id("MISSING_ARCHIVE", case_no, "", "", "")
        out[aid] = Anomaly(aid, "MISSING_ARCHIVE", case_no, "", "", item[5], item[3], item[7],
                           item[1], deadline, None, "")
        status = "MISSING"
    else:
        pending.append(deadline)
        status = "PENDING"
    if f.pushes:
        push = sla.push
        for batch_no, (pushed_at, _eid) in f.pushes.items():
            deadline = pushed_at + push
            if deadline < wm:
                aid = anomaly_id("PUSH_NOT_RECEIVED", case_no, "", "", batch_no)
                out[aid] = Anomaly(aid, "PUSH_NOT_RECEIVED", case_no, "", "", item[5], item[3],
                                   item[7], item[1], deadline, None, batch_no)
            else:
                pending.append(deadline)
    summary: Summary = (c, None, 0, status, 0, 0, 0)
    return out, summary, min(pending) if pending else None


def _archive_year(archive_no: str) -> int | None:
    """The year an archive number states, or None when it is not a valid number."""
    m = ARCHIVE_NO_RE.match(archive_no)
    return None if m is None else int(m.group(1))


def evaluate_summary_full(
    f: CaseFacts, wm: int, sla: Sla
) -> tuple[dict[str, Anomaly], Summary | None, int | None]:
    """The rules of §4 over every fact of the case: the reference evaluation."""
    case_no = f.case_no
    c = f.completion
    qym, dept, system, task = case_attrs(c)
    out: dict[str, Anomaly] = {}
    pending: list[int] = []

    def add(code: str, archive_no: str, disc: str, opened: int, resolved: int | None) -> None:
        aid = anomaly_id(code, case_no, archive_no, "", disc)
        out[aid] = Anomaly(
            aid, code, case_no, archive_no, "", qym, dept, system, task, opened, resolved, disc
        )

    def fired(deadline: int) -> bool:
        if deadline < wm:
            return True
        pending.append(deadline)
        return False

    receipts = sorted(f.receipts, key=_at_id) if len(f.receipts) > 1 else f.receipts
    first_at = receipts[0].at if receipts else None

    # 重: walk receipts in (occurredAt, eventId) order.
    archives: dict[str, Receipt] = {}
    for r in receipts:
        if r.archive_no in archives:
            add("DUPLICATE_RECEIPT", r.archive_no, r.event_id, r.at, None)
        else:
            if archives:
                add("DUPLICATE_ARCHIVE", r.archive_no, r.event_id, r.at, None)
            archives[r.archive_no] = r

    # 漏: the case's archive deadline.
    if c is not None:
        deadline = c.completed_at + sla.archive
        if first_at is None or first_at > deadline:
            if fired(deadline):
                add("MISSING_ARCHIVE", "", "", deadline, first_at)
            if first_at is not None:
                add("LATE_ARCHIVE", "", "", first_at, None)

    if f.pushes:
        for batch_no, (pushed_at, _eid) in f.pushes.items():
            deadline = pushed_at + sla.push
            if (first_at is None or first_at > deadline) and fired(deadline):
                add("PUSH_NOT_RECEIVED", "", batch_no, deadline, first_at)

    # 错: orphan receipts.
    if first_at is not None:
        deadline = first_at + sla.orphan
        if (c is None or c.at > deadline) and fired(deadline):
            add("ORPHAN_ARCHIVE", "", "", deadline, None if c is None else c.at)

    year = None
    if c is not None:
        year = shanghai_year(c.completed_at)
        for r in receipts:
            if _meta_mismatch(r.meta, c):
                add("METADATA_MISMATCH", r.archive_no, r.event_id, max(r.at, c.at), None)

    all_checked_ok = True
    f_checks, f_backups, f_dists = f.checks, f.backups, f.dists
    for archive_no, first in archives.items():
        received = first.at
        stated = _archive_year(archive_no)
        if stated is None:
            add("INVALID_ARCHIVE_NO", archive_no, "", received, None)
        elif c is not None and stated != year:
            add("INVALID_ARCHIVE_NO", archive_no, "", max(received, c.at), None)

        checks = f_checks.get(archive_no, ()) if f_checks else ()
        if len(checks) > 1:
            checks = sorted(checks, key=_at_id)
        deadline = received + sla.check
        first_check = checks[0].at if checks else None
        if (first_check is None or first_check > deadline) and fired(deadline):
            add("NOT_CHECKED", archive_no, "", deadline, first_check)
        run: Step | None = None
        for s in checks:
            if not s.value:
                if run is None:
                    run = s
            elif run is not None:
                add("CHECK_FAILED", archive_no, run.event_id, run.at, s.at)
                run = None
        if run is not None:
            add("CHECK_FAILED", archive_no, run.event_id, run.at, None)
        if not checks or not checks[-1].value:
            all_checked_ok = False

        backups = f_backups.get(archive_no, ()) if f_backups else ()
        first_backup = (None if not backups else backups[0].at if len(backups) == 1
                        else min(b.at for b in backups))
        deadline = received + sla.backup
        if (first_backup is None or first_backup > deadline) and fired(deadline):
            add("NOT_BACKED_UP", archive_no, "", deadline, first_backup)
        if backups:
            earliest: dict[str, Step] = {}
            for b in backups:  # one per backupId, from its earliest event
                cur = earliest.get(b.key)
                if cur is None or (b.at, b.event_id) < (cur.at, cur.event_id):
                    earliest[b.key] = b
            for backup_id, b in earliest.items():
                if b.value != first.package_sha:
                    add("BACKUP_HASH_MISMATCH", archive_no, backup_id, max(b.at, received),
                        None)

        dists = f_dists.get(archive_no, ()) if f_dists else ()
        if len(dists) > 1:
            dists = sorted(dists, key=_at_id)
        if first_backup is not None:
            first_ack = None
            for d in dists:
                if d.value == "acked" and (first_ack is None or d.at < first_ack):
                    first_ack = d.at
            deadline = first_backup + sla.distribution
            if (first_ack is None or first_ack > deadline) and fired(deadline):
                add("NOT_DISTRIBUTED", archive_no, "", deadline, first_ack)
        if dists:
            runs: dict[str, Step] = {}
            for d in dists:
                if d.value == "failed":
                    runs.setdefault(d.key, d)
                elif d.value == "acked" and d.key in runs:
                    s = runs.pop(d.key)
                    add("DISTRIBUTION_FAILED", archive_no, f"{d.key}/{s.event_id}", s.at, d.at)
            for dist_no, s in runs.items():
                add("DISTRIBUTION_FAILED", archive_no, f"{dist_no}/{s.event_id}", s.at, None)

    summary: Summary | None = None
    if c is not None:
        archived = first_at is not None
        fail = archived and bool(out) and any(
            a.code in ERROR_CODES and a.resolved_at is None for a in out.values())
        succ = archived and not fail and all_checked_ok
        if not archived:
            deadline = c.completed_at + sla.archive
            status = "MISSING" if deadline < wm else "PENDING"
        else:
            status = "ARCHIVED_FAIL" if fail else "ARCHIVED_OK" if succ else "ARCHIVED_UNCHECKED"
        summary = (c, first_at, len(archives), status, int(archived), int(succ), int(fail))
    return out, summary, min(pending) if pending else None


def _at_id(x: Receipt | Step) -> tuple[int, str]:
    return (x.at, x.event_id)


def receipt_facts(f: CaseFacts) -> list[ReceiptFact]:
    """Every receipt of the case, with the case's attributes, for the archive-number stage."""
    attrs = case_attrs(f.completion)
    return [ReceiptFact(r.archive_no, r.event_id, r.at, f.case_no, attrs) for r in f.receipts]


def evaluate_archive_no(facts: dict[str, ReceiptFact]) -> dict[str, Anomaly]:
    """ARCHIVE_NO_CONFLICT for one archiveNo: every receipt under a case other than the
    case of its earliest receipt (by occurredAt, ties by eventId)."""
    if not facts:
        return {}
    owner = min(facts.values(), key=lambda r: (r.at, r.event_id)).case_no
    out: dict[str, Anomaly] = {}
    for r in facts.values():
        if r.case_no != owner:
            aid = anomaly_id("ARCHIVE_NO_CONFLICT", r.case_no, r.archive_no, "", r.event_id)
            qym, dept, system, task = r.attrs
            out[aid] = Anomaly(
                aid, "ARCHIVE_NO_CONFLICT", r.case_no, r.archive_no, "", qym, dept, system,
                task, r.at, None, r.event_id,
            )
    return out
