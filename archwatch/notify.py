"""Alert delivery by webhook: ``archwatch notify`` (and a thread of ``archwatch up``).

The dataflow writes every anomaly transition to ``anomaly_feed``; this module delivers
them to the administrator's webhook subscriptions, each transition once, even across
restarts, with retries. The deliverer runs four idempotent steps per cycle, each
resumable from the store (migration 0007), so a crash anywhere loses nothing:

1. **Intake.** Feed rows after the persisted cursor become notifications in the outbox
   (``alert_notification``). A notification's id is the *transition id*: a hash of the
   transition's content (anomaly, kind, times, detail), so the feed's at-least-once
   duplicates (a transition re-derived after an engine crash gets a new ``seq``) collapse
   onto one notification. The cursor trails the wall clock by ``settle`` (seqs are
   allocated before their rows are written, so a row with a smaller seq can appear after
   a larger one); rows read twice inside that margin are recognised by their id.
   Transitions no enabled webhook wants are not kept (a webhook added later receives what
   happens from then on), except RECEIVER_DOWN ones, which the grouping needs.
2. **Grouping.** RECEIVER_DOWN transitions are held and grouped per region by
   :mod:`archwatch.grouping` (pure); the group notifications also appear in the live SSE
   feed as ``group_opened`` / ``group_resolved`` events.
3. **Fan-out.** Each ready notification gets one ``webhook_delivery`` row per matching
   enabled webhook (only rows not already there), then is marked done.
4. **Delivery.** Due deliveries are POSTed (JSON, signed, ``Idempotency-Key`` = the
   notification id). A row is marked ``sending`` (attempts + 1, lease) before the POST and
   ``delivered`` / ``failed`` / ``dead`` after it; a 2xx answer is final — a delivered row
   is never sent again. A deliverer that stops between the POST and its record sends
   again after the lease: that is the at-least-once window receivers close by deduping
   on ``Idempotency-Key``. Failures back off exponentially with jitter up to a cap;
   after ``max_attempts`` a delivery is ``dead`` (listed by the admin API, counted in
   ``archwatch_webhook_dead_total``) until an administrator retries it.

One deliverer per store at a time (``archwatch notify`` or inside ``archwatch up``).
The payload and the signature are documented in docs/alerts.md.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import logging
import random
import re
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from archwatch import grouping
from archwatch.engine import VersionClock
from archwatch.grouping import GroupRule, Held
from archwatch.lease import Lease
from archwatch.lease import add_flags as add_lease_flags
from archwatch.store import Store, StoreError
from archwatch.timeutil import ch_time, now_ms, parse_duration, to_iso_utc

log = logging.getLogger("archwatch.notify")

HELD, READY, DONE, GROUPED = "held", "ready", "done", "grouped"
PENDING, SENDING, DELIVERED, FAILED, DEAD = "pending", "sending", "delivered", "failed", "dead"
DELIVERY_STATUSES = (PENDING, SENDING, DELIVERED, FAILED, DEAD)
CURSOR = "webhooks"
KINDS = ("opened", "updated", "resolved", "withdrawn")
EVENT_TYPES = {"opened": "anomaly.opened", "updated": "anomaly.updated",
               "resolved": "anomaly.resolved", "withdrawn": "anomaly.withdrawn",
               grouping.GROUP_OPENED: "group.opened",
               grouping.GROUP_RESOLVED: "group.resolved"}
SIGNATURE_HEADER = "X-Archwatch-Signature"
TIMESTAMP_HEADER = "X-Archwatch-Timestamp"
_clock = VersionClock()
_WRITE_LOCK = threading.RLock()  # compare-and-set of delivery rows (deliverer vs admin API)
_CHUNK = 2000


def _chunks(items: Sequence[Any], n: int = _CHUNK) -> Iterable[list[Any]]:
    for i in range(0, len(items), n):
        yield list(items[i:i + n])


# ---------------------------------------------------------------------------
# Subscriptions

@dataclass(frozen=True)
class Webhook:
    """A subscription: where to POST, the signing secret, and filters (empty: all)."""

    webhook_id: str
    url: str
    secret: str
    codes: tuple[str, ...] = ()
    classes: tuple[str, ...] = ()
    qyms: tuple[str, ...] = ()
    enabled: bool = True
    created_by: str = ""
    created_at: int = 0
    updated_at: int = 0
    version: int = 0

    def matches(self, code: str, cls: str, qym: str) -> bool:
        return ((not self.codes or code in self.codes)
                and (not self.classes or cls in self.classes)
                and (not self.qyms or qym in self.qyms))

    def row(self, deleted: bool = False) -> dict[str, Any]:
        return {"webhook_id": self.webhook_id, "url": self.url, "secret": self.secret,
                "codes": list(self.codes), "classes": list(self.classes),
                "qyms": list(self.qyms), "enabled": int(self.enabled),
                "created_by": self.created_by, "created_at": ch_time(self.created_at),
                "updated_at": ch_time(self.updated_at), "version": self.version,
                "is_deleted": int(deleted)}

    @classmethod
    def from_row(cls, r: Mapping[str, Any]) -> Webhook:
        return cls(r["webhook_id"], r["url"], r["secret"], tuple(r["codes"]),
                   tuple(r["classes"]), tuple(r["qyms"]), bool(r["enabled"]),
                   r["created_by"], r["created_ms"], r["updated_ms"], r["version"])

    def public(self) -> dict[str, Any]:
        """Without the secret (shown once, when set)."""
        return {"webhookId": self.webhook_id, "url": self.url, "codes": list(self.codes),
                "classes": list(self.classes), "qyms": list(self.qyms),
                "enabled": self.enabled, "createdBy": self.created_by,
                "createdAt": to_iso_utc(self.created_at),
                "updatedAt": to_iso_utc(self.updated_at)}


def validate_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or len(url) > 2048:
        raise ValueError("url: an http:// or https:// URL with a host")
    return url


_WH_COLS = ("webhook_id, url, secret, codes, classes, qyms, enabled, created_by,"
            " toUnixTimestamp64Milli(created_at) AS created_ms,"
            " toUnixTimestamp64Milli(updated_at) AS updated_ms, version")


class Webhooks:
    """The ``webhook`` table: subscriptions managed by the administrator."""

    def __init__(self, store: Store, clock: Callable[[], int] = now_ms) -> None:
        self.store = store
        self.clock = clock

    def all(self) -> list[Webhook]:
        return [Webhook.from_row(r) for r in self.store.query(
            f"SELECT {_WH_COLS} FROM webhook FINAL ORDER BY webhook_id")]

    def get(self, webhook_id: str) -> Webhook | None:
        rows = self.store.query(f"SELECT {_WH_COLS} FROM webhook FINAL WHERE webhook_id = {{w:String}}",
                                {"w": webhook_id})
        return Webhook.from_row(rows[0]) if rows else None

    def put(self, webhook_id: str, url: str, secret: str | None = None,
            codes: Sequence[str] = (), classes: Sequence[str] = (), qyms: Sequence[str] = (),
            enabled: bool = True, actor: str = "") -> tuple[Webhook, str | None]:
        """Create or replace a subscription; returns it and its secret when one was set
        now (generated when ``secret`` is None on creation; kept on a replace)."""
        validate_url(url)
        now = self.clock()
        old = self.get(webhook_id)
        shown = secret
        if secret is None:
            secret = old.secret if old else secrets.token_urlsafe(32)
            shown = None if old else secret
        w = Webhook(webhook_id, url, secret, tuple(codes), tuple(classes), tuple(qyms),
                    enabled, old.created_by if old else actor,
                    old.created_at if old else now, now, _clock.next())
        self.store.insert("webhook", [w.row()])
        return w, shown

    def delete(self, webhook_id: str) -> bool:
        old = self.get(webhook_id)
        if old is None:
            return False
        gone = replace(old, updated_at=self.clock(), version=_clock.next())
        self.store.insert("webhook", [gone.row(deleted=True)])
        return True


def load_webhook_file(path: str | Path) -> list[dict[str, Any]]:
    """Subscriptions from a JSON file: a list of {"webhookId", "url", "secret", "codes",
    "classes", "qyms", "enabled"} (secret required: a file is the administrator's own)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, list):
        raise ValueError("a JSON list of webhooks")
    out = []
    for i, w in enumerate(data):
        if not isinstance(w, dict) or not w.get("webhookId") or not w.get("url") \
                or not w.get("secret"):
            raise ValueError(f"webhook {i}: webhookId, url and secret are required")
        validate_url(w["url"])
        unknown = set(w) - {"webhookId", "url", "secret", "codes", "classes", "qyms", "enabled"}
        if unknown:
            raise ValueError(f"webhook {i}: unknown keys {sorted(unknown)}")
        out.append(w)
    return out


def apply_webhook_file(store: Store, path: str | Path) -> int:
    hooks = Webhooks(store)
    items = load_webhook_file(path)
    for w in items:
        hooks.put(w["webhookId"], w["url"], w["secret"], w.get("codes", []),
                  w.get("classes", []), w.get("qyms", []), w.get("enabled", True),
                  actor=f"file:{path}")
    return len(items)


# ---------------------------------------------------------------------------
# Notifications (the outbox)

def alert_data(r: Mapping[str, Any]) -> dict[str, Any]:
    """One transition as the live feed and the webhooks show it (an ``anomaly_feed`` row
    with ``opened``/``resolved`` in epoch ms)."""
    return {
        "seq": r["seq"], "kind": r["kind"], "anomalyId": r["anomaly_id"], "code": r["code"],
        "class": r["class"], "caseNo": r["case_no"] or None,
        "archiveNo": r["archive_no"] or None, "receiverId": r["receiver_id"] or None,
        "qym": r["qym"] or None, "deptCode": r["dept_code"] or None,
        "systemCode": r["system_code"] or None, "taskCode": r["task_code"] or None,
        "openedAt": to_iso_utc(r["opened"]), "resolvedAt": to_iso_utc(r["resolved"]),
        "detail": r["detail"],
    }


FEED_COLS = ("seq, toUnixTimestamp64Milli(at) AS at_ms, kind, anomaly_id, code, class,"
             " case_no, archive_no, receiver_id, qym, dept_code, system_code, task_code,"
             " toUnixTimestamp64Milli(opened_at) AS opened,"
             " toUnixTimestamp64Milli(resolved_at) AS resolved, detail")


def transition_id(r: Mapping[str, Any]) -> str:
    """Identity of a transition, the same for its at-least-once duplicates in the feed
    (which differ only in ``seq`` and ``at``)."""
    parts = [r["anomaly_id"], r["kind"], r["code"], r["case_no"], r["archive_no"],
             r["receiver_id"], r["qym"], r["dept_code"], r["system_code"], r["task_code"],
             r["opened"], r["resolved"], r["detail"]]
    return "t-" + hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Notification:
    notification_id: str
    seq: int
    kind: str
    state: str
    anomaly_id: str
    code: str
    cls: str
    receiver_id: str
    qym: str
    dept_code: str
    system_code: str
    at: int  # opened_at (opened), resolved_at (resolved), else the feed time; groups: start
    payload: str
    group_id: str = ""
    members: tuple[str, ...] = ()
    created_at: int = 0
    version: int = 0

    def row(self) -> dict[str, Any]:
        return {"notification_id": self.notification_id, "seq": self.seq, "kind": self.kind,
                "state": self.state, "anomaly_id": self.anomaly_id, "code": self.code,
                "class": self.cls, "receiver_id": self.receiver_id, "qym": self.qym,
                "dept_code": self.dept_code, "system_code": self.system_code,
                "at": ch_time(self.at), "group_id": self.group_id,
                "members": list(self.members), "payload": self.payload,
                "created_at": ch_time(self.created_at), "version": self.version}

    @classmethod
    def from_row(cls, r: Mapping[str, Any]) -> Notification:
        return cls(r["notification_id"], r["seq"], r["kind"], r["state"], r["anomaly_id"],
                   r["code"], r["class"], r["receiver_id"], r["qym"], r["dept_code"],
                   r["system_code"], r["at_ms"], r["payload"], r["group_id"],
                   tuple(r["members"]), r["created_ms"], r["version"])

    def held(self) -> Held:
        return Held(self.notification_id, self.kind, self.anomaly_id, self.receiver_id,
                    self.qym, self.at)

    @property
    def event_type(self) -> str:
        return EVENT_TYPES[self.kind]

    def body(self, webhook_id: str, attempt: int) -> dict[str, Any]:
        """The JSON a webhook receives (docs/alerts.md)."""
        key = "group" if self.kind.startswith("group_") else "alert"
        return {"id": self.notification_id, "type": self.event_type, "webhookId": webhook_id,
                "attempt": attempt, "createdAt": to_iso_utc(self.created_at),
                key: json.loads(self.payload)}


_N_COLS = ("notification_id, seq, kind, state, anomaly_id, code, class, receiver_id, qym,"
           " dept_code, system_code, toUnixTimestamp64Milli(at) AS at_ms, group_id, members,"
           " payload, toUnixTimestamp64Milli(created_at) AS created_ms, version")


def _group_payload(kind: str, gid: str, qym: str, start: int, members: Sequence[Held],
                   opened: Mapping[str, Held], still_down: Sequence[str] = (),
                   all_members: int = 0, end: int | None = None,
                   seq: int = 0) -> dict[str, Any]:
    rec = []
    for h in members:
        o = opened.get(h.anomaly_id)
        rec.append({"receiverId": h.receiver_id, "anomalyId": h.anomaly_id,
                    "openedAt": to_iso_utc(o.at_ms if o else h.at_ms if kind ==
                                           grouping.GROUP_OPENED else None),
                    "resolvedAt": to_iso_utc(h.at_ms) if h.kind == grouping.RESOLVED
                    else None,
                    **({"withdrawn": True} if h.kind == grouping.WITHDRAWN else {})})
    n = len(members)
    if kind == grouping.GROUP_OPENED:
        detail = f"{n} receivers of region {qym} went down within one window"
    else:
        detail = (f"{n} of {all_members} receivers of region {qym} are back"
                  + ("" if still_down else "; all back"))
    out: dict[str, Any] = {
        "seq": seq, "kind": kind, "groupId": gid, "code": grouping.GROUPED_CODE,
        "class": "link", "qym": qym, "count": n, "receivers": rec,
        "windowStart": to_iso_utc(start), "detail": detail,
        "caseNo": None, "receiverId": None,
        "openedAt": to_iso_utc(start), "resolvedAt": None,
    }
    if kind == grouping.GROUP_OPENED:
        out["windowEnd"] = to_iso_utc(end)
    else:
        out["stillDown"] = list(still_down)
        out["allResolved"] = not still_down
    return out


# a Distributed table's engine: Distributed(cluster, database, local table, sharding key)
_DISTRIBUTED = re.compile(r"^Distributed\(\s*'?([\w.-]+)'?\s*,\s*'?(\w+)'?\s*,\s*'?(\w+)'?")


class Outbox:
    """The ``alert_notification`` and ``webhook_delivery`` tables."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._targets: dict[str, str] = {}  # see _delete_target

    def put(self, rows: Sequence[Notification]) -> list[Notification]:
        out = [replace(n, version=_clock.next()) for n in rows]
        if out:
            self.store.insert("alert_notification", [n.row() for n in out])
        return out

    def existing(self, ids: Sequence[str]) -> set[str]:
        out: set[str] = set()
        for part in _chunks(sorted(set(ids))):
            out.update(r["notification_id"] for r in self.store.query(
                "SELECT notification_id FROM alert_notification WHERE notification_id IN"
                " {ids:Array(String)}", {"ids": part}))
        return out

    def by_state(self, state: str, limit: int = 5000) -> list[Notification]:
        return [Notification.from_row(r) for r in self.store.query(
            f"SELECT {_N_COLS} FROM alert_notification FINAL WHERE state = {{s:String}}"
            " ORDER BY seq LIMIT {lim:UInt32}", {"s": state, "lim": limit})]

    def find(self, ids: Sequence[str]) -> dict[str, Notification]:
        out: dict[str, Notification] = {}
        for part in _chunks(sorted(set(ids))):
            for r in self.store.query(f"SELECT {_N_COLS} FROM alert_notification FINAL"
                                      " WHERE notification_id IN {ids:Array(String)}",
                                      {"ids": part}):
                out[r["notification_id"]] = Notification.from_row(r)
        return out

    def groups(self, anomaly_ids: Sequence[str], group_ids: Sequence[str]
               ) -> dict[str, grouping.Group]:
        """Groups that contain one of ``anomaly_ids`` or have one of ``group_ids``, with
        what their earlier resolutions resolved."""
        if not anomaly_ids and not group_ids:
            return {}
        rows = self.store.query(
            f"SELECT {_N_COLS} FROM alert_notification FINAL WHERE kind = 'group_opened'"
            " AND (hasAny(members, {a:Array(String)}) OR notification_id IN {g:Array(String)})",
            {"a": list(anomaly_ids), "g": list(group_ids)})
        if not rows:
            return {}
        gids = [r["notification_id"] for r in rows]
        resolved: dict[str, set[str]] = {g: set() for g in gids}
        for r in self.store.query(
                "SELECT group_id, members FROM alert_notification FINAL"
                " WHERE kind = 'group_resolved' AND group_id IN {g:Array(String)}",
                {"g": gids}):
            resolved[r["group_id"]].update(r["members"])
        return {r["notification_id"]: grouping.Group(
            r["notification_id"], r["qym"], r["at_ms"], frozenset(r["members"]),
            frozenset(resolved[r["notification_id"]])) for r in rows}

    def opened_of(self, anomaly_ids: Sequence[str]) -> dict[str, Held]:
        """The ``opened`` transitions of these anomalies (for group resolutions)."""
        out: dict[str, Held] = {}
        for part in _chunks(sorted(set(anomaly_ids))):
            for r in self.store.query(
                    f"SELECT {_N_COLS} FROM alert_notification FINAL WHERE kind = 'opened'"
                    " AND anomaly_id IN {a:Array(String)}", {"a": part}):
                out[r["anomaly_id"]] = Notification.from_row(r).held()
        return out

    def prunable(self, cutoff_ms: int, limit: int) -> tuple[list[str], bool]:
        """Notifications nothing will read or send again, every one written before
        ``cutoff_ms``: all of an anomaly's once its last transition closed it (resolved,
        withdrawn), all of a group's once every member is back; and in either case every
        delivery of them delivered (a failed or dead one keeps its notification, for the
        retries and the administrator). Whole keys, so that no older version of a row
        can come back the way a TTL on these ReplacingMergeTree tables would let it.
        At most ``limit`` anomalies and ``limit`` groups; the flag: more may be left."""
        params = {"cut": cutoff_ms, "lim": limit}
        waiting = ("(SELECT groupArray(DISTINCT notification_id) FROM webhook_delivery FINAL"
                   " WHERE status != 'delivered')")
        closed = [r["ids"] for r in self.store.query(
            "SELECT groupArray(notification_id) AS ids FROM alert_notification FINAL"
            " WHERE kind IN ('opened', 'updated', 'resolved', 'withdrawn')"
            " GROUP BY anomaly_id"
            " HAVING argMax(kind, seq) IN ('resolved', 'withdrawn')"
            " AND max(created_at) < fromUnixTimestamp64Milli({cut:Int64}, 'UTC')"
            " AND countIf(state NOT IN ('done', 'grouped')) = 0"
            f" AND NOT hasAny(ids, {waiting})"
            " ORDER BY min(seq) LIMIT {lim:UInt32}", params)]
        groups = [r["ids"] for r in self.store.query(
            "SELECT arrayConcat([g.notification_id], r.ids) AS ids FROM"
            " (SELECT notification_id, seq, members FROM alert_notification FINAL"
            "  WHERE kind = 'group_opened' AND state IN ('done', 'grouped')"
            "  AND created_at < fromUnixTimestamp64Milli({cut:Int64}, 'UTC')) AS g"
            " INNER JOIN"
            " (SELECT group_id, groupArray(notification_id) AS ids,"
            "  groupArrayArray(members) AS back, max(created_at) AS last,"
            "  countIf(state NOT IN ('done', 'grouped')) AS open"
            "  FROM alert_notification FINAL WHERE kind = 'group_resolved'"
            "  GROUP BY group_id) AS r ON r.group_id = g.notification_id"
            " WHERE hasAll(r.back, g.members) AND r.open = 0"
            " AND r.last < fromUnixTimestamp64Milli({cut:Int64}, 'UTC')"
            f" AND NOT hasAny(ids, {waiting})"
            " ORDER BY g.seq LIMIT {lim:UInt32}", params)]
        return ([i for ids in (*closed, *groups) for i in ids],
                len(closed) == limit or len(groups) == limit)

    def delete(self, ids: Sequence[str]) -> None:
        """Delete these notifications and their deliveries, deliveries first: a deliverer
        stopped in between leaves notifications without deliveries, which the next pass
        finds again."""
        for part in _chunks(sorted(set(ids))):
            for table in ("webhook_delivery", "alert_notification"):
                self.store.command(f"DELETE FROM {self._delete_target(table)} WHERE"
                                   " notification_id IN {ids:Array(String)}", {"ids": part})

    def _delete_target(self, table: str) -> str:
        """What ``DELETE FROM`` names for ``table``: itself on one server; on a cluster
        (docs/cluster.md) the Distributed table's local tables, ON CLUSTER, since a
        Distributed table takes no DELETE (each node deletes the rows it holds)."""
        if table not in self._targets:
            rows = self.store.query(
                "SELECT engine_full FROM system.tables WHERE database = currentDatabase()"
                " AND name = {t:String}", {"t": table})
            m = _DISTRIBUTED.match(rows[0]["engine_full"]) if rows else None
            self._targets[table] = (f"{m[2]}.{m[3]} ON CLUSTER {m[1]}" if m else table)
        return self._targets[table]

    def group_events(self, after: int, where: str, params: Mapping[str, Any],
                     limit: int = 500) -> list[dict[str, Any]]:
        """Group notifications after ``after`` (seq) for the live feed."""
        return self.store.query(
            "SELECT seq, kind, payload FROM alert_notification FINAL"
            " WHERE kind IN ('group_opened', 'group_resolved') AND seq > {after:UInt64}"
            f" AND {where} ORDER BY seq LIMIT {int(limit)}", {**params, "after": after})


# ---------------------------------------------------------------------------
# Deliveries

@dataclass(frozen=True)
class Delivery:
    webhook_id: str
    notification_id: str
    seq: int
    status: str = PENDING
    attempts: int = 0
    last_error: str = ""
    last_status: int = 0
    next_attempt_at: int = 0
    created_at: int = 0
    updated_at: int = 0
    delivered_at: int | None = None
    version: int = 0

    def row(self) -> dict[str, Any]:
        return {"webhook_id": self.webhook_id, "notification_id": self.notification_id,
                "seq": self.seq, "status": self.status, "attempts": self.attempts,
                "last_error": self.last_error, "last_status": self.last_status,
                "next_attempt_at": ch_time(self.next_attempt_at),
                "created_at": ch_time(self.created_at), "updated_at": ch_time(self.updated_at),
                "delivered_at": None if self.delivered_at is None else ch_time(self.delivered_at),
                "version": self.version}

    @classmethod
    def from_row(cls, r: Mapping[str, Any]) -> Delivery:
        return cls(r["webhook_id"], r["notification_id"], r["seq"], r["status"],
                   r["attempts"], r["last_error"], r["last_status"], r["next_ms"],
                   r["created_ms"], r["updated_ms"], r["delivered_ms"], r["version"])

    @property
    def key(self) -> tuple[str, str]:
        return self.webhook_id, self.notification_id

    def public(self) -> dict[str, Any]:
        return {"webhookId": self.webhook_id, "notificationId": self.notification_id,
                "seq": self.seq, "status": self.status, "attempts": self.attempts,
                "lastError": self.last_error or None, "lastStatus": self.last_status or None,
                "nextAttemptAt": to_iso_utc(self.next_attempt_at)
                if self.status in (PENDING, FAILED, SENDING) else None,
                "createdAt": to_iso_utc(self.created_at),
                "updatedAt": to_iso_utc(self.updated_at),
                "deliveredAt": to_iso_utc(self.delivered_at)}


_D_COLS = ("webhook_id, notification_id, seq, status, attempts, last_error, last_status,"
           " toUnixTimestamp64Milli(next_attempt_at) AS next_ms,"
           " toUnixTimestamp64Milli(created_at) AS created_ms,"
           " toUnixTimestamp64Milli(updated_at) AS updated_ms,"
           " toUnixTimestamp64Milli(delivered_at) AS delivered_ms, version")


class Deliveries:
    """The ``webhook_delivery`` table; every change is a compare-and-set on the version."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def list(self, webhook_id: str | None = None, status: str | None = None,
             limit: int = 50, offset: int = 0) -> tuple[list[Delivery], int]:
        rows, total = self.store.page("webhook_delivery", _D_COLS,
                                      {"webhook_id": webhook_id, "status": status},
                                      "seq DESC, webhook_id", limit, offset)
        return [Delivery.from_row(r) for r in rows], total

    def counts(self) -> dict[str, dict[str, int]]:
        """Deliveries by webhook and status."""
        out: dict[str, dict[str, int]] = {}
        for r in self.store.query("SELECT webhook_id, status, count() AS n FROM"
                                  " webhook_delivery FINAL GROUP BY webhook_id, status"):
            out.setdefault(r["webhook_id"], {})[r["status"]] = r["n"]
        return out

    def find(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Delivery]:
        out: dict[tuple[str, str], Delivery] = {}
        wanted = set(keys)
        for part in _chunks(sorted(wanted)):
            rows = self.store.query(
                f"SELECT {_D_COLS} FROM webhook_delivery FINAL WHERE webhook_id IN"
                " {w:Array(String)} AND notification_id IN {n:Array(String)}",
                {"w": sorted({w for w, _ in part}), "n": sorted({n for _, n in part})})
            for r in rows:
                d = Delivery.from_row(r)
                if d.key in wanted:
                    out[d.key] = d
        return out

    def due(self, now: int, limit: int) -> list[Delivery]:
        return [Delivery.from_row(r) for r in self.store.query(
            f"SELECT {_D_COLS} FROM webhook_delivery FINAL WHERE status IN"
            " ('pending', 'failed', 'sending')"
            " AND next_attempt_at <= fromUnixTimestamp64Milli({now:Int64}, 'UTC')"
            " ORDER BY seq, webhook_id LIMIT {lim:UInt32}", {"now": now, "lim": limit})]

    def add(self, rows: Sequence[Delivery]) -> int:
        """Insert those not there yet (a repeated fan-out changes nothing)."""
        with _WRITE_LOCK:
            have = self.find([d.key for d in rows])
            new = [replace(d, version=_clock.next()) for d in rows if d.key not in have]
            if new:
                self.store.insert("webhook_delivery", [d.row() for d in new])
            return len(new)

    def swap(self, old: Delivery, new: Delivery) -> Delivery | None:
        """Write ``new`` if the row is still ``old`` (same version); else None."""
        with _WRITE_LOCK:
            cur = self.find([old.key]).get(old.key)
            if cur is None or cur.version != old.version:
                return None
            v = max(_clock.next(), cur.version + 1)
            out = replace(new, version=v)
            self.store.insert("webhook_delivery", [out.row()])
            return out


