"""The dataflow's collector settings (`engine_gc`): a batch in flight does not set a
young collection off while a backlog is read, the threshold comes down once the input
is live (short pauses), and the interpreter's own settings come back afterwards. Also what
else the shards' adapter does once the input is live: with recovery, pack the cases
between epoch closes."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from archwatch.dataflows.reconcile import (
    GC_BACKLOG_THRESHOLD,
    GC_LIVE_THRESHOLD,
    PRECOOL_MS,
    _ShardLogic,
    engine_gc,
)

from archwatch.engine import CaseShard, VersionClock, Watermark
from archwatch.rules import Sla

# what the Kafka source's batches hold in flight at once, roughly: envelopes, keyed
# tuples and rows of a few thousand records a partition (see engine_gc's docstring)
IN_FLIGHT = 300_000


@contextmanager
def young_collections() -> Iterator[list[int]]:
    """The generations of the collections that run inside the block."""
    seen: list[int] = []

    def record(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            seen.append(info["generation"])

    gc.callbacks.append(record)
    try:
        yield seen
    finally:
        gc.callbacks.remove(record)


def allocate_batch() -> list[list[int]]:
    return [[i] for i in range(IN_FLIGHT)]  # one tracked container each


def test_a_batch_in_flight_sets_no_collection_off() -> None:
    with engine_gc(), young_collections() as seen:
        batch = allocate_batch()
        del batch
    assert seen == []


def test_the_same_batch_does_at_the_interpreters_default() -> None:
    # the contrast that makes the test above mean something: CPython's 700
    before = gc.get_threshold()
    gc.set_threshold(700, before[1], before[2])
    try:
        with young_collections() as seen:
            batch = allocate_batch()
            del batch
    finally:
        gc.set_threshold(*before)
    assert seen.count(0) > 100


def test_settings_come_back_after_the_dataflow_even_when_it_fails() -> None:
    before = gc.get_threshold()
    with pytest.raises(RuntimeError), engine_gc():
        assert gc.get_threshold()[0] == GC_BACKLOG_THRESHOLD > IN_FLIGHT
        assert gc.get_freeze_count() > 0  # the objects alive at start are left alone
        raise RuntimeError("the dataflow failed")
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_live_input_lowers_the_threshold_and_a_backlog_raises_it_again() -> None:
    """The shards tell: a watermark that follows the wall clock is live input, one held
    back (a partition still catching up) is a backlog."""
    now = [1_800_000_000_000]
    logic = _ShardLogic.builder(
        lambda: CaseShard(4, Sla(), VersionClock(), lambda: now[0], own_time=False),
        wall_ms=lambda: now[0])(None)
    before = gc.get_threshold()
    logic.on_batch([Watermark(1_000, wall=now[0])])  # outside engine_gc: left alone
    assert gc.get_threshold() == before
    with engine_gc():
        assert gc.get_threshold()[0] == GC_BACKLOG_THRESHOLD
        logic.on_batch([Watermark(2_000)])  # held: still catching up
        assert gc.get_threshold()[0] == GC_BACKLOG_THRESHOLD
        logic.on_batch([Watermark(3_000, wall=now[0])])
        assert gc.get_threshold()[0] == GC_LIVE_THRESHOLD
        assert gc.get_threshold()[1:] == before[1:]
        now[0] += 1_000  # no tick for a second (an epoch's close): Bytewax notifies
        logic.on_notify()
        assert logic.shard.external_wm == 4_000  # it took the watermark on itself...
        assert gc.get_threshold()[0] == GC_LIVE_THRESHOLD  # ... and the input is live
        logic.on_batch([Watermark(4_500)])  # behind again (an outage, a burst)
        assert gc.get_threshold()[0] == GC_BACKLOG_THRESHOLD
        logic.on_batch([Watermark(5_000, wall=now[0])])
    assert gc.get_threshold() == before
    logic.on_batch([Watermark(6_000)])  # after it: left alone again
    assert gc.get_threshold() == before


def test_live_input_with_recovery_keeps_the_high_threshold() -> None:
    """With recovery every snapshot packs the cases touched since the one before, so a
    live engine's objects do not pile up toward the high threshold: live or not, it
    stays (and a shard's own notification during a close does not lower it)."""
    now = [1_800_000_000_000]
    logic = _ShardLogic.builder(
        lambda: CaseShard(4, Sla(), VersionClock(), lambda: now[0], own_time=False),
        recovery=True, wall_ms=lambda: now[0])(None)
    with engine_gc():
        logic.on_batch([Watermark(3_000, wall=now[0])])
        assert gc.get_threshold()[0] == GC_BACKLOG_THRESHOLD
        now[0] += 1_000
        logic.on_notify()
        assert logic.shard.external_wm == 4_000
        assert gc.get_threshold()[0] == GC_BACKLOG_THRESHOLD


class _Packing:
    """A shard that counts its precool calls (the scheduling, not the packing, is tested
    here; tests/test_snapshot.py tests what precool packs)."""

    def __init__(self) -> None:
        self.precools = 0

    def on_batch(self, values: list[Any]) -> list[Any]:
        return []

    def next_deadline(self) -> int | None:
        return None

    def precool(self) -> int:
        self.precools += 1
        return 0


def test_live_with_recovery_packs_between_closes_every_precool_ms() -> None:
    now = [1_800_000_000_000]
    logic = _ShardLogic(_Packing(), recovery=True, wall_ms=lambda: now[0])
    logic.on_batch([Watermark(1_000)])  # a backlog: left to the snapshots
    assert logic.shard.precools == 0
    logic.on_batch([Watermark(2_000, wall=now[0])])  # live: the first packs at once
    assert logic.shard.precools == 1
    now[0] += PRECOOL_MS - 1
    logic.on_batch([Watermark(3_000, wall=now[0])])
    assert logic.shard.precools == 1
    now[0] += 1
    logic.on_batch([Watermark(4_000, wall=now[0])])
    assert logic.shard.precools == 2


def test_without_recovery_nothing_is_packed_between_closes() -> None:
    now = [1_800_000_000_000]
    logic = _ShardLogic(_Packing(), recovery=False, wall_ms=lambda: now[0])
    for _ in range(3):
        now[0] += PRECOOL_MS
        logic.on_batch([Watermark(now[0], wall=now[0])])
    assert logic.shard.precools == 0
