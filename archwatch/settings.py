"""Engine settings shared by replay and the live pipeline (one object, validated once)."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from datetime import timedelta
from functools import lru_cache

from archwatch.receivers import Registration
from archwatch.rules import Sla

DEFAULT_SHARDS = 32

# How often the live input's partitions wake when they have nothing to give (the Kafka
# partitions, and the side partition with the wall-clock ticks and registrations: see
# connectors.kafka.KafkaRecords). Bytewax advances a partition's epoch only when it is
# awake (at the first wake one epoch interval after its last advance), and lets it read
# past an epoch only once the whole dataflow has finished that epoch; the partition
# ahead then waits, re-activated at once in a loop. With the ticks and the registry as
# inputs of their own, waking every 100 ms, their epochs drifted against the Kafka
# partitions' and the partitions waited for them most of each epoch: an idle `archwatch
# run` took a full core, and an idle partition was polled ≈ 5 times a second instead of
# 100 (a record waited up to a second to be read). Partitions of one input, built
# together and woken alike, advance together.
INPUT_WAKE = timedelta(milliseconds=10)

# Seconds between a live run's epochs unless `--epoch-interval` says. With recovery each
# epoch ends in a snapshot of every shard, and Bytewax reads no input until it is written
# (0.3-0.7 s at 10,000 events/s): at 5 s fewer deadlines meet such a close, and what
# Bytewax writes of the shards' state (their whole snapshots, every epoch) is a fifth
# (bench/RESULTS.md, section 2, session 15: deadline -> visible p99 0.85-1.51 s against
# 1.06-2.25 s at 1 s in eight interleaved pairs). The cost: after a crash up to 5 s of
# input is read again, and after a catch-up the watermark follows the wall clock again up
# to an epoch later. Without recovery an epoch only paces the partitions' progress reports
# (that release), so it stays short.
EPOCH_WITH_RECOVERY = 5.0
EPOCH_WITHOUT_RECOVERY = 1.0


@dataclass(frozen=True)
class EngineSettings:
    sla: Sla = field(default_factory=Sla)
    shards: int = DEFAULT_SHARDS
    as_of: int | None = None  # replay: the moment the answer describes (epoch ms)
    receivers: dict[str, Registration] = field(default_factory=dict)
    live: bool = False  # live: the watermark also follows the wall clock
    # receivers' flap suppression where a registration sets none (archwatch.receivers):
    # consecutive missed checks before down, consecutive good heartbeats before up again
    down_after: int = 1
    up_after: int = 1
    recovery: bool = False  # Bytewax recovery on: shards must snapshot their state
    # settled cases leave memory after this much event time (None: never) and this much
    # wall time (so their events are surely written), and are reloaded on a late event
    evict_after_ms: int | None = 86_400_000
    evict_min_wall_ms: int = 60_000

    @property
    def flap(self) -> tuple[int, int]:
        return self.down_after, self.up_after


def shard_of(key: str, shards: int) -> str:
    """Stable shard of a key (crc32, not Python's per-process salted ``hash``)."""
    return _names(shards)[zlib.crc32(key.encode()) % shards]


@lru_cache(maxsize=8)
def _names(shards: int) -> tuple[str, ...]:
    # the shard names are formatted once, not per call (~2 calls per event)
    return tuple(f"{i:03d}" for i in range(shards))


def all_shards(shards: int) -> list[str]:
    return list(_names(shards))