# ---------------------------------------------------------------------------
# Signing and sending

def sign(secret: str, timestamp: int, body: bytes) -> str:
    """``sha256=<hex>`` of HMAC-SHA256(secret, "<timestamp>." + body)."""
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, timestamp: str, body: bytes, signature: str,
           now_s: float | None = None, tolerance_s: float = 300.0) -> bool:
    """What a receiver checks: the signature matches and the timestamp is recent (a
    replayed old request fails)."""
    try:
        ts = int(timestamp)
    except ValueError:
        return False
    now_s = time.time() if now_s is None else now_s
    if abs(now_s - ts) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, ts, body), signature)


@dataclass(frozen=True)
class Answer:
    ok: bool
    status: int = 0
    error: str = ""
    endpoint_fault: bool = False  # connection error, 5xx, 429: skip this webhook this cycle
    retry_after_ms: int | None = None


Post = Callable[[str, bytes, dict[str, str], float], Answer]


class HttpPoster:
    """POST with httpx (one pooled client); any 2xx is an acknowledgement."""

    def __init__(self) -> None:
        import httpx

        self._httpx = httpx
        self.client = httpx.Client(follow_redirects=False, headers={
            "User-Agent": "archwatch-notifier"})

    def __call__(self, url: str, body: bytes, headers: dict[str, str],
                 timeout: float) -> Answer:
        httpx = self._httpx
        try:
            r = self.client.post(url, content=body, headers=headers, timeout=timeout)
        except httpx.HTTPError as exc:
            return Answer(False, 0, f"{type(exc).__name__}: {exc}"[:500], True)
        if 200 <= r.status_code < 300:
            return Answer(True, r.status_code)
        retry_after = None
        ra = r.headers.get("retry-after", "")
        if ra.isdigit():
            retry_after = int(ra) * 1000
        text = r.text[:300].strip()
        return Answer(False, r.status_code, f"HTTP {r.status_code}: {text}"[:500],
                      r.status_code >= 500 or r.status_code == 429, retry_after)

    def close(self) -> None:
        self.client.close()


