"""Kafka I/O with confluent-kafka: topics, a producer that never loses a record, the
dataflow's source (Bytewax's KafkaSource, offsets kept in Bytewax recovery), the DLQ."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from archwatch.models import TOPIC_OF_TYPE, Reject

DLQ_TOPIC = "archive.dlq"
TOPICS = sorted(set(TOPIC_OF_TYPE.values()))


@dataclass(frozen=True)
class KafkaSettings:
    brokers: str = "127.0.0.1:19092"
    topic_prefix: str = ""  # e.g. "test1." to isolate runs on one broker
    dlq: str = DLQ_TOPIC

    def topic(self, name: str) -> str:
        return self.topic_prefix + name

    @property
    def topics(self) -> list[str]:
        return [self.topic(t) for t in TOPICS]

    @property
    def dlq_topic(self) -> str:
        return self.topic(self.dlq)


def create_topics(ks: KafkaSettings, partitions: int, timeout: float = 30.0) -> list[str]:
    """Create the contract's topics and the DLQ; existing ones are left as they are."""
    admin = AdminClient({"bootstrap.servers": ks.brokers})
    wanted = [*ks.topics, ks.dlq_topic]
    existing = set(admin.list_topics(timeout=timeout).topics)
    new = [NewTopic(t, num_partitions=partitions, replication_factor=1)
           for t in wanted if t not in existing]
    if new:
        for topic, fut in admin.create_topics(new, operation_timeout=timeout).items():
            try:
                fut.result(timeout)
            except KafkaException as exc:
                if "TOPIC_ALREADY_EXISTS" not in str(exc):
                    raise
            del topic
        _wait_until_listed(admin, [t.topic for t in new], timeout)
    return [t.topic for t in new]


def _wait_until_listed(admin: AdminClient, topics: list[str], timeout: float) -> None:
    """A created topic's metadata reaches the broker that answers a consumer's metadata
    request a moment later; Bytewax's KafkaSource lists partitions once at start and
    fails on "Unknown topic or partition". Wait until every partition has a leader."""
    import time

    deadline = time.monotonic() + timeout
    pending = set(topics)
    while pending:
        md = admin.list_topics(timeout=timeout).topics
        pending = {t for t in pending
                   if t not in md or md[t].error is not None or not md[t].partitions
                   or any(p.leader < 0 for p in md[t].partitions.values())}
        if pending and time.monotonic() > deadline:
            raise KafkaException(f"topics not visible after {timeout} s: {sorted(pending)}")
        if pending:
            time.sleep(0.05)


def wait_for_broker(brokers: str, timeout: float = 30.0) -> None:
    """Raise a clear error when no broker answers at ``brokers`` within ``timeout``."""
    admin = AdminClient({"bootstrap.servers": brokers})
    try:
        admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise ConnectionError(f"no Kafka broker answers at {brokers}: {exc}") from None


class SafeProducer:
    """``produce`` that polls and retries on a full local queue (BufferError), and a
    ``flush`` that fails loudly if anything was not delivered."""

    def __init__(self, brokers: str, **config: Any) -> None:
        self.p = Producer({"bootstrap.servers": brokers, "enable.idempotence": True,
                           "linger.ms": 5, "compression.type": "lz4", **config})
        self.failed: list[str] = []
        self.delivered = 0

    def _report(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self.failed.append(str(err))
        else:
            self.delivered += 1

    def produce(self, topic: str, value: bytes, key: bytes | None = None,
                headers: list[tuple[str, bytes]] | None = None) -> None:
        while True:
            try:
                self.p.produce(topic, value=value, key=key, headers=headers,
                               on_delivery=self._report)
                break
            except BufferError:
                self.p.poll(0.05)
        self.p.poll(0)

    def flush(self, timeout: float = 60.0) -> None:
        remaining = self.p.flush(timeout)
        if remaining or self.failed:
            raise RuntimeError(f"{remaining} messages undelivered, {len(self.failed)} failed: "
                               f"{self.failed[:3]}")


def route(line: str, ks: KafkaSettings) -> tuple[str, bytes | None]:
    """Topic and key of one JSONL record: its type's topic, keyed by caseNo (receiverId
    for heartbeats). A record that is not valid still goes to the feed (``archive.cases``),
    where the engine rejects it into the DLQ: the producer never drops a record."""
    try:
        obj = json.loads(line)
    except ValueError:
        return ks.topic("archive.cases"), None
    if not isinstance(obj, dict):
        return ks.topic("archive.cases"), None
    topic = TOPIC_OF_TYPE.get(obj.get("type"), "archive.cases")  # type: ignore[arg-type]
    key = obj.get("receiverId") if topic == "archive.heartbeats" else obj.get("caseNo")
    return ks.topic(topic), key.encode() if isinstance(key, str) else None


def produce_lines(lines: Iterable[str], ks: KafkaSettings, rate: float | None = None,
                  progress: Callable[[int], None] | None = None) -> int:
    """Publish JSONL records to their topics, optionally at ``rate`` records/s."""
    prod = SafeProducer(ks.brokers)
    n = 0
    start = time.perf_counter()
    for line in lines:
        if not line.strip():
            continue
        topic, key = route(line, ks)
        prod.produce(topic, line.encode(), key)
        n += 1
        if progress is not None and n % 1000 == 0:
            progress(1000)
        if rate:
            ahead = n / rate - (time.perf_counter() - start)
            if ahead > 0:
                time.sleep(ahead)
    prod.flush()
    if progress is not None:
        progress(n % 1000)
    return n


class DeadLetters:
    """Rejects → the DLQ topic: original bytes as value, reason and source position in
    headers. Flushed before the sink writes its rows, so no reject is lost."""

    def __init__(self, ks: KafkaSettings) -> None:
        self.ks = ks
        self.prod = SafeProducer(ks.brokers)

    def __call__(self, rejects: list[Reject]) -> None:
        for r in rejects:
            topic, _, rest = r.pos.partition("/")
            partition, _, offset = rest.partition("/")
            self.prod.produce(self.ks.dlq_topic, r.raw.encode(), None, [
                ("reason", r.reason.encode()), ("source.topic", topic.encode()),
                ("source.partition", partition.encode()), ("source.offset", offset.encode()),
            ])
        self.prod.flush()


def kafka_records(msg: Any) -> tuple[bytes, str]:
    """A KafkaSourceMessage as the dataflow's ``(record, position)``."""
    return (msg.value or b""), f"{msg.topic}/{msg.partition}/{msg.offset}"


def read_topic(brokers: str, topic: str, timeout: float = 10.0) -> Iterator[Any]:
    """Every message currently in ``topic`` (tests and tools)."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": brokers, "group.id": f"reader-{time.time_ns()}",
                  "enable.auto.commit": False, "auto.offset.reset": "earliest",
                  "enable.partition.eof": True})
    md = c.list_topics(topic, timeout=timeout)
    parts = [TopicPartition(topic, p, 0) for p in md.topics[topic].partitions]
    c.assign(parts)
    eof: set[int] = set()
    deadline = time.monotonic() + timeout
    try:
        while len(eof) < len(parts) and time.monotonic() < deadline:
            msg = c.poll(0.2)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == -191:  # _PARTITION_EOF
                    eof.add(msg.partition())
                continue
            yield msg
    finally:
        c.close()
