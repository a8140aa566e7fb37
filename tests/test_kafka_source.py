"""The live source (connectors/kafka.KafkaRecords) against the real broker: records and
positions, the progress marks the clock step holds the watermark with, resume offsets."""

from __future__ import annotations

import subprocess
import time
from typing import Any

import pytest
from archwatch.connectors.kafka import KafkaRecords, KafkaSettings, SafeProducer, create_topics

from archwatch.engine import Progress
from tests.kafka_helpers import BROKERS, ROOT, prefix_for

pytestmark = pytest.mark.kafka


@pytest.fixture(scope="module")
def broker() -> Any:
    script = str(ROOT / "scripts" / "kafka.sh")
    was_running = subprocess.run([script, "status"], capture_output=True).returncode == 0
    subprocess.run([script, "start"], check=True, timeout=600)
    yield BROKERS
    if not was_running:
        subprocess.run([script, "stop"], check=False, timeout=120)


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


def read(part: Any, want: int, timeout: float = 20) -> tuple[list[tuple[bytes, str]],
                                                             list[Progress]]:
    """Poll ``part`` until ``want`` records came (or the deadline): records and marks."""
    records: list[tuple[bytes, str]] = []
    marks: list[Progress] = []
    deadline = time.monotonic() + timeout
    while len(records) < want and time.monotonic() < deadline:
        for raw, pos in part.next_batch():
            if raw is None:
                marks.append(pos)
            else:
                records.append((raw, pos))
        time.sleep(0.005)
    return records, marks


def test_records_positions_and_progress_marks(broker: str) -> None:
    topic = topic_with(30, prefix_for("src"))
    src = KafkaRecords(broker, [topic], batch_size=10)
    assert src.list_parts() == [f"0-{topic}"]
    assert src.progress_parts() == {f"{topic}/0"}
    part = src.build_part("input", f"0-{topic}", None)
    try:
        records, marks = read(part, 30)
        assert [r for r, _p in records] == [f'{{"n": {i}}}'.encode() for i in range(30)]
        assert [p for _r, p in records] == [f"{topic}/0/{i}" for i in range(30)]
        # every batch of records ends with its mark; behind until the last record is read
        assert all(m.part == f"{topic}/0" and m.max_at is None for m in marks)
        assert marks[-1].caught_up
        assert not marks[0].caught_up  # 10 of the 30 the broker reported
        assert part.snapshot() == 30
    finally:
        part.close()


def test_resumes_after_the_snapshot_offset(broker: str) -> None:
    topic = topic_with(5, prefix_for("resume"))
    src = KafkaRecords(broker, [topic])
    part = src.build_part("input", f"0-{topic}", 5)  # as Bytewax resumes it
    try:
        produce(topic, range(5, 8))
        records, marks = read(part, 3)
        assert [p for _r, p in records] == [f"{topic}/0/{i}" for i in (5, 6, 7)]
        assert marks[-1].caught_up
    finally:
        part.close()


def test_an_empty_partition_is_caught_up(broker: str) -> None:
    """Read from the start with nothing in it: caught up once the broker said so (else
    the clock would hold the watermark for PROGRESS_STALL_MS at every start)."""
    topic = topic_with(0, prefix_for("empty"))
    part = KafkaRecords(broker, [topic]).build_part("input", f"0-{topic}", None)
    try:
        deadline = time.monotonic() + 20
        marks: list[Progress] = []
        while not (marks and marks[-1].caught_up) and time.monotonic() < deadline:
            marks += [p for raw, p in part.next_batch() if raw is None]
            time.sleep(0.01)
        assert marks and marks[-1].caught_up
        assert part.next_awake() is not None  # idle: polled again later, not in a loop
    finally:
        part.close()
