"""Kafka I/O with confluent-kafka: topics, a producer that never loses a record, the
dataflow's source (:class:`KafkaRecords`, offsets kept in Bytewax recovery), the DLQ."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from archwatch import metrics
from archwatch.engine import Progress
from archwatch.models import TOPIC_OF_TYPE, Reject
from archwatch.settings import INPUT_WAKE
from archwatch.timeutil import now_ms

log = logging.getLogger("archwatch.kafka")

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

    @property
    def all_topics(self) -> list[str]:
        """The contract's topics and the DLQ: what create_topics makes."""
        return [*self.topics, self.dlq_topic]


def create_topics(ks: KafkaSettings, partitions: int, timeout: float = 30.0) -> list[str]:
    """Create the contract's topics and the DLQ; existing ones are left as they are."""
    admin = AdminClient({"bootstrap.servers": ks.brokers})
    wanted = ks.all_topics
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


def delete_topics(brokers: str, topics: Iterable[str], timeout: float = 30.0) -> int:
    """Delete these topics where they exist; returns how many. The benchmarks and tests
    create topics under a fresh prefix each run: kept, they pile up in the broker (8,097
    partition folders, 5.7 GB, in the project's loopback broker after a few days, with
    its CPU per record rising), so they delete what they created."""
    admin = AdminClient({"bootstrap.servers": brokers})
    existing = set(admin.list_topics(timeout=timeout).topics)
    doomed = [t for t in topics if t in existing]
    for fut in (admin.delete_topics(doomed, operation_timeout=timeout).values()
                if doomed else ()):
        try:
            fut.result(timeout)
        except KafkaException as exc:
            if "UNKNOWN_TOPIC" not in str(exc):
                raise
    return len(doomed)


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


# The pacing step of produce_lines: it sleeps once it is this far ahead of its rate, so
# records go out in bursts of at most this long. Sleeping whenever it was ahead at all
# slept before every record at 10,000/s: half the producer's CPU went to the sleeps and
# their context switches (measured: 32 µs a record, 17 of them in the kernel).
PACE_STEP = 0.002


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
            if ahead >= PACE_STEP:
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


class KafkaRecords(FixedPartitionedSource[tuple[Any, Any], int]):
    """The live source: every partition of ``topics``, from the start (or the offset in
    Bytewax's recovery). Items are the dataflow's ``(record bytes, "topic/partition/
    offset")``, and once an epoch a progress mark ``(None, Progress)`` for the watermark
    (see :class:`~archwatch.engine.Progress`).

    A mark says how far the partition had been read *when the epoch before ended*
    (Bytewax calls ``snapshot`` then), and goes out first in the next epoch. So whatever
    the clock step derives from it reaches the shards in a later epoch than every record
    it vouches for, and Bytewax's stateful steps take epochs in order: the watermark
    cannot overtake those records on their way through other workers (a mark sent with
    its own batch did, with two workers: thousands of false alerts on a backlog).

    Its own partitions rather than Bytewax's KafkaSource: that one builds a message
    object per record (≈ 2 µs of the dataflow thread's ≈ 60 an event), waits 1 ms in each
    poll of an idle partition, parses librdkafka's statistics every second per
    partition, and keeps its consumer private (the progress marks need its offsets).
    Partition names ("{index}-{topic}") and offsets as resume state are KafkaSource's,
    so a recovery store written by it resumes here."""

    def __init__(self, brokers: str, topics: list[str], batch_size: int = 5000,
                 timeout: float = 30.0, side: Callable[[], list[Any]] | None = None) -> None:
        self.brokers = brokers
        self.topics = list(topics)
        self.batch_size = batch_size
        self.timeout = timeout
        self.side = side

    def list_parts(self) -> list[str]:
        md = AdminClient({"bootstrap.servers": self.brokers}).list_topics(timeout=self.timeout)
        parts = []
        for topic in self.topics:
            t = md.topics.get(topic)
            if t is None or t.error is not None:
                raise KafkaException(f"topic {topic!r} is not on {self.brokers}"
                                     f"{'' if t is None else f': {t.error}'}")
            parts.extend(f"{i}-{topic}" for i in sorted(t.partitions))
        return [*parts, SIDE_PART] if self.side is not None else parts

    def progress_parts(self) -> frozenset[str]:
        """The names the progress marks use ("topic/partition"), for the clock step."""
        return frozenset(_mark_name(*_topic_index(p)) for p in self.list_parts()
                         if p != SIDE_PART)

    def build_part(self, step_id: str, for_part: str,
                   resume_state: int | None) -> StatefulSourcePartition[tuple[Any, Any], Any]:
        if for_part == SIDE_PART:
            assert self.side is not None
            return _SidePartition(self.side)
        topic, idx = _topic_index(for_part)
        consumer = Consumer({
            "bootstrap.servers": self.brokers,
            "group.id": "archwatch-ignored",  # offsets live in Bytewax's recovery
            "enable.auto.commit": False,
            "enable.partition.eof": False,
        })
        return _KafkaPartition(consumer, topic, idx, resume_state, self.batch_size)


