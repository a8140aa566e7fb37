"""The receivers registry: who must send heartbeats, how often, and with which key.

Rows live in the ``receiver`` table; the live dataflow polls it (see
:class:`RegistryPoll`), so a registration made through the API reaches the receiver
shards within a second, the same way a replay's receivers file does at start.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, replace
from datetime import timedelta

from archwatch.engine import VersionClock
from archwatch.receivers import (
    DEFAULT_GRACE_MS,
    DEFAULT_PERIOD_MS,
    DEFAULT_TZ,
    Registration,
    Window,
    windows_from_json,
    windows_to_json,
)
from archwatch.store import Store

_clock = VersionClock()


@dataclass(frozen=True)
class ReceiverEntry:
    receiver_id: str
    qym: str
    owner: str = ""
    period_ms: int = DEFAULT_PERIOD_MS
    grace_ms: int = DEFAULT_GRACE_MS
    paused: bool = False
    key_hash: str = ""
    schedule: str = ""
    tz: str = DEFAULT_TZ
    maintenance: tuple[Window, ...] = ()
    down_after: int = 0  # 0: the engine's global default
    up_after: int = 0

    def registration(self) -> Registration:
        return Registration(self.receiver_id, self.qym, self.period_ms, self.grace_ms,
                            self.schedule, self.tz, self.maintenance, self.down_after,
                            self.up_after)

    @classmethod
    def of(cls, r: Registration, owner: str = "", paused: bool = False,
           key_hash: str = "") -> ReceiverEntry:
        return cls(r.receiver_id, r.qym, owner, r.period, r.grace, paused, key_hash,
                   r.schedule, r.tz, r.maintenance, r.down_after, r.up_after)


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class Registry:
    def __init__(self, store: Store) -> None:
        self.store = store

    def all(self) -> dict[str, ReceiverEntry]:
        rows = self.store.query(
            "SELECT receiver_id, qym, owner, period_ms, grace_ms, paused, key_hash, schedule,"
            " tz, maintenance, down_after, up_after FROM receiver FINAL ORDER BY receiver_id")
        return {r["receiver_id"]: ReceiverEntry(
                    r["receiver_id"], r["qym"], r["owner"], r["period_ms"], r["grace_ms"],
                    bool(r["paused"]), r["key_hash"], r["schedule"], r["tz"] or DEFAULT_TZ,
                    windows_from_json(r["maintenance"], r["tz"] or DEFAULT_TZ),
                    r["down_after"], r["up_after"])
                for r in rows}

    def get(self, receiver_id: str) -> ReceiverEntry | None:
        return self.all().get(receiver_id)

    def put(self, e: ReceiverEntry) -> None:
        self.store.insert("receiver", [{
            "receiver_id": e.receiver_id, "qym": e.qym, "owner": e.owner,
            "period_ms": e.period_ms, "grace_ms": e.grace_ms, "key_hash": e.key_hash,
            "schedule": e.schedule, "tz": e.tz, "maintenance": windows_to_json(e.maintenance),
            "down_after": e.down_after, "up_after": e.up_after,
            "paused": int(e.paused), "version": _clock.next(), "is_deleted": 0}])

    def register(self, e: ReceiverEntry) -> str:
        """Register (or re-key) a receiver; returns its heartbeat key, shown once."""
        key = "rk_" + secrets.token_urlsafe(24)
        self.put(replace(e, key_hash=_hash(key)))
        return key

    def merge_file(self, regs: dict[str, Registration]) -> None:
        """Registrations from a file or config: keep keys, owners and pauses already set."""
        current = self.all()
        for r in regs.values():
            old = current.get(r.receiver_id)
            self.put(ReceiverEntry.of(r, old.owner if old else "", old.paused if old else False,
                                      old.key_hash if old else ""))

    def verify(self, receiver_id: str, key: str) -> ReceiverEntry | None:
        e = self.get(receiver_id)
        if e is None or not e.key_hash or not hmac.compare_digest(e.key_hash, _hash(key)):
            return None
        return e


def active_registrations(store: Store) -> dict[str, Registration]:
    """Registrations in force: paused receivers are left out (no alert while paused)."""
    return {rid: e.registration() for rid, e in Registry(store).all().items() if not e.paused}


class RegistryPoll:
    """The registrations in force, read from the store at most every ``every``: each call
    gives them when they changed since the last, else None (the live input's side
    partition calls it at every wake: see connectors.kafka.KafkaRecords)."""

    def __init__(self, store: Store, every: timedelta = timedelta(seconds=1)) -> None:
        self.store = store
        self.every = every.total_seconds()
        self.last: dict[str, Registration] | None = None
        self.read_at = float("-inf")

    def __call__(self) -> dict[str, Registration] | None:
        now = time.monotonic()
        if now - self.read_at < self.every:
            return None
        self.read_at = now
        regs = active_registrations(self.store)
        if regs == self.last:
            return None
        self.last = regs
        return regs