@dataclass(frozen=True)
class NotifySettings:
    """Retries: delay after the n-th failure is min(cap, base * 2^(n-1)) scaled by a
    random factor in [1 - jitter, 1] (so many receivers failing together do not retry in
    lockstep), at least the receiver's Retry-After; after ``max_attempts`` the delivery
    is dead. ``lease_ms``: a POST whose answer was not recorded is sent again after this.
    ``settle_ms``: how far the feed cursor trails the wall clock."""

    base_delay_ms: int = 5_000
    max_delay_ms: int = 3_600_000
    jitter: float = 0.5
    max_attempts: int = 12
    lease_ms: int = 60_000
    timeout_s: float = 10.0
    batch: int = 500
    settle_ms: int = 10_000
    group: GroupRule = field(default_factory=GroupRule)
    # the outbox's notifications done with this long ago are deleted (0: kept forever),
    # checked at start and every prune_every_ms
    retention_ms: int = 30 * 86_400_000
    prune_every_ms: int = 3_600_000
    # a standby deliverer takes over once the active one has not renewed for this long
    takeover_ms: int = 30_000
    threads: int = 4  # webhooks delivered to at once

    def backoff(self, attempts: int, rnd: float, retry_after_ms: int | None = None) -> int:
        """Delay after the ``attempts``-th failure; ``rnd`` uniform in [0, 1)."""
        raw = min(self.max_delay_ms, self.base_delay_ms * 2 ** min(max(attempts - 1, 0), 40))
        delay = int(raw * (1 - self.jitter * rnd))
        if retry_after_ms is not None:
            delay = max(delay, min(retry_after_ms, self.max_delay_ms))
        return max(delay, 1)