# The partition that carries the side items (``side``: the wall-clock ticks, the
# registrations), beside the Kafka partitions ("{index}-{topic}" never reads so).
SIDE_PART = "side"


class _SidePartition(StatefulSourcePartition[tuple[Any, Any], None]):
    """What the live dataflow needs besides the records, as ``(None, item)`` items of the
    same input. As an input of its own it drifted against the Kafka partitions' epochs,
    and Bytewax then held the partitions ahead, spinning, until it caught up: one input
    keeps them in step (see INPUT_WAKE)."""

    def __init__(self, side: Callable[[], list[Any]]) -> None:
        self.side = side

    def next_batch(self) -> list[tuple[Any, Any]]:
        return [(None, item) for item in self.side()]

    def next_awake(self) -> datetime | None:
        return datetime.now(UTC) + INPUT_WAKE

    def snapshot(self) -> None:
        return None


def _topic_index(part: str) -> tuple[str, int]:
    """A partition's topic and index from its Bytewax name ("{index}-{topic}")."""
    idx, topic = part.split("-", 1)
    return topic, int(idx)


def _mark_name(topic: str, idx: int) -> str:
    """A partition's name in its progress marks and the clock step ("topic/index"); its
    records' positions are this and "/offset" (the parse step reads the name back)."""
    return f"{topic}/{idx}"


class _KafkaPartition(StatefulSourcePartition[tuple[Any, Any], int]):
    def __init__(self, consumer: Consumer, topic: str, idx: int, resume: int | None,
                 batch_size: int) -> None:
        self.consumer = consumer
        self.tp = TopicPartition(topic, idx)
        start = resume if isinstance(resume, int) and resume >= 0 else OFFSET_BEGINNING
        consumer.assign([TopicPartition(topic, idx, start)])
        self.offset = start  # the next offset to read (OFFSET_BEGINNING: none read yet)
        self.batch_size = batch_size
        self.name = _mark_name(topic, idx)
        self.prefix = self.name + "/"
        self.idle = False
        self.mark: Progress | None = None  # taken at the last epoch's end, not yet sent
        self.position = metrics.INPUT_POSITION.labels(topic, str(idx))
        first = max(start, 0)
        metrics.INPUT_START.labels(topic, str(idx)).set(first)
        self.position.set(first)

    def next_batch(self) -> list[tuple[Any, Any]]:
        msgs = self.consumer.consume(self.batch_size, 0)
        prefix = self.prefix
        out: list[tuple[Any, Any]] = []
        if self.mark is not None:  # first: it is about the records of earlier epochs
            out.append((None, self.mark))
            self.mark = None
        last = None
        for msg in msgs:
            err = msg.error()
            if err is not None:  # a broker error, not a record: logged, retried by librdkafka
                log.warning("kafka error on %s: %s", self.name, err)
                continue
            last = msg.offset()
            out.append((msg.value() or b"", prefix + str(last)))
        if last is not None:
            self.offset = last + 1
            self.position.set(self.offset)
        self.idle = not msgs
        return out

    def _caught_up(self) -> bool:
        """Read to the end the broker last reported (the high watermark of the last fetch,
        kept by librdkafka); a partition read from the start with nothing read yet is
        caught up only once the broker says it holds nothing. (A partition that ends in
        transaction markers reads as behind: the clock stops counting it once it has not
        moved for PROGRESS_STALL_MS.)"""
        _lo, hi = self.consumer.get_watermark_offsets(self.tp, cached=True)
        if hi < 0:
            return False  # no fetch answered yet
        if self.offset >= 0:
            return self.offset >= hi
        if hi == 0:
            return True
        try:  # records were deleted from its start (retention): is anything left?
            # (a short wait: this is the dataflow's thread, and a broker that does not
            # answer leaves the partition behind, which the clock then stops counting)
            lo, hi = self.consumer.get_watermark_offsets(self.tp, timeout=0.05)
        except KafkaException:
            return False
        return lo >= hi

    def next_awake(self) -> datetime | None:
        # an idle partition is polled again after INPUT_WAKE (consume() does not wait: a
        # partition with nothing new must not hold up the others of the worker)
        return datetime.now(UTC) + INPUT_WAKE if self.idle else None

    def snapshot(self) -> int:
        """Called by Bytewax as each epoch ends (with or without recovery): the offset to
        resume from, and the progress mark to send first in the next epoch."""
        self.mark = Progress(self.name, self._caught_up(), taken_at=now_ms())
        return self.offset

    def close(self) -> None:
        self.consumer.close()


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
