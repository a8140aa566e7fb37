"""The lease that lets one instance of a sending worker (webhook deliverer, distributor)
work per store while others stand by: claim, renewal, takeover after expiry, release,
and two claims written at once. A real chDB store, a frozen clock."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from archwatch import distribution as dist
from archwatch.lease import Lease
from archwatch.migrate import migrate
from archwatch.timeutil import now_ms

TTL = 30_000


class Clock:
    def __init__(self) -> None:
        self.t = now_ms()

    def __call__(self) -> int:
        return self.t


def test_one_holds_the_other_waits_for_expiry_or_release(store: Any) -> None:
    migrate(store)
    clock = Clock()
    a = Lease(store, "w", "host-a", TTL, clock)
    b = Lease(store, "w", "host-b", TTL, clock)
    other = Lease(store, "other-worker", "host-b", TTL, clock)
    assert a.check() and not b.check()
    assert other.check()  # each kind of worker has its own lease
    assert a.read() == ("host-a", clock.t + TTL)
    first = clock.t
    clock.t += TTL // 3 - 1
    assert a.check() and a.read() == ("host-a", first + TTL)  # held: not written again
    clock.t += 1
    assert a.check() and a.read() == ("host-a", clock.t + TTL)  # a third gone: renewed
    renewed = clock.t
    clock.t = renewed + TTL - 1
    assert not b.check() and b.holder_alive() == "host-a"
    clock.t = renewed + TTL  # host-a went quiet: expired
    assert b.check() and b.holder_alive() == "host-b"
    assert not a.check()  # back, and the lease is someone else's
    b.release()
    assert a.holder_alive() is None and a.check()


def test_of_two_claims_written_together_one_wins_for_both(store: Any) -> None:
    migrate(store)
    clock = Clock()
    a = Lease(store, "w", "host-a", TTL, clock)
    b = Lease(store, "w", "host-b", TTL, clock)
    write_a = a._write

    def a_then_b(expires: int) -> None:  # host-b's claim lands between a's write and read
        write_a(expires)
        b._write(expires)

    a._write = a_then_b  # type: ignore[method-assign]
    assert not a.check()  # it read back host-b's claim, the newer one
    assert b.check()  # and host-b reads its own


def test_a_restarted_instance_under_its_name_takes_its_lease_back_at_once(
        store: Any) -> None:
    migrate(store)
    clock = Clock()
    assert Lease(store, "w", "host-a", TTL, clock).check()
    assert Lease(store, "w", "host-a", TTL, clock).check()  # a new process, same name
    assert not Lease(store, "w", "host-b", TTL, clock).check()


def test_a_second_distributor_stands_by_while_the_first_holds_the_lease(
        store: Any, tmp_path: Path) -> None:
    """The distributor's use of it: a standby sends and publishes nothing, and takes over
    once the active one stops renewing."""
    migrate(store)
    clock = Clock()
    emitter = dist.JsonlEmitter(tmp_path / "events.jsonl")
    s = dist.DistributorSettings(takeover_ms=TTL)
    a = dist.Distributor(store, emitter, s, clock=clock, holder="host-a")
    b = dist.Distributor(store, emitter, s, clock=clock, holder="host-b")
    idle = dict.fromkeys(dist.COUNT_KEYS, 0)
    dist.DistributionQueue(store, clock).enqueue("330199-08-00322-001-2026-D100-0000001",
                                                 "HZ00001", distribution_no="LZ001")
    assert b.cycle()["noReceiver"] == 1 and b.lease.active  # working: its row has nowhere to go
    assert a.cycle() == idle and a.lease.active is False
    clock.t += TTL  # host-b stopped without releasing
    assert a.cycle()["noReceiver"] == 1 and a.lease.active
    assert b.cycle() == idle and b.lease.active is False
    emitter.close()