LEASE = "webhooks"  # the deliverer's row in worker_lease (archwatch/lease.py)


def _active_gauge(active: bool) -> None:
    from archwatch import metrics

    metrics.WEBHOOK_ACTIVE.set(1 if active else 0)


COUNT_KEYS = ("read", "notifications", "grouped", "groups", "fannedOut", "due", "delivered",
              "failed", "dead", "deferred", "conflict", "pruned")


class Deliverer:
    """One deliverer per store; :meth:`cycle` runs intake, grouping, fan-out, delivery."""

    def __init__(self, store: Store, settings: NotifySettings | None = None,
                 clock: Callable[[], int] = now_ms, post: Post | None = None,
                 rng: Callable[[], float] = random.random, holder: str | None = None) -> None:
        self.store = store
        self.settings = settings or NotifySettings()
        self.lease = Lease(store, LEASE, holder, self.settings.takeover_ms, clock,
                           what="webhook deliverer", on_change=_active_gauge)
        self._pool: ThreadPoolExecutor | None = None  # see deliver
        self.clock = clock
        self._own_post = post is None
        self.post: Post = post or HttpPoster()
        self.rng = rng
        self.outbox = Outbox(store)
        self.deliveries = Deliveries(store)
        self.webhooks = Webhooks(store, clock)
        self._next_prune = 0  # the clock's ms: at the first cycle

    # -- cursor ----------------------------------------------------------------
    def cursor(self, hooks: Sequence[Webhook] = ()) -> int:
        """Where the last intake stopped. The first start begins when the oldest
        subscription was created (without any, at the feed's head): history written
        before anyone subscribed is not sent."""
        rows = self.store.query("SELECT seq FROM notifier_cursor FINAL WHERE name = {n:String}",
                                {"n": CURSOR})
        if rows:
            return int(rows[0]["seq"])
        if hooks:
            start = min(w.created_at for w in hooks) * 1_000_000
        else:
            head = self.store.query("SELECT max(seq) AS m FROM anomaly_feed")
            start = int(head[0]["m"]) if head else 0
        self._set_cursor(start)
        return start

    def _set_cursor(self, seq: int) -> None:
        self.store.insert("notifier_cursor", [{"name": CURSOR, "seq": seq,
                                               "version": _clock.next()}])

    # -- 1. intake --------------------------------------------------------------
    def intake(self, hooks: Sequence[Webhook]) -> tuple[int, int]:
        """Feed rows after the cursor into the outbox; (rows read, notifications new).

        Only the rows someone wants are read (:meth:`_wanted`): the feed holds every
        transition of every case, and reading them all, the last ``settle_ms`` again at
        every pass, was most of the deliverer's CPU with no subscription at all (16% of
        a core beside `archwatch up` at 3,500 events/s: bench/RESULTS.md section 2)."""
        s = self.settings
        start = cur = self.cursor(hooks)
        enabled = [w for w in hooks if w.enabled]
        wanted = self._wanted(enabled)
        top = start
        if wanted is None or wanted[0]:
            # some rows are passed over: the feed's last row now, up to which the cursor
            # may go once the wanted rows are read to the end, as after reading them all
            top = int(self.store.query("SELECT max(seq) AS m FROM anomaly_feed WHERE seq >"
                                       " {c:UInt64}", {"c": start})[0]["m"])
        if wanted is None:  # nothing to read
            self._moved(start, max(start, top))
            return 0, 0
        where, params = wanted
        read = made = 0
        while True:
            rows = self.store.query(f"SELECT {FEED_COLS} FROM anomaly_feed WHERE seq >"
                                    " {c:UInt64}" + where + " ORDER BY seq LIMIT {lim:UInt32}",
                                    {**params, "c": cur, "lim": s.batch})
            if not rows:
                cur = max(cur, top)  # every row up to top was there to be read
                break
            read += len(rows)
            ids = [transition_id(r) for r in rows]
            have = self.outbox.existing(ids)
            now = self.clock()
            new: dict[str, Notification] = {}
            for nid, r in zip(ids, rows, strict=True):
                if nid in have or nid in new:
                    continue
                grouped = r["code"] == grouping.GROUPED_CODE and s.group.enabled
                if not grouped and not any(w.matches(r["code"], r["class"], r["qym"])
                                           for w in enabled):
                    continue
                at = (r["opened"] if r["kind"] == "opened" else
                      r["resolved"] if r["kind"] == "resolved" and r["resolved"] is not None
                      else r["at_ms"])
                new[nid] = Notification(
                    nid, r["seq"], r["kind"], HELD if grouped else READY, r["anomaly_id"],
                    r["code"], r["class"], r["receiver_id"], r["qym"], r["dept_code"],
                    r["system_code"], at,
                    json.dumps(alert_data(r), ensure_ascii=False), created_at=now)
            self.outbox.put(list(new.values()))
            made += len(new)
            cur = rows[-1]["seq"]
            if len(rows) < s.batch:
                cur = max(cur, top)
                break
        self._moved(start, cur)
        return read, made

    def _moved(self, start: int, cur: int) -> None:
        """The cursor to ``cur``, everything up to which is read, but no nearer the wall
        clock than ``settle_ms``: rows may still appear below seqs allocated in that
        time, and are read again."""
        safe = max(start, min(cur, (self.clock() - self.settings.settle_ms) * 1_000_000))
        if safe != start:
            self._set_cursor(safe)

    def _wanted(self, enabled: Sequence[Webhook]) -> tuple[str, dict[str, Any]] | None:
        """The condition (`` AND ...``, and its parameters) of the feed rows that an
        enabled subscription's filters match or that the grouping holds (every
        RECEIVER_DOWN transition: the alert stream carries the groups); "" when some
        subscription takes everything; None when nothing is wanted. The same choice as
        :meth:`Webhook.matches` in :meth:`intake`, made by the store."""
        terms: list[str] = []
        params: dict[str, Any] = {}
        if self.settings.group.enabled:
            terms.append("code = {gc:String}")
            params["gc"] = grouping.GROUPED_CODE
        for i, w in enumerate(enabled):
            parts = []
            for col, values in (("code", w.codes), ("class", w.classes), ("qym", w.qyms)):
                if values:
                    parts.append(f"{col} IN {{w{i}{col}:Array(String)}}")
                    params[f"w{i}{col}"] = list(values)
            if not parts:
                return "", {}
            terms.append("(" + " AND ".join(parts) + ")")
        if not terms:
            return None
        return " AND (" + " OR ".join(terms) + ")", params

    # -- 2. grouping ------------------------------------------------------------
    def group(self) -> tuple[int, int]:
        """Apply the regional grouping to held transitions; (absorbed, group notes)."""
        held = self.outbox.by_state(HELD)
        if not held:
            return 0, 0
        by_id = {n.notification_id: n for n in held}
        hs = [n.held() for n in held]
        candidates = [grouping.group_id(h.qym, h.at_ms) for h in hs if h.kind == "opened"]
        groups = self.outbox.groups([h.anomaly_id for h in hs], candidates)
        now = self.clock()
        plan = grouping.plan(hs, groups, now, self.settings.group)
        if not plan:
            return 0, 0
        opened = self.outbox.opened_of([a for r in plan.resolutions
                                        for a in (*(m.anomaly_id for m in r.members),
                                                  *r.still_down)])
        notes: list[Notification] = []
        for g in plan.groups:
            seq = _clock.next()
            payload = _group_payload(grouping.GROUP_OPENED, g.group_id, g.qym, g.start_ms,
                                     g.members, {}, end=g.end_ms, seq=seq)
            notes.append(Notification(
                g.group_id, seq, grouping.GROUP_OPENED, READY, "", grouping.GROUPED_CODE,
                "link", "", g.qym, "", "", g.start_ms,
                json.dumps(payload, ensure_ascii=False), g.group_id,
                tuple(h.anomaly_id for h in g.members), now))
        sizes = {g.group_id: len(g.members) for g in groups.values()}
        sizes.update({g.group_id: len(g.members) for g in plan.groups})
        for res in plan.resolutions:
            seq = _clock.next()
            still = [opened[a].receiver_id if a in opened else a for a in res.still_down]
            payload = _group_payload(grouping.GROUP_RESOLVED, res.group_id, res.qym,
                                     res.start_ms, res.members, opened, still_down=still,
                                     all_members=sizes.get(res.group_id, 0), seq=seq)
            payload["resolutionId"] = res.notification_id
            notes.append(Notification(
                res.notification_id, seq, grouping.GROUP_RESOLVED, READY, "",
                grouping.GROUPED_CODE, "link", "", res.qym, "", "", res.start_ms,
                json.dumps(payload, ensure_ascii=False), res.group_id,
                tuple(h.anomaly_id for h in res.members), now))
        # Group notes first: a stop before the members are marked recomputes the same ids.
        known = self.outbox.existing([n.notification_id for n in notes])
        fresh = [n for n in notes if n.notification_id not in known]
        self.outbox.put(fresh)
        changes = [replace(by_id[nid], state=GROUPED, group_id=gid)
                   for nid, gid in plan.absorbed.items()]
        changes += [replace(by_id[nid], state=READY) for nid in plan.release]
        self.outbox.put(changes)
        return len(plan.absorbed), len(fresh)

    # -- 3. fan-out -------------------------------------------------------------
    def fan_out(self, hooks: Sequence[Webhook]) -> int:
        enabled = [w for w in hooks if w.enabled]
        total = 0
        while True:
            ready = self.outbox.by_state(READY, self.settings.batch)
            if not ready:
                return total
            now = self.clock()
            # a subscription receives what was written after its creation
            rows = [Delivery(w.webhook_id, n.notification_id, n.seq, PENDING, 0, "", 0, now,
                             now, now)
                    for n in ready for w in enabled
                    if w.matches(n.code, n.cls, n.qym) and w.created_at * 1_000_000 <= n.seq]
            total += self.deliveries.add(rows)
            self.outbox.put([replace(n, state=DONE) for n in ready])
            if len(ready) < self.settings.batch:
                return total

    # -- 4. delivery ------------------------------------------------------------
    def deliver(self, hooks: Sequence[Webhook], counts: dict[str, int]) -> None:
        """Send what is due: each webhook's deliveries in order, up to ``threads`` webhooks
        at once, so a receiver that hangs until the timeout holds up only its own."""
        from archwatch import metrics

        s = self.settings
        now = self.clock()
        by_id = {w.webhook_id: w for w in hooks}
        due = self.deliveries.due(now, s.batch)
        counts["due"] += len(due)
        notes = self.outbox.find([d.notification_id for d in due])
        per_hook: dict[str, list[Delivery]] = {}
        for d in due:
            w = by_id.get(d.webhook_id)
            note = notes.get(d.notification_id)
            if w is None or note is None or (d.status == SENDING and d.attempts >= s.max_attempts):
                why = ("webhook deleted" if w is None else "notification missing"
                       if note is None else f"no answer recorded; gave up after {d.attempts}"
                       " attempts")
                if self.deliveries.swap(d, replace(d, status=DEAD, updated_at=now,
                                                   last_error=why)):
                    counts["dead"] += 1
                    metrics.WEBHOOK_DEAD.inc()
                continue
            if not w.enabled:
                counts["deferred"] += 1
                continue
            per_hook.setdefault(d.webhook_id, []).append(d)
        jobs = [(by_id[k], ds) for k, ds in per_hook.items()]

        def run(job: tuple[Webhook, list[Delivery]]) -> Counter[str]:
            return self._deliver_to(job[0], job[1], notes, now)

        if len(jobs) > 1 and s.threads > 1:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(s.threads, thread_name_prefix="notify-post")
            results = list(self._pool.map(run, jobs))
        else:
            results = [run(j) for j in jobs]
        for c in results:
            for k, v in c.items():
                counts[k] += v

    def _deliver_to(self, w: Webhook, due: list[Delivery], notes: dict[str, Notification],
                    now: int) -> Counter[str]:
        """One webhook's due deliveries, in order; the rest of them wait for the next cycle
        once the receiver fails as a whole (connection error, 5xx, 429)."""
        from archwatch import metrics

        s = self.settings
        counts: Counter[str] = Counter()
        for i, d in enumerate(due):
            note = notes[d.notification_id]
            if not self.lease.check():  # slow POSTs outlived it, and a standby took over
                break
            claimed = self.deliveries.swap(d, replace(
                d, status=SENDING, attempts=d.attempts + 1, updated_at=now,
                next_attempt_at=now + s.lease_ms))
            if claimed is None:
                counts["conflict"] += 1
                continue
            body = json.dumps(note.body(w.webhook_id, claimed.attempts),
                              ensure_ascii=False).encode()
            ts = now // 1000
            headers = {"Content-Type": "application/json; charset=utf-8",
                       "Idempotency-Key": note.notification_id,
                       "X-Archwatch-Event": note.event_type,
                       "X-Archwatch-Delivery": f"{claimed.attempts}",
                       TIMESTAMP_HEADER: str(ts), SIGNATURE_HEADER: sign(w.secret, ts, body)}
            answer = self.post(w.url, body, headers, s.timeout_s)
            at = max(self.clock(), now + 1)
            if answer.ok:
                new = replace(claimed, status=DELIVERED, last_error="",
                              last_status=answer.status, updated_at=at, delivered_at=at,
                              next_attempt_at=at)
            else:
                err = answer.error or "failed"
                dead = claimed.attempts >= s.max_attempts
                if dead:
                    err = f"{err[:400]} (gave up after {claimed.attempts} attempts)"
                new = replace(claimed, status=DEAD if dead else FAILED, last_error=err,
                              last_status=answer.status, updated_at=at,
                              next_attempt_at=at + s.backoff(claimed.attempts, self.rng(),
                                                             answer.retry_after_ms))
            if self.deliveries.swap(claimed, new) is None:
                counts["conflict"] += 1
            elif answer.ok:
                counts["delivered"] += 1
                metrics.WEBHOOK_ATTEMPTS.labels("delivered").inc()
            else:
                counts["failed"] += 1
                metrics.WEBHOOK_ATTEMPTS.labels("failed").inc()
                if new.status == DEAD:
                    counts["dead"] += 1
                    metrics.WEBHOOK_DEAD.inc()
            if not answer.ok and answer.endpoint_fault:
                counts["deferred"] += len(due) - i - 1
                break
        return counts

    def cycle(self) -> dict[str, int]:
        """One pass of intake, grouping, fan-out, delivery and retention; nothing while
        another deliverer holds the lease (see :class:`~archwatch.lease.Lease`)."""
        counts = {k: 0 for k in COUNT_KEYS}
        if not self.lease.check():
            return counts
        hooks = self.webhooks.all()
        counts["read"], counts["notifications"] = self.intake(hooks)
        counts["grouped"], counts["groups"] = self.group()
        counts["fannedOut"] = self.fan_out(hooks)
        self.deliver(hooks, counts)
        counts["pruned"] = self.prune()
        return counts

    # -- 5. retention -----------------------------------------------------------
    def prune(self) -> int:
        """Delete what the outbox will never use again (see :meth:`Outbox.prunable`), at
        most every ``prune_every_ms``; the number of notifications deleted. Without it
        ``alert_notification`` and ``webhook_delivery`` grow with every transition a
        subscription matches. A transition read again after its notification is gone
        would be sent again: the feed is read again only ``settle_ms`` back, and an
        engine's at-least-once output repeats minutes, not the retention."""
        s = self.settings
        now = self.clock()
        if s.retention_ms <= 0 or now < self._next_prune:
            return 0
        self._next_prune = now + s.prune_every_ms
        done: set[str] = set()
        more = True
        try:
            while more:
                ids, more = self.outbox.prunable(now - s.retention_ms, s.batch)
                if not done.isdisjoint(ids):  # deleted, and still read: not again this hour
                    log.warning("outbox retention: %d deleted notifications still read back",
                                len(done.intersection(ids)))
                    break
                self.outbox.delete(ids)
                done.update(ids)
        except StoreError as exc:  # delivery goes on; the next pass tries again
            log.warning("outbox retention failed after %d deletions: %s", len(done), exc)
        return len(done)

    def refresh_gauges(self) -> None:
        from archwatch import metrics

        totals: dict[str, int] = dict.fromkeys(DELIVERY_STATUSES, 0)
        for by_status in self.deliveries.counts().values():
            for st, n in by_status.items():
                totals[st] = totals.get(st, 0) + n
        for st, n in totals.items():
            metrics.WEBHOOK_QUEUE.labels(st).set(n)

    def run(self, interval_s: float = 1.0, stop: threading.Event | None = None,
            once: bool = False, report: Callable[[dict[str, int]], None] | None = None,
            gauges_every_s: float = 10.0) -> None:
        """Cycle until ``stop`` is set (or once). A failed cycle is logged and retried
        (except with ``once``): everything it did is in the store, so nothing is lost."""
        stop = stop or threading.Event()
        last_gauges = 0.0
        try:
            while True:
                try:
                    out = self.cycle()
                    if time.monotonic() - last_gauges >= gauges_every_s:
                        self.refresh_gauges()
                        last_gauges = time.monotonic()
                    if report is not None and any(v for k, v in out.items() if k != "read"):
                        report(out)
                except Exception:
                    if once:
                        raise
                    log.exception("notify cycle failed; retrying in %.1f s", interval_s)
                if once or stop.wait(interval_s):
                    return
        finally:
            if self._pool is not None:
                self._pool.shutdown()
                self._pool = None
            self.lease.release()
            if self._own_post and isinstance(self.post, HttpPoster):
                self.post.close()


