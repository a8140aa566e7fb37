"""The live source (connectors/kafka.KafkaRecords) against the real broker: records and
positions, the progress marks the clock step holds the watermark with (sent first in the
epoch after the one they describe), resume offsets."""

from __future__ import annotations

import time
from typing import Any

import pytest
from archwatch.connectors.kafka import KafkaRecords, KafkaSettings, SafeProducer, create_topics

from archwatch.engine import Progress
from tests.kafka_helpers import BROKERS, prefix_for
from tests.test_kafka import broker  # noqa: F401 - the real broker, started once

pytestmark = [pytest.mark.kafka, pytest.mark.usefixtures("broker")]


def topic_with(n: int, prefix: str) -> str:
    """A one-partition topic (the contract's `archive.cases`, under ``prefix``) holding
    ``n`` records."""
    ks = KafkaSettings(brokers=BROKERS, topic_prefix=prefix)
    create_topics(ks, 1)
    topic = ks.topic("archive.cases")
    produce(topic, range(n))
    return topic


def produce(topic: str, ids: range) -> None:
    prod = SafeProducer(BROKERS)
    for i in ids:
        prod.produce(topic, f'{{"n": {i}}}'.encode())
    prod.flush()


def read(part: Any, want: int, timeout: float = 20) -> list[tuple[bytes, str]]:
    """Poll ``part`` until ``want`` records came (or the deadline); no epoch ends here, so
    no progress mark may come."""
    records: list[tuple[bytes, str]] = []
    deadline = time.monotonic() + timeout
    while len(records) < want and time.monotonic() < deadline:
        batch = part.next_batch()
        assert all(raw is not None for raw, _pos in batch), batch
        records += batch
        time.sleep(0.005)
    return records


def end_epoch(part: Any, records: list[tuple[bytes, str]] | None = None) -> Progress:
    """What Bytewax does at an epoch's end (snapshot), then the next epoch's first batch:
    it starts with the mark (its records, if any, go to ``records``)."""
    part.snapshot()
    first = part.next_batch()
    raw, mark = first[0]
    assert raw is None and isinstance(mark, Progress), first
    assert all(r is not None for r, _p in first[1:])
    if records is not None:
        records += first[1:]
    else:
        assert len(first) == 1, first
    return mark


def test_records_positions_and_progress_marks() -> None:
    topic = topic_with(30, prefix_for("src"))
    src = KafkaRecords(BROKERS, [topic], batch_size=10)
    assert src.list_parts() == [f"0-{topic}"]
    assert src.progress_parts() == {f"{topic}/0"}
    part = src.build_part("input", f"0-{topic}", None)
    try:
        records = read(part, 10)
        assert len(records) == 10  # a batch at most
        mark = end_epoch(part, records)
        assert (mark.part, mark.caught_up, mark.max_at) == (f"{topic}/0", False, None)
        records += read(part, 30 - len(records))
        assert [r for r, _p in records] == [f'{{"n": {i}}}'.encode() for i in range(30)]
        assert [p for _r, p in records] == [f"{topic}/0/{i}" for i in range(30)]
        assert end_epoch(part).caught_up  # all 30 the broker reported were read
        assert part.snapshot() == 30
    finally:
        part.close()


def test_resumes_after_the_snapshot_offset() -> None:
    topic = topic_with(5, prefix_for("resume"))
    src = KafkaRecords(BROKERS, [topic])
    part = src.build_part("input", f"0-{topic}", 5)  # as Bytewax resumes it
    try:
        produce(topic, range(5, 8))
        records = read(part, 3)
        assert [p for _r, p in records] == [f"{topic}/0/{i}" for i in (5, 6, 7)]
        assert end_epoch(part).caught_up
    finally:
        part.close()


def test_an_empty_partition_is_caught_up() -> None:
    """Read from the start with nothing in it: caught up once the broker said so (else
    the clock would hold the watermark for PROGRESS_STALL_MS at every start)."""
    topic = topic_with(0, prefix_for("empty"))
    part = KafkaRecords(BROKERS, [topic]).build_part("input", f"0-{topic}", None)
    try:
        deadline = time.monotonic() + 20
        caught_up = False
        while not caught_up and time.monotonic() < deadline:
            assert part.next_batch() == []
            caught_up = end_epoch(part).caught_up
            time.sleep(0.01)
        assert caught_up
        assert part.next_awake() is not None  # idle: polled again later, not in a loop
    finally:
        part.close()


def test_the_side_items_come_from_a_partition_of_the_same_input() -> None:
    """Live, the wall-clock ticks and the registrations are a partition of this input, not
    inputs of their own (whose epochs drifted against the partitions': see INPUT_WAKE):
    listed after the topics' partitions, never a progress mark's name, woken as often."""
    from datetime import UTC, datetime

    from archwatch.connectors.kafka import SIDE_PART

    from archwatch.settings import INPUT_WAKE

    topic = topic_with(0, prefix_for("side"))
    calls = iter([["tick"], [], ["tick", "regs"]])
    src = KafkaRecords(BROKERS, [topic], side=lambda: next(calls))
    assert src.list_parts() == [f"0-{topic}", SIDE_PART]
    assert src.progress_parts() == frozenset({f"{topic}/0"})
    side = src.build_part("in", SIDE_PART, None)
    assert side.next_batch() == [(None, "tick")]
    assert side.next_batch() == []
    assert side.next_batch() == [(None, "tick"), (None, "regs")]
    assert side.snapshot() is None
    awake = side.next_awake()
    assert awake is not None and awake <= datetime.now(UTC) + INPUT_WAKE
    assert KafkaRecords(BROKERS, [topic]).list_parts() == [f"0-{topic}"]  # a replay's
