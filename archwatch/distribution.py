"""Distribution (分发) of archive packages from the city backup centre to the district
receiving systems, re-distribution on request, and the ``archwatch distribute`` command.

The queue is the ``distribution`` table (migration 0005): one row per distribution number,
whole and versioned. It lives in the store, not in the distributor's memory, because the
store is the one durable thing every process shares: the distributor, the API (batch reset
of push status) and auditors read and write the same rows, and a distributor that crashes
resumes from them.

Life of a row::

    pending --claim--> sent --POST 2xx--> acked
                        |  `--error----> failed --(next_attempt_at, attempts < cap)--> sent
                        `--(stopped mid-send; after the lease)--> sent again
    any --batch reset (API)--> pending, attempts 0

* A row is marked ``sent`` (attempts + 1, ``next_attempt_at`` = now + lease) before the HTTP
  call and ``acked``/``failed`` after it; every write is a compare-and-set on the row's
  version, so a reset made meanwhile wins. ``acked`` rows are never sent again unless reset;
  a ``sent`` row whose answer was never recorded (crash) is sent again after its lease —
  receivers must be idempotent by ``distributionNo`` (also sent as ``Idempotency-Key``).
* Failures back off exponentially (``base * 2^(attempts-1)``, capped at ``max_delay``);
  after ``max_attempts`` the row stays ``failed`` until a reset.
* A receiver that is down (an open ``RECEIVER_DOWN`` anomaly) or paused in the registry is
  never sent to; its rows wait, and their attempts do not grow.
* Every transition is published as an ``archive.distributed`` event (source
  ``DISTRIBUTOR``) through an outbox in the row itself (``reported``): the event's id and
  time derive from the transition, so one published twice after a crash is a redelivery
  to the engine, and one not yet published is published by the next cycle.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import logging
import os
import secrets
import threading
import time
import urllib.error
import urllib.request
import zipfile
from collections import Counter
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from archwatch.casedoc import current
from archwatch.engine import VersionClock
from archwatch.lease import Lease
from archwatch.lease import add_flags as add_lease_flags
from archwatch.lookups import RECEIVER_DOWN, anomaly_current
from archwatch.registry import ReceiverEntry, Registry
from archwatch.store import Store
from archwatch.timeutil import SHANGHAI, ch_time, now_ms, parse_duration, to_iso_utc

log = logging.getLogger("archwatch.distribution")

PENDING, SENT, ACKED, FAILED = "pending", "sent", "acked", "failed"
STATUSES = (PENDING, SENT, ACKED, FAILED)
SOURCE = "DISTRIBUTOR"
TOPIC = "archive.distributions"

_clock = VersionClock()
# Compare-and-set of queue rows is read-check-write; within one process (the embedded
# store has one) this lock makes it atomic between the API and a distributor thread.
_WRITE_LOCK = threading.RLock()
_CHUNK = 2000

_COLS = (
    "distribution_no, archive_no, case_no, target_qym, receiver_id, status, attempts,"
    " last_error, toUnixTimestamp64Milli(next_attempt_at) AS next_ms,"
    " toUnixTimestamp64Milli(created_at) AS created_ms,"
    " toUnixTimestamp64Milli(updated_at) AS updated_ms, resets, reset_by,"
    " toUnixTimestamp64Milli(reset_at) AS reset_ms, reported, version,"
    " toUnixTimestamp64Milli(sent_at) AS sent_ms"
)


def shanghai_iso(ms: int) -> str:
    """Epoch ms -> RFC 3339 with +08:00 and milliseconds (the events' spelling)."""
    dt = datetime.fromtimestamp(ms // 1000, SHANGHAI).replace(microsecond=(ms % 1000) * 1000)
    return dt.isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class Distribution:
    distribution_no: str
    archive_no: str
    case_no: str
    target_qym: str
    receiver_id: str = ""
    status: str = PENDING
    attempts: int = 0
    last_error: str = ""
    next_attempt_at: int = 0
    created_at: int = 0
    updated_at: int = 0
    resets: int = 0
    reset_by: str = ""
    reset_at: int | None = None
    reported: str = ""
    version: int = 0
    sent_at: int | None = None  # when the current attempt was handed to the receiver

    @classmethod
    def from_row(cls, r: dict[str, Any]) -> Distribution:
        return cls(r["distribution_no"], r["archive_no"], r["case_no"], r["target_qym"],
                   r["receiver_id"], r["status"], r["attempts"], r["last_error"], r["next_ms"],
                   r["created_ms"], r["updated_ms"], r["resets"], r["reset_by"], r["reset_ms"],
                   r["reported"], r["version"], r["sent_ms"])

    def row(self) -> dict[str, Any]:
        return {
            "distribution_no": self.distribution_no, "archive_no": self.archive_no,
            "case_no": self.case_no, "target_qym": self.target_qym,
            "receiver_id": self.receiver_id, "status": self.status, "attempts": self.attempts,
            "last_error": self.last_error, "next_attempt_at": ch_time(self.next_attempt_at),
            "created_at": ch_time(self.created_at), "updated_at": ch_time(self.updated_at),
            "resets": self.resets, "reset_by": self.reset_by,
            "reset_at": None if self.reset_at is None else ch_time(self.reset_at),
            "reported": self.reported, "version": self.version,
            "sent_at": None if self.sent_at is None else ch_time(self.sent_at),
        }

    @property
    def transition(self) -> str:
        """Identity of the row's current state for the outbox: status#resets#attempts."""
        return f"{self.status}#{self.resets}#{self.attempts}"

    @property
    def unreported(self) -> bool:
        return self.status != PENDING and self.reported != self.transition

    def body(self) -> dict[str, str]:
        """What a receiver is sent (POST, JSON)."""
        return {"distributionNo": self.distribution_no, "archiveNo": self.archive_no,
                "caseNo": self.case_no, "targetQym": self.target_qym}

    @property
    def event_id(self) -> str:
        tail = f"{self.resets}.{self.attempts}.{self.status}"
        eid = f"dist-{self.distribution_no}-{tail}"
        if len(eid) <= 128:
            return eid
        return "dist-" + hashlib.sha256(f"{self.distribution_no}\x1f{tail}".encode()).hexdigest()

    def events(self) -> list[dict[str, Any]]:
        """The events of the transitions not yet published: the current one, preceded by
        its attempt's ``sent`` when the answer came before ``sent`` was published."""
        if not self.unreported:
            return []
        out = []
        sent = f"{SENT}#{self.resets}#{self.attempts}"
        if self.status in (ACKED, FAILED) and self.attempts > 0 and self.sent_at is not None \
                and self.reported != sent:
            out.append(replace(self, status=SENT, updated_at=self.sent_at).event())
        out.append(self.event())
        return out

    def event(self) -> dict[str, Any]:
        """The contract's ``archive.distributed`` event for the current transition; same
        transition, same event (id and time), so a re-publication is a redelivery."""
        return {"eventId": self.event_id, "type": "archive.distributed",
                "occurredAt": shanghai_iso(self.updated_at), "source": SOURCE,
                "archiveNo": self.archive_no, "caseNo": self.case_no,
                "distributionNo": self.distribution_no, "targetQym": self.target_qym,
                "status": self.status}

    def public(self) -> dict[str, Any]:
        return {"distributionNo": self.distribution_no, "archiveNo": self.archive_no,
                "caseNo": self.case_no, "targetQym": self.target_qym,
                "receiverId": self.receiver_id or None, "status": self.status,
                "attempts": self.attempts, "lastError": self.last_error or None,
                "nextAttemptAt": to_iso_utc(self.next_attempt_at),
                "createdAt": to_iso_utc(self.created_at),
                "updatedAt": to_iso_utc(self.updated_at), "resets": self.resets,
                "resetBy": self.reset_by or None, "resetAt": to_iso_utc(self.reset_at)}


@dataclass(frozen=True)
class ResetResult:
    reset: list[Distribution]
    unmatched: list[str]  # archive numbers (档号) of the pairs that matched no distribution


def _chunks(items: Sequence[str], n: int = _CHUNK) -> Iterable[list[str]]:
    for i in range(0, len(items), n):
        yield list(items[i:i + n])


def _qym_of_archive(archive_no: str) -> str:
    """The six-digit region code that starts an archive number (档号), if it has one."""
    head = archive_no[:6]
    return head if len(head) == 6 and head.isdigit() else ""


class DistributionQueue:
    """The ``distribution`` table behind one small interface (distributor, API, CLI)."""

    def __init__(self, store: Store, clock: Callable[[], int] = now_ms) -> None:
        self.store = store
        self.clock = clock

    # -- reading ---------------------------------------------------------------
    def get(self, distribution_no: str) -> Distribution | None:
        return self.find([distribution_no]).get(distribution_no)

    def find(self, distribution_nos: Sequence[str]) -> dict[str, Distribution]:
        out: dict[str, Distribution] = {}
        for part in _chunks(sorted(set(distribution_nos))):
            for r in self.store.query(f"SELECT {_COLS} FROM distribution FINAL"
                                      " WHERE distribution_no IN {d:Array(String)}", {"d": part}):
                out[r["distribution_no"]] = Distribution.from_row(r)
        return out

    def list(self, status: str | None = None, qym: str | None = None,
             archive_no: str | None = None, limit: int = 50,
             offset: int = 0) -> tuple[list[Distribution], int]:
        rows, total = self.store.page(
            "distribution", _COLS,
            {"status": status, "target_qym": qym, "archive_no": archive_no},
            "distribution_no", limit, offset)
        return [Distribution.from_row(r) for r in rows], total

    _DUE = ("next_attempt_at <= fromUnixTimestamp64Milli({now:Int64}, 'UTC')"
            " AND (status = 'pending' OR status = 'sent'"
            "      OR (status = 'failed' AND attempts < {cap:UInt32}))")

    def due(self, now: int, max_attempts: int, limit: int,
            qyms: Sequence[str]) -> list[Distribution]:
        """Rows to work on now, in the regions ``qyms`` (those whose receiver can take
        packages now, so that rows that must wait never crowd out the batch): pending ones,
        failed ones under the attempt cap, and sent ones whose lease has passed (the
        distributor stopped before recording an answer)."""
        if not qyms:
            return []
        rows = self.store.query(
            f"SELECT {_COLS} FROM distribution FINAL WHERE {self._DUE}"
            " AND target_qym IN {q:Array(String)}"
            " ORDER BY next_attempt_at, distribution_no LIMIT {lim:UInt32}",
            {"now": now, "cap": max_attempts, "lim": limit, "q": list(qyms)})
        return [Distribution.from_row(r) for r in rows]

    def waiting(self, now: int, max_attempts: int, servable: Sequence[str]) -> dict[str, int]:
        """How many rows would be due in each region outside ``servable``."""
        return {r["target_qym"]: r["n"] for r in self.store.query(
            f"SELECT target_qym, count() AS n FROM distribution FINAL WHERE {self._DUE}"
            " AND target_qym NOT IN {q:Array(String)} GROUP BY target_qym",
            {"now": now, "cap": max_attempts, "q": list(servable)})}

    def unreported(self, limit: int = 1000) -> list[Distribution]:
        rows = self.store.query(
            f"SELECT {_COLS} FROM distribution FINAL WHERE status != 'pending' AND reported !="
            " concat(status, '#', toString(resets), '#', toString(attempts))"
            " ORDER BY updated_at, distribution_no LIMIT {lim:UInt32}", {"lim": limit})
        return [Distribution.from_row(r) for r in rows]

    def _versions(self, distribution_nos: Sequence[str]) -> dict[str, int]:
        out: dict[str, int] = {}
        for part in _chunks(sorted(set(distribution_nos))):
            for r in self.store.query("SELECT distribution_no, version FROM distribution FINAL"
                                      " WHERE distribution_no IN {d:Array(String)}", {"d": part}):
                out[r["distribution_no"]] = r["version"]
        return out

    # -- writing ---------------------------------------------------------------
    def _put(self, rows: list[Distribution], floor: dict[str, int] | None = None
             ) -> list[Distribution]:
        """Write whole rows with versions above any seen (``floor``: current versions)."""
        out = []
        for d in rows:
            v = _clock.next()
            if floor and floor.get(d.distribution_no, 0) >= v:
                v = floor[d.distribution_no] + 1
            out.append(replace(d, version=v))
        self.store.insert("distribution", [d.row() for d in out])
        return out

    def swap(self, old: Distribution, new: Distribution) -> Distribution | None:
        """Write ``new`` if the row is still ``old`` (same version); else None."""
        done = self.swap_many([(old, new)])
        return done[0] if done else None

    def swap_many(self, changes: Sequence[tuple[Distribution, Distribution]]
                  ) -> list[Distribution]:
        if not changes:
            return []
        with _WRITE_LOCK:
            current = self._versions([old.distribution_no for old, _ in changes])
            ok = [new for old, new in changes if current.get(old.distribution_no) == old.version]
            return self._put(ok, current) if ok else []

    def enqueue(self, archive_no: str, case_no: str, target_qym: str = "",
                distribution_no: str | None = None) -> Distribution:
        """Queue a new distribution (pending, due now). Target region: as given, else the
        case's region (``case_state``), else the archive number's region prefix; its
        receiver is the region's registered receiver, resolved again at send time. The
        same number again for the same archive is a no-op; for another archive an error."""
        if not archive_no or not case_no:
            raise ValueError("archiveNo and caseNo are needed")
        dno = distribution_no or f"DS{now_ms()}{secrets.token_hex(3).upper()}"
        if not 1 <= len(dno) <= 256:
            raise ValueError("distributionNo: 1-256 characters")
        qym = target_qym or _case_qyms(self.store, [case_no]).get(case_no) \
            or _qym_of_archive(archive_no)
        if not qym:
            raise ValueError(f"no target region for case {case_no!r}: give targetQym")
        now = self.clock()
        rid = receivers_by_qym(Registry(self.store).all(), load_endpoints(self.store)).get(qym, "")
        with _WRITE_LOCK:
            old = self.get(dno)
            if old is not None:
                if old.archive_no != archive_no or old.case_no != case_no:
                    raise ValueError(f"distribution {dno!r} exists for another archive")
                return old
            d = Distribution(dno, archive_no, case_no, qym, rid, PENDING, 0, "", now, now, now)
            return self._put([d])[0]

    def rebuild(self, undistributed: bool = False) -> dict[str, int]:
        """(Re)build rows from what the engine knows.

        For every ``distributionNo`` in ``event_log`` (``archive.distributed``), its latest
        report by ``occurredAt`` (an ``acked`` wins a tie): a distribution not in the queue
        is added, ``acked`` if its latest report is, else ``pending`` (to be delivered);
        one already queued only learns of an ``acked`` reported after its own last change
        (delivered by someone else). The target receiver is the registered receiver of the
        target region (resolved again at send time); a report without ``targetQym`` takes
        the case's region from ``case_state``. With ``undistributed``, every backed-up
        archive (``archive.backedUp``) that has no distribution at all gets a new pending
        one with a number derived from the archive (``RD-...``), so a second rebuild adds
        nothing."""
        now = self.clock()
        facts = self.store.query(
            "SELECT dno, argMax(entity, k) AS case_no, argMax(archive_no, k) AS archive_no,"
            " argMax(qym, k) AS target_qym, argMax(status, k) AS status,"
            " toUnixTimestamp64Milli(max(occurred_at)) AS at FROM ("
            "  SELECT entity, archive_no, occurred_at,"
            "   JSONExtractString(payload, 'distributionNo') AS dno,"
            "   JSONExtractString(payload, 'targetQym') AS qym,"
            "   JSONExtractString(payload, 'status') AS status,"
            "   (occurred_at, status = 'acked', event_id) AS k"
            "  FROM event_log WHERE type = 'archive.distributed')"
            " WHERE dno != '' GROUP BY dno")
        regs, endpoints = Registry(self.store).all(), load_endpoints(self.store)
        by_qym = receivers_by_qym(regs, endpoints)
        with _WRITE_LOCK:
            existing = self.find([f["dno"] for f in facts])
            missing_qym = [f["case_no"] for f in facts if not f["target_qym"]]
            case_qym = _case_qyms(self.store, missing_qym) if missing_qym else {}
            new: list[Distribution] = []
            learned: list[Distribution] = []
            for f in facts:
                old = existing.get(f["dno"])
                if old is None:
                    qym = f["target_qym"] or case_qym.get(f["case_no"]) \
                        or _qym_of_archive(f["archive_no"])
                    d = Distribution(f["dno"], f["archive_no"], f["case_no"], qym,
                                     by_qym.get(qym, ""), PENDING, 0, "", now, now, now)
                    if f["status"] == ACKED:
                        d = replace(d, status=ACKED, updated_at=f["at"])
                        d = replace(d, reported=d.transition)  # a fact, not ours to publish
                    new.append(d)
                elif f["status"] == ACKED and old.status != ACKED and f["at"] > old.updated_at:
                    d = replace(old, status=ACKED, last_error="", updated_at=f["at"])
                    learned.append(replace(d, reported=d.transition))
            if undistributed:
                new.extend(self._undistributed(now, by_qym))
            if new:
                self._put(new)
            if learned:
                self._put(learned, self._versions([d.distribution_no for d in learned]))
        return {"distributions": len(facts), "added": len(new), "learnedAcked": len(learned)}

    def _undistributed(self, now: int, by_qym: dict[str, str]) -> list[Distribution]:
        rows = self.store.query(
            "SELECT entity AS case_no, archive_no FROM event_log WHERE type = 'archive.backedUp'"
            " AND archive_no NOT IN (SELECT archive_no FROM event_log"
            "                        WHERE type = 'archive.distributed')"
            " AND archive_no NOT IN (SELECT archive_no FROM distribution)"
            " GROUP BY entity, archive_no ORDER BY entity, archive_no")
        qyms = _case_qyms(self.store, [r["case_no"] for r in rows]) if rows else {}
        out = []
        for r in rows:
            qym = qyms.get(r["case_no"]) or _qym_of_archive(r["archive_no"])
            if not qym:
                continue
            digest = hashlib.sha256(f"{r['case_no']}\x1f{r['archive_no']}".encode()).hexdigest()
            out.append(Distribution(f"RD-{digest[:20].upper()}", r["archive_no"], r["case_no"],
                                    qym, by_qym.get(qym, ""), PENDING, 0, "", now, now, now))
        return out

    def reset(self, pairs: Sequence[tuple[str, str]], actor: str,
              qym: str = "") -> ResetResult:
        """Back to ``pending`` (attempts 0, due now) every distribution matching a pair
        (archiveNo, distributionNo), within region ``qym`` when given (a district's scope:
        others count as unmatched). Whatever their status, acked included: a reset asks
        for delivery again."""
        uniq = list(dict.fromkeys(pairs))
        now = self.clock()
        with _WRITE_LOCK:
            rows = self.find([d for _a, d in uniq if d])
            matched: dict[str, Distribution] = {}
            unmatched: list[str] = []
            for archive_no, dno in uniq:
                r = rows.get(dno) if dno else None
                if r is None or r.archive_no != archive_no or (qym and r.target_qym != qym):
                    if archive_no not in unmatched:
                        unmatched.append(archive_no)
                    continue
                matched[dno] = r
            new = [replace(r, status=PENDING, attempts=0, last_error="", next_attempt_at=now,
                           updated_at=now, resets=r.resets + 1, reset_by=actor, reset_at=now)
                   for r in matched.values()]
            written = self._put(new, {d: r.version for d, r in matched.items()}) if new else []
        return ResetResult(written, unmatched)


def _case_qyms(store: Store, case_nos: Sequence[str]) -> dict[str, str]:
    """Each known case's region, from its current ``case_state`` row: its rows in
    ``case_doc`` (0018, ordered by case number: a primary-key read of two columns), the
    newest version chosen as the trace chooses it (casedoc.current)."""
    out: dict[str, str] = {}
    for part in _chunks(sorted(set(case_nos))):
        docs: dict[str, list[str]] = {}
        for r in store.query("SELECT case_no, doc FROM case_doc"
                             " WHERE case_no IN {c:Array(String)} AND kind = 0", {"c": part}):
            docs.setdefault(r["case_no"], []).append(r["doc"])
        for case_no, rows in docs.items():
            state = current(rows).state
            if state is not None:
                out[case_no] = state["qym"]
    return out


# ---------------------------------------------------------------------------
# Receivers: endpoints, who serves a region, who is down

def validate_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or len(url) > 2048:
        raise ValueError("endpoint: an http:// or https:// URL with a host")
    return url


def set_endpoint(store: Store, receiver_id: str, url: str) -> None:
    """Where a receiver accepts packages; ``''`` removes it."""
    if url:
        validate_url(url)
    store.insert("receiver_endpoint", [{"receiver_id": receiver_id, "url": url,
                                        "version": _clock.next()}])


def load_endpoints(store: Store) -> dict[str, str]:
    return {r["receiver_id"]: r["url"] for r in store.query(
        "SELECT receiver_id, url FROM receiver_endpoint FINAL WHERE url != ''")}


def receivers_by_qym(regs: dict[str, ReceiverEntry], endpoints: dict[str, str]
                     ) -> dict[str, str]:
    """The receiver of each region: the registered one (one with an endpoint first, then
    by id, when a region has several)."""
    out: dict[str, str] = {}
    for rid in sorted(regs, key=lambda r: (r not in endpoints, r)):
        out.setdefault(regs[rid].qym, rid)
    return out


def down_receivers(store: Store) -> set[str]:
    """Receivers with an open RECEIVER_DOWN anomaly."""
    return {r["receiver_id"] for r in store.query(
        f"SELECT DISTINCT receiver_id FROM {anomaly_current(RECEIVER_DOWN)}"
        " WHERE resolved_at IS NULL")}


# ---------------------------------------------------------------------------
# Sending and publishing

@dataclass(frozen=True)
class Delivery:
    ok: bool
    error: str = ""
    receiver_fault: bool = False  # connection error or 5xx: skip the receiver this cycle


Post = Callable[[str, dict[str, str], float], Delivery]


def http_post(url: str, body: dict[str, str], timeout: float) -> Delivery:
    """POST the package's JSON; any 2xx is an acknowledgement."""
    data = json.dumps(body, ensure_ascii=False).encode()
    req = urllib.request.Request(url, data=data, method="POST", headers={
        "Content-Type": "application/json; charset=utf-8", "User-Agent": "archwatch-distributor",
        "Idempotency-Key": body["distributionNo"]})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - http(s) only
            resp.read(65536)
        return Delivery(True)
    except urllib.error.HTTPError as exc:
        text = exc.read(300).decode("utf-8", "replace").strip()
        return Delivery(False, f"HTTP {exc.code}: {text}"[:500],
                        exc.code >= 500 or exc.code == 429)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return Delivery(False, f"{type(exc).__name__}: {reason}"[:500], True)


class Emitter(Protocol):
    def emit(self, events: list[dict[str, Any]]) -> None:
        """Publish durably; raise if any event was not accepted."""

    def close(self) -> None: ...


class JsonlEmitter:
    """Events appended to a JSONL file (no broker configured); replayable as it is."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def emit(self, events: list[dict[str, Any]]) -> None:
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in events))
            fh.flush()
            os.fsync(fh.fileno())

    def close(self) -> None:
        pass


class KafkaEmitter:
    """Events to ``<prefix>archive.distributions`` keyed by caseNo (as ``produce`` routes
    them), so the reconciliation dataflow sees the distributor's results."""

    def __init__(self, brokers: str, topic_prefix: str = "") -> None:
        from archwatch.connectors.kafka import KafkaSettings, SafeProducer

        self.topic = KafkaSettings(brokers=brokers, topic_prefix=topic_prefix).topic(TOPIC)
        self.producer = SafeProducer(brokers)

    def emit(self, events: list[dict[str, Any]]) -> None:
        self.producer.failed.clear()
        for e in events:
            self.producer.produce(self.topic, json.dumps(e, ensure_ascii=False).encode(),
                                  e["caseNo"].encode())
        self.producer.flush(30)

    def close(self) -> None:
        self.producer.p.flush(10)


@dataclass(frozen=True)
class DistributorSettings:
    base_delay_ms: int = 30_000
    max_delay_ms: int = 3_600_000
    max_attempts: int = 10
    lease_ms: int = 120_000  # a sent row without a recorded answer is sent again after this
    timeout_s: float = 10.0
    batch: int = 500
    # a standby distributor takes over once the active one has not renewed for this long
    takeover_ms: int = 30_000

    def backoff(self, attempts: int) -> int:
        """Delay after the ``attempts``-th failure: base * 2^(attempts-1), capped."""
        return min(self.max_delay_ms, self.base_delay_ms * 2 ** min(max(attempts - 1, 0), 40))


LEASE = "distribution"  # the distributor's row in worker_lease (archwatch/lease.py)

# due: rows worked on this cycle; receiverDown, noEndpoint, noReceiver: rows that would be
# due but wait for their receiver; deferred: rows left for the next cycle because their
# receiver failed (connection error, 5xx) earlier in this one; conflict: a reset won.
COUNT_KEYS = ("due", "sent", "acked", "failed", "gaveUp", "receiverDown", "noReceiver",
              "noEndpoint", "deferred", "conflict", "events")


class Distributor:
    """Sends due rows to their receivers; one instance per store sends at a time (the
    lease ``distribution``, :class:`~archwatch.lease.Lease`), others stand by."""

    def __init__(self, store: Store, emitter: Emitter,
                 settings: DistributorSettings | None = None,
                 clock: Callable[[], int] = now_ms, post: Post = http_post,
                 holder: str | None = None) -> None:
        self.store = store
        self.emitter = emitter
        self.settings = settings or DistributorSettings()
        self.clock = clock
        self.post = post
        self.queue = DistributionQueue(store, clock)
        self.lease = Lease(store, LEASE, holder, self.settings.takeover_ms, clock,
                           what="distributor")

    def drain(self) -> int:
        """Publish every transition written but not yet published; returns how many."""
        total = 0
        while True:
            rows = self.queue.unreported()
            if not rows:
                return total
            self.emitter.emit([e for r in rows for e in r.events()])
            done = self.queue.swap_many([(r, replace(r, reported=r.transition)) for r in rows])
            total += sum(len(r.events()) for r in rows)
            if not done or len(rows) < 1000:
                return total

    def cycle(self) -> dict[str, int]:
        """Publish, send what is due, publish again; nothing while standing by."""
        s = self.settings
        counts: Counter[str] = Counter({k: 0 for k in COUNT_KEYS})
        if not self.lease.check():
            return dict(counts)
        counts["events"] += self.drain()
        now = self.clock()
        regs = Registry(self.store).all()
        endpoints = load_endpoints(self.store)
        down = down_receivers(self.store)
        by_qym = receivers_by_qym(regs, endpoints)
        # Rows of regions whose receiver cannot take packages now wait, attempts unchanged:
        # no registered receiver, receiver down or paused, or no endpoint.
        why: dict[str, str] = {}
        for qym, rid in by_qym.items():
            if regs[rid].paused or rid in down:
                why[qym] = "receiverDown"
            elif rid not in endpoints:
                why[qym] = "noEndpoint"
        servable = sorted(q for q in by_qym if q not in why)
        broken: set[str] = set()
        rows = self.queue.due(now, s.max_attempts, s.batch, servable)
        counts["due"] = len(rows)
        for qym, n in self.queue.waiting(now, s.max_attempts, servable).items():
            counts[why.get(qym, "noReceiver")] += n
        for row in rows:
            if row.status == SENT and row.attempts >= s.max_attempts:
                note = "no answer recorded before the distributor stopped"
                if self.queue.swap(row, replace(row, status=FAILED, updated_at=now,
                                                last_error=f"{note}; gave up after "
                                                           f"{row.attempts} attempts")):
                    counts["gaveUp"] += 1
                continue
            rid = by_qym[row.target_qym]
            url = endpoints[rid]
            if rid in broken:
                counts["deferred"] += 1
                continue
            if not self.lease.check():  # slow sends outlived the lease, and a standby took over
                break
            claimed = self.queue.swap(row, replace(
                row, receiver_id=rid, status=SENT, attempts=row.attempts + 1,
                next_attempt_at=now + s.lease_ms, updated_at=now, sent_at=now))
            if claimed is None:
                counts["conflict"] += 1
                continue
            counts["sent"] += 1
            result = self.post(url, claimed.body(), s.timeout_s)
            at = max(self.clock(), now + 1)  # the answer comes after the send, in time too
            if result.ok:
                new = replace(claimed, status=ACKED, last_error="", updated_at=at,
                              next_attempt_at=at)
            else:
                err = result.error or "failed"
                if claimed.attempts >= s.max_attempts:
                    err = f"{err[:400]} (gave up after {claimed.attempts} attempts)"
                new = replace(claimed, status=FAILED, last_error=err, updated_at=at,
                              next_attempt_at=at + s.backoff(claimed.attempts))
                if result.receiver_fault:
                    broken.add(rid)
            if self.queue.swap(claimed, new) is None:
                counts["conflict"] += 1  # reset while in flight: the reset wins
            else:
                counts["acked" if result.ok else "failed"] += 1
        counts["events"] += self.drain()
        return dict(counts)

    def run(self, interval_s: float = 10.0, once: bool = False,
            stop: threading.Event | None = None, rebuild_every_s: float | None = 60.0,
            undistributed: bool = False,
            report: Callable[[dict[str, Any]], None] | None = None) -> None:
        """Cycle until ``stop`` is set (or once); rebuild the queue from the event log at
        start and every ``rebuild_every_s`` (None: never, 0: only at start). Errors of a
        cycle are logged and the next cycle tries again, except with ``once``."""
        stop = stop or threading.Event()
        last_rebuild: float | None = None
        while True:
            out: dict[str, Any] = {}
            try:
                mono = time.monotonic()
                if self.lease.check():  # a standby rebuilds, sends and reports nothing
                    if rebuild_every_s is not None and (
                            last_rebuild is None
                            or (rebuild_every_s > 0 and mono - last_rebuild >= rebuild_every_s)):
                        out["rebuild"] = self.queue.rebuild(undistributed)
                        last_rebuild = mono
                    out.update(self.cycle())
            except Exception:
                if once:
                    raise
                log.exception("distribution cycle failed; retrying in %.1f s", interval_s)
            if report is not None and out:
                report(out)
            if once or stop.wait(interval_s):
                self.lease.release()
                return


# ---------------------------------------------------------------------------
# Batch reset uploads (.xlsx / .xls with columns 档号 and 分发号)

MAX_UPLOAD_BYTES = 5 * 1024 * 1024
MAX_UPLOAD_ROWS = 50_000
MAX_UNZIPPED_BYTES = 200 * 1024 * 1024  # an .xlsx inflating past this is refused
HEADER_SCAN_ROWS = 10
ARCHIVE_COL, DISTRIBUTION_COL = "档号", "分发号"


class UploadError(ValueError):
    """A refused upload: HTTP status, error code and a message for the user."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v).strip()


def _xlsx_rows(data: bytes) -> Generator[Iterator[Sequence[Any]], None, None]:
    """Every sheet's rows (each an iterator), from an .xlsx."""
    from openpyxl import load_workbook

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            if sum(i.file_size for i in z.infolist()) > MAX_UNZIPPED_BYTES:
                raise UploadError(413, "too_large", "the workbook unpacks to more than "
                                  f"{MAX_UNZIPPED_BYTES // 1024 // 1024} MB")
        wb = load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    except UploadError:
        raise
    except Exception as exc:  # BadZipFile, KeyError, InvalidFileException, XML errors ...
        raise UploadError(400, "invalid_file",
                          f"not a readable .xlsx workbook ({type(exc).__name__})") from None
    try:
        for ws in wb.worksheets:
            yield ws.iter_rows(values_only=True)
    finally:
        wb.close()


def _xls_rows(data: bytes) -> Generator[Iterator[Sequence[Any]], None, None]:
    import xlrd

    try:
        book = xlrd.open_workbook(file_contents=data, on_demand=True)
    except Exception as exc:  # XLRDError, CompDocError, struct errors ...
        raise UploadError(400, "invalid_file",
                          f"not a readable .xls workbook ({type(exc).__name__})") from None
    try:
        for i in range(book.nsheets):
            try:
                sh = book.sheet_by_index(i)
            except Exception as exc:
                raise UploadError(400, "invalid_file", f"unreadable sheet {i + 1} "
                                  f"({type(exc).__name__})") from None
            if sh.nrows > MAX_UPLOAD_ROWS + HEADER_SCAN_ROWS:
                raise UploadError(413, "too_many_rows",
                                  f"more than {MAX_UPLOAD_ROWS} rows (sheet {sh.name!r})")
            yield (sh.row_values(r) for r in range(sh.nrows))
    finally:
        book.release_resources()


def read_reset_sheet(data: bytes, filename: str) -> list[tuple[str, str]]:
    """The (档号, 分发号) pairs of an uploaded workbook, in file order.

    The first sheet whose first rows hold a header with both columns is read (any column
    order, extra columns ignored); rows under it without a 档号 are skipped. Refused, with
    an :class:`UploadError`: an extension other than .xlsx/.xls, content that is not a
    workbook of that kind, no such header, an empty sheet, and the size and row caps."""
    name = (filename or "").strip().lower()
    if not name.endswith((".xlsx", ".xls")):
        raise UploadError(415, "unsupported_file",
                          f"upload an Excel workbook (.xlsx or .xls), not {filename!r}")
    if len(data) > MAX_UPLOAD_BYTES:
        raise UploadError(413, "too_large",
                          f"file over {MAX_UPLOAD_BYTES // 1024 // 1024} MB")
    if not data:
        raise UploadError(400, "empty_file", "the file is empty")
    if name.endswith(".xlsx"):
        if not data.startswith(b"PK\x03\x04"):
            raise UploadError(400, "invalid_file", f"{filename!r} is not an .xlsx workbook")
        sheets = _xlsx_rows(data)
    else:
        if not data.startswith(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"):
            raise UploadError(400, "invalid_file",
                              f"{filename!r} is not an Excel 97-2003 (.xls) workbook")
        sheets = _xls_rows(data)
    try:
        return _scan(sheets)
    except UploadError:
        raise
    except Exception as exc:  # a sheet that breaks while being read
        raise UploadError(400, "invalid_file",
                          f"the workbook could not be read ({type(exc).__name__})") from None
    finally:
        sheets.close()


def _scan(sheets: Iterator[Iterator[Sequence[Any]]]) -> list[tuple[str, str]]:
    saw_cells = False
    seen_headers: list[str] = []
    for rows in sheets:
        it = iter(rows)
        header: dict[str, int] | None = None
        for _ in range(HEADER_SCAN_ROWS):
            raw = next(it, None)
            if raw is None:
                break
            cells = ["".join(_cell(v).split()) for v in raw]
            if any(cells):
                saw_cells = True
                seen_headers = seen_headers or [c for c in cells if c][:8]
            if ARCHIVE_COL in cells and DISTRIBUTION_COL in cells:
                header = {ARCHIVE_COL: cells.index(ARCHIVE_COL),
                          DISTRIBUTION_COL: cells.index(DISTRIBUTION_COL)}
                break
        if header is None:
            continue
        ia, idn = header[ARCHIVE_COL], header[DISTRIBUTION_COL]
        pairs: list[tuple[str, str]] = []
        for n, raw in enumerate(it, 1):
            if n > MAX_UPLOAD_ROWS:
                raise UploadError(413, "too_many_rows",
                                  f"more than {MAX_UPLOAD_ROWS} rows under the header")
            vals = list(raw)
            a = _cell(vals[ia]) if ia < len(vals) else ""
            d = _cell(vals[idn]) if idn < len(vals) else ""
            if a:
                pairs.append((a, d))
        if not pairs:
            raise UploadError(400, "empty_file", f"no rows with a {ARCHIVE_COL} under the header")
        return pairs
    if not saw_cells:
        raise UploadError(400, "empty_file", "the workbook has no data")
    raise UploadError(400, "missing_columns",
                      f"no header row with the columns {ARCHIVE_COL} and {DISTRIBUTION_COL} in "
                      f"the first {HEADER_SCAN_ROWS} rows (found: {', '.join(seen_headers)})")


# ---------------------------------------------------------------------------
# archwatch distribute

def _duration_ms(text: str) -> int:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_parser(sub: Any) -> None:
    """The ``distribute`` subcommand (``sub``: the CLI's subparsers)."""
    d = sub.add_parser("distribute", help="send pending archive packages to the district "
                                          "receivers (retries, resumes after a crash)")
    d.add_argument("--db", type=Path, help="embedded (chDB) store directory")
    d.add_argument("--url", help="ClickHouse server URL instead of --db")
    d.add_argument("--brokers", default=None,
                   help="Kafka bootstrap servers: events go to <prefix>archive.distributions")
    d.add_argument("--topic-prefix", dest="topic_prefix", default="")
    d.add_argument("--events-out", dest="events_out", type=Path,
                   help="without --brokers: JSONL file of the events "
                        "(default DIR/distribution-events.jsonl)")
    d.add_argument("--once", action="store_true", help="one cycle, then exit")
    d.add_argument("--interval", type=float, default=10.0, help="seconds between cycles")
    d.add_argument("--rebuild-interval", dest="rebuild_interval", type=float, default=60.0,
                   help="seconds between rebuilds of the queue from the event log "
                        "(0: at start only)")
    d.add_argument("--no-rebuild", dest="no_rebuild", action="store_true",
                   help="never rebuild from the event log (work on the queue as it is)")
    d.add_argument("--undistributed", action="store_true",
                   help="also queue backed-up archives that have no distribution yet")
    d.add_argument("--endpoint", action="append", default=[], metavar="RECEIVER=URL",
                   help="set a receiver's endpoint before starting (repeatable)")
    d.add_argument("--max-attempts", dest="max_attempts", type=int, default=10)
    d.add_argument("--base-delay", dest="base_delay", type=_duration_ms, default="PT30S",
                   help="first retry delay, doubled per failure (ISO 8601)")
    d.add_argument("--max-delay", dest="max_delay", type=_duration_ms, default="PT1H",
                   help="retry delay cap (ISO 8601)")
    d.add_argument("--lease", type=_duration_ms, default="PT2M",
                   help="a package sent without a recorded answer is sent again after this")
    d.add_argument("--timeout", type=float, default=10.0, help="HTTP timeout, seconds")
    d.add_argument("--batch", type=int, default=500, help="packages per cycle at most")
    add_lease_flags(d, "distributor", "--distributor-id", _duration_ms)
    d.set_defaults(func=cmd_distribute)


def cmd_distribute(args: argparse.Namespace) -> int:
    from archwatch.cli import CliError
    from archwatch.migrate import migrate
    from archwatch.store import StoreError, open_store

    if args.db is None and args.url is None:
        raise CliError("one of --db or --url is required")
    if args.max_attempts < 1 or args.batch < 1 or args.interval < 0 or args.timeout <= 0:
        raise CliError("--max-attempts and --batch: at least 1; --interval, --timeout: positive")
    if args.takeover <= 2000 * max(args.interval, args.timeout):
        raise CliError("--takeover must exceed twice --interval and --timeout (the active "
                       "distributor renews its lease between cycles and sends)")
    endpoints = []
    for item in args.endpoint:
        rid, sep, url = item.partition("=")
        if not sep or not rid:
            raise CliError(f"--endpoint {item!r}: RECEIVER=URL")
        try:
            validate_url(url)
        except ValueError as exc:
            raise CliError(f"--endpoint {item!r}: {exc}") from None
        endpoints.append((rid, url))
    events_out = args.events_out
    if not args.brokers and events_out is None:
        if args.db is None:
            raise CliError("without --brokers, --events-out FILE is needed")
        events_out = Path(args.db) / "distribution-events.jsonl"
    try:
        store = open_store(args.db, args.url)
        migrate(store)
    except StoreError as exc:
        raise CliError(str(exc)) from None
    emitter: Emitter
    try:
        if args.brokers:
            from archwatch.connectors.kafka import wait_for_broker

            try:
                wait_for_broker(args.brokers, timeout=30)
            except ConnectionError as exc:
                raise CliError(str(exc)) from None
            emitter = KafkaEmitter(args.brokers, args.topic_prefix)
        else:
            emitter = JsonlEmitter(events_out)
        regs = Registry(store).all()
        for rid, url in endpoints:
            if rid not in regs:
                raise CliError(f"--endpoint: no registered receiver {rid!r}")
            set_endpoint(store, rid, url)
        settings = DistributorSettings(args.base_delay, args.max_delay, args.max_attempts,
                                       args.lease, args.timeout, args.batch, args.takeover)
        dist = Distributor(store, emitter, settings, holder=args.distributor_id)
        stop = threading.Event()

        def report(out: dict[str, Any]) -> None:
            print(json.dumps(out, ensure_ascii=False), flush=True)

        with _stop_on_sigterm(stop):
            try:
                dist.run(args.interval, once=args.once, stop=stop,
                         rebuild_every_s=None if args.no_rebuild else args.rebuild_interval,
                         undistributed=args.undistributed, report=report)
            except (StoreError, RuntimeError, OSError) as exc:  # --once: store, broker, file
                raise CliError(str(exc)) from None
            except KeyboardInterrupt:
                pass
        emitter.close()
    finally:
        store.close()
    return 0


@contextlib.contextmanager
def _stop_on_sigterm(stop: threading.Event) -> Iterator[None]:
    """SIGTERM ends the loop after the current cycle (the previous handler comes back)."""
    import signal

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