# ---------------------------------------------------------------------------
# Command line

def _ms(text: str) -> int:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_flags(p: argparse.ArgumentParser) -> None:
    """Delivery flags shared by ``notify`` and ``up``."""
    g = p.add_argument_group("alert delivery (webhooks)")
    g.add_argument("--webhooks", type=Path, help="JSON file of webhook subscriptions to "
                   "apply at start (the admin API manages them too)")
    g.add_argument("--notify-interval", dest="notify_interval", type=float, default=1.0,
                   help="seconds between delivery cycles")
    g.add_argument("--group-window", dest="group_window", type=_ms, default="PT30S",
                   help="RECEIVER_DOWN of one region opened within this make one grouped "
                        "alert (PT0S: no grouping)")
    g.add_argument("--group-min", dest="group_min", type=int, default=3,
                   help="fewest receivers that make a grouped alert")
    g.add_argument("--retry-base", dest="retry_base", type=_ms, default="PT5S",
                   help="first retry delay, doubled per failure (with jitter)")
    g.add_argument("--retry-max", dest="retry_max", type=_ms, default="PT1H",
                   help="retry delay cap")
    g.add_argument("--max-attempts", dest="max_attempts", type=int, default=12,
                   help="attempts before a delivery is dead")
    g.add_argument("--http-timeout", dest="http_timeout", type=float, default=10.0,
                   help="seconds a webhook POST may take")
    g.add_argument("--lease", type=_ms, default="PT1M",
                   help="a POST whose answer was not recorded (the deliverer stopped) is "
                        "sent again after this")
    g.add_argument("--delivery-threads", dest="delivery_threads", type=int, default=4,
                   help="webhooks POSTed to at once (each one's deliveries stay in order)")
    add_lease_flags(g, "deliverer", "--deliverer-id", _ms)
    g.add_argument("--outbox-retention", dest="outbox_retention", type=_ms, default="P30D",
                   help="delete notifications (and their deliveries) done with this long "
                        "ago: anomaly closed or group back, every delivery delivered "
                        "(PT0S: keep them)")


