"""One active instance per store of a worker that sends to the outside world.

The webhook deliverer (``archwatch notify``, or a thread of ``archwatch up``) and the
distributor (``archwatch distribute``) may run more than once against one store: a standby
on another host for failover. Two active ones would both send everything (their rows'
compare-and-set is a read, then a write: not atomic across processes). So the active
instance holds a lease, a row of ``worker_lease`` (migration 0019) naming it and when it
expires.
"""

from __future__ import annotations

import argparse
import logging
import socket
import threading
from collections.abc import Callable
from typing import Any

from archwatch.engine import VersionClock
from archwatch.store import Store
from archwatch.timeutil import ch_time, now_ms

_clock = VersionClock()
log = logging.getLogger("archwatch.lease")


class Lease:
    """The lease ``name`` (one per kind of worker), held or waited for by ``holder``.

    The holder renews it once a third of ``ttl_ms`` has passed, at the checks it makes
    before every cycle and every send, and releases it when it stops cleanly. Another
    instance stands by while the row is someone else's and unexpired, and claims it after.
    ClickHouse has no compare-and-set, so a claim is written and read back: of claims
    written together the highest version wins for every reader, and two claims close
    enough that each reads back its own (a few ms) both send for at most one cycle (the
    receivers' Idempotency-Key dedupe closes that). The holder defaults to the host name,
    so an instance restarted on its host takes its lease back at once."""

    def __init__(self, store: Store, name: str, holder: str | None, ttl_ms: int,
                 clock: Callable[[], int] = now_ms, what: str = "worker",
                 on_change: Callable[[bool], None] | None = None) -> None:
        self.store = store
        self.name = name
        self.holder = holder or socket.gethostname()
        self.ttl_ms = ttl_ms
        self.clock = clock
        self.what = what  # for the log: "webhook deliverer", "distributor"
        self.on_change = on_change
        self.renew_at: int | None = None  # held until then without asking (None: not held)
        self.active: bool | None = None  # as the last check found (None: not checked yet)
        self._lock = threading.Lock()  # a worker's sending threads check it too

    def read(self) -> tuple[str, int] | None:
        """(holder, expires at ms) of the lease, if any was ever written."""
        rows = self.store.query(
            "SELECT holder, toUnixTimestamp64Milli(expires_at) AS expires FROM"
            " worker_lease FINAL WHERE name = {n:String}", {"n": self.name})
        return (rows[0]["holder"], int(rows[0]["expires"])) if rows else None

    def _write(self, expires_ms: int) -> None:
        self.store.insert("worker_lease", [{"name": self.name, "holder": self.holder,
                                            "expires_at": ch_time(expires_ms),
                                            "version": _clock.next()}])

    def check(self) -> bool:
        """Whether this instance may send now (claiming or renewing the lease as due);
        a change from the last check is logged (and told to ``on_change``)."""
        with self._lock:
            active = self._check()
            if active is not self.active:
                holder = None if active else self.holder_alive()
                log.info("%s %r %s", self.what, self.holder, "active" if active else
                         f"standing by ({holder!r} holds the lease)" if holder
                         else "standing by")
                if self.on_change is not None:
                    self.on_change(active)
                self.active = active
            return active

    def _check(self) -> bool:
        now = self.clock()
        if self.renew_at is not None and now < self.renew_at:
            return True
        cur = self.read()
        if cur is not None and cur[0] != self.holder and cur[1] > now:
            self.renew_at = None
            return False  # someone else's, and alive
        self._write(now + self.ttl_ms)
        cur = self.read()
        if cur is None or cur[0] != self.holder:
            self.renew_at = None
            return False  # a claim written with ours won
        self.renew_at = now + max(self.ttl_ms // 3, 1)
        return True

    def release(self) -> None:
        """Let a standby take over at once (a clean stop); if the store refuses, the
        lease expires by itself."""
        if self.renew_at is None:
            return
        self.renew_at = None
        try:
            cur = self.read()
            if cur is not None and cur[0] == self.holder:
                self._write(self.clock())  # expired for the others from now
        except Exception:  # noqa: BLE001 - a stop must not fail for it
            log.warning("could not release the %s's lease", self.what, exc_info=True)

    def holder_alive(self) -> str | None:
        """Who holds the lease now, if anyone."""
        cur = self.read()
        return cur[0] if cur is not None and cur[1] > self.clock() else None


def add_flags(p: argparse.ArgumentParser | Any, what: str, id_flag: str,
              duration: Callable[[str], int]) -> None:
    """``--takeover`` and the instance's name (``id_flag``) for a worker's command."""
    p.add_argument("--takeover", type=duration, default="PT30S",
                   help=f"a standby {what} (another host, same store) takes over once the "
                        "active one has not renewed its lease for this long")
    p.add_argument(id_flag, dest=id_flag.lstrip("-").replace("-", "_"), default=None,
                   help=f"this {what}'s name in the lease (default: the host name; one "
                        "restarted under its name takes the lease back at once)")
