"""A growing Bloom filter of event ids: has this id possibly been seen?

The dedup step must answer "seen before?" for every event id ever applied, but keeping
each id in a dict costs ~140 bytes and never ends (the brief's "per-key state never
dropped" trap). Ids old enough move from the dict into this filter (3–4 bytes an id);
a "maybe" from it is settled exactly by reading the event log, so a false positive
costs one store lookup (≈ 15 ms) and never a wrong answer.

The filter grows by adding parts of doubling capacity, and every id is checked against
every part, so the parts' false-positive rates add up. Each part is therefore made
tighter than the one before (a scalable Bloom filter: part i has 16 + i hashes and the
bits that makes optimal, so ≈ 0.5^(16 + i) false positives at capacity), and the sum
stays under 0.003% whatever the number of ids. (Parts of equal rate, 0.05% each, added
up to 0.3% at 10M events: one store lookup every few batches of every dedup shard.)
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

FIRST_HASHES = 16  # part 0; part i has FIRST_HASHES + i (at most MAX_HASHES)
MAX_HASHES = 30
_OLD_HASHES = 11  # the hashes of parts snapshotted before parts carried their own


class _Part:
    __slots__ = ("bits", "m", "capacity", "n", "k")

    def __init__(self, capacity: int, k: int) -> None:
        self.capacity = capacity
        self.k = k
        self.m = capacity * math.ceil(k / math.log(2))  # optimal bits for k hashes
        self.bits = bytearray(self.m // 8 + 1)
        self.n = 0

    def __getstate__(self) -> tuple[bytearray, int, int, int, int]:
        return self.bits, self.m, self.capacity, self.n, self.k

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        if len(state) == 4:  # a part from before each carried its number of hashes
            state = (*state, _OLD_HASHES)
        self.bits, self.m, self.capacity, self.n, self.k = state

    def has(self, h1: int, h2: int) -> bool:
        bits, m = self.bits, self.m
        for i in range(self.k):
            pos = (h1 + i * h2) % m
            if not bits[pos >> 3] & (1 << (pos & 7)):
                return False
        return True

    def set(self, h1: int, h2: int) -> None:
        bits, m = self.bits, self.m
        for i in range(self.k):
            pos = (h1 + i * h2) % m
            bits[pos >> 3] |= 1 << (pos & 7)
        self.n += 1


class IdFilter:
    """Bloom filter over strings; picklable."""

    __slots__ = ("parts",)

    def __init__(self) -> None:
        self.parts: list[_Part] = []

    def __getstate__(self) -> list[_Part]:
        return self.parts

    def __setstate__(self, state: list[_Part]) -> None:
        self.parts = state

    @staticmethod
    def _hashes(item: str) -> tuple[int, int]:
        h = hashlib.blake2b(item.encode(), digest_size=16).digest()
        return int.from_bytes(h[:8], "little"), int.from_bytes(h[8:], "little") | 1

    def add(self, item: str) -> None:
        if not self.parts or self.parts[-1].n >= self.parts[-1].capacity:
            self.parts.append(_Part(4096 if not self.parts else 2 * self.parts[-1].capacity,
                                    min(FIRST_HASHES + len(self.parts), MAX_HASHES)))
        self.parts[-1].set(*self._hashes(item))

    def __contains__(self, item: str) -> bool:
        if not self.parts:
            return False
        h1, h2 = self._hashes(item)
        return any(p.has(h1, h2) for p in self.parts)

    def __len__(self) -> int:
        return sum(p.n for p in self.parts)

    def nbytes(self) -> int:
        return sum(len(p.bits) for p in self.parts)