def settings_from(args: argparse.Namespace) -> NotifySettings:
    if args.group_min < 1 or args.max_attempts < 1 or not 1 <= args.delivery_threads <= 64:
        raise ValueError("--group-min and --max-attempts: at least 1; --delivery-threads: "
                         "1 to 64")
    if args.http_timeout <= 0 or args.notify_interval <= 0:
        raise ValueError("--http-timeout and --notify-interval must be positive")
    if args.takeover <= 2000 * max(args.http_timeout, args.notify_interval):
        raise ValueError("--takeover must exceed twice --http-timeout and --notify-interval "
                         "(the active deliverer renews its lease between POSTs and cycles)")
    if args.lease <= args.http_timeout * 1000:
        raise ValueError("--lease must exceed --http-timeout (a POST still running must "
                         "not be sent again)")
    return NotifySettings(base_delay_ms=args.retry_base, max_delay_ms=args.retry_max,
                          max_attempts=args.max_attempts, lease_ms=args.lease,
                          timeout_s=args.http_timeout,
                          retention_ms=args.outbox_retention,
                          takeover_ms=args.takeover, threads=args.delivery_threads,
                          group=GroupRule(window_ms=args.group_window,
                                          min_size=args.group_min))


def start_thread(store: Store, args: argparse.Namespace) -> tuple[threading.Thread,
                                                                  threading.Event]:
    """The deliverer as a thread of a process that owns the store (``archwatch up``)."""
    settings = settings_from(args)
    if args.webhooks is not None:
        apply_webhook_file(store, args.webhooks)
    stop = threading.Event()
    deliverer = Deliverer(store, settings, holder=args.deliverer_id)
    t = threading.Thread(target=deliverer.run, kwargs={"interval_s": args.notify_interval,
                                                       "stop": stop},
                         name="notify", daemon=True)
    t.start()
    return t, stop


