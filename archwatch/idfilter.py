"""A growing Bloom filter of event ids: has this id possibly been seen?

The dedup step must answer "seen before?" for every event id ever applied, but keeping
each id in a dict costs ~140 bytes and never ends (the brief's "per-key state never
dropped" trap). Ids old enough move from the dict into this filter (2 bytes an id);
a "maybe" from it is settled exactly by reading the event log, so a false positive
costs one store lookup and never a wrong answer. The filter grows by adding parts of
doubling capacity, so the false-positive rate stays near its design value (~0.05% at
16 bits and 11 hashes an id) whatever the number of ids.
"""

from __future__ import annotations

import hashlib

BITS_PER_ID = 16
HASHES = 11


class _Part:
    __slots__ = ("bits", "m", "capacity", "n")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.m = capacity * BITS_PER_ID
        self.bits = bytearray(self.m // 8 + 1)
        self.n = 0

    def __getstate__(self) -> tuple[bytearray, int, int, int]:
        return self.bits, self.m, self.capacity, self.n

    def __setstate__(self, state: tuple[bytearray, int, int, int]) -> None:
        self.bits, self.m, self.capacity, self.n = state

    def has(self, h1: int, h2: int) -> bool:
        bits, m = self.bits, self.m
        for i in range(HASHES):
            pos = (h1 + i * h2) % m
            if not bits[pos >> 3] & (1 << (pos & 7)):
                return False
        return True

    def set(self, h1: int, h2: int) -> None:
        bits, m = self.bits, self.m
        for i in range(HASHES):
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
            self.parts.append(_Part(4096 if not self.parts else 2 * self.parts[-1].capacity))
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
