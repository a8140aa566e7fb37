"""The dataflow's collector settings (`engine_gc`): a batch in flight does not set a
young collection off, and the interpreter's own settings come back afterwards."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from archwatch.dataflows.reconcile import engine_gc

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
        assert gc.get_threshold()[0] > IN_FLIGHT
        assert gc.get_freeze_count() > 0  # the objects alive at start are left alone
        raise RuntimeError("the dataflow failed")
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