def add_parser(sub: Any) -> None:
    n = sub.add_parser("notify", help="deliver anomaly transitions to webhooks (retries, "
                                      "regional grouping, resumes after a crash)")
    n.add_argument("--db", type=Path, help="embedded (chDB) store directory")
    n.add_argument("--url", help="ClickHouse server URL instead of --db")
    n.add_argument("--once", action="store_true", help="one cycle, then exit")
    n.add_argument("--metrics-port", dest="metrics_port", type=int, default=0,
                   help="serve Prometheus /metrics on this port")
    n.add_argument("--metrics-host", dest="metrics_host", default="127.0.0.1",
                   help="address /metrics listens on")
    add_flags(n)
    n.set_defaults(func=cmd_notify)


def cmd_notify(args: argparse.Namespace) -> int:
    from archwatch.cli import CliError
    from archwatch.distribution import _stop_on_sigterm
    from archwatch.migrate import migrate
    from archwatch.store import open_store

    if args.db is None and args.url is None:
        raise CliError("one of --db or --url is required")
    try:
        settings = settings_from(args)
        if args.webhooks is not None:
            load_webhook_file(args.webhooks)
    except (OSError, ValueError) as exc:
        raise CliError(str(exc)) from None
    try:
        store = open_store(args.db, args.url)
        migrate(store)
    except StoreError as exc:
        raise CliError(str(exc)) from None
    try:
        if args.webhooks is not None:
            apply_webhook_file(store, args.webhooks)
        if args.metrics_port:
            from archwatch.metrics_server import start_metrics

            start_metrics(args.metrics_port, store, args.metrics_host)
        stop = threading.Event()

        def report(out: dict[str, int]) -> None:
            print(json.dumps(out), flush=True)

        with _stop_on_sigterm(stop):
            try:
                Deliverer(store, settings, holder=args.deliverer_id).run(
                    args.notify_interval, stop, once=args.once, report=report)
            except StoreError as exc:
                raise CliError(str(exc)) from None
            except KeyboardInterrupt:
                pass
    finally:
        store.close()
    return 0
