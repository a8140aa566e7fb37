"""The dedup step's Bloom filter of retired event ids (archwatch.idfilter): never a false
negative (that would apply a redelivery twice), and few false positives (each costs a
store lookup) whatever the number of ids, since each part is tighter than the last."""

from __future__ import annotations

import pickle

from archwatch.idfilter import _OLD_HASHES, IdFilter, _Part


def test_no_false_negatives_and_a_bounded_false_positive_rate() -> None:
    f = IdFilter()
    ids = [f"ev-{i:08d}" for i in range(60_000)]  # 4 parts: 4096, 8192, 16384, 32768
    for i in ids:
        f.add(i)
    assert len(f.parts) == 4 and len(f) == len(ids)
    assert all(i in f for i in ids)
    assert [p.k for p in f.parts] == [16, 17, 18, 19]
    probes = 200_000
    false = sum(f"other-{i:08d}" in f for i in range(probes))
    # parts of 11 hashes at 16 bits an id each (the former design) would give ≈ 0.2%
    # here (400); the bound of the tightening parts is 0.003% (6)
    assert false <= 30, false
    restored = pickle.loads(pickle.dumps(f))
    assert all(i in restored for i in ids[::7]) and len(restored) == len(ids)


def test_parts_snapshotted_before_they_carried_their_hashes_restore() -> None:
    old = _Part(4096, _OLD_HASHES)
    old.m = 4096 * 16  # the former layout: 16 bits an id, 11 hashes
    old.bits = bytearray(old.m // 8 + 1)
    f = IdFilter()
    f.parts = [old]
    for i in range(1000):
        f.add(f"ev-{i}")
    state = pickle.dumps([(p.bits, p.m, p.capacity, p.n) for p in f.parts])
    g = IdFilter()
    for bits, m, capacity, n in pickle.loads(state):
        part = _Part.__new__(_Part)
        part.__setstate__((bits, m, capacity, n))
        g.parts.append(part)
    assert g.parts[0].k == _OLD_HASHES
    assert all(f"ev-{i}" in g for i in range(1000))
