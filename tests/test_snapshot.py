"""A case shard's recovery snapshot (issue #10): its cases, deadline heap and KPI
accumulators go as one marshal blob instead of pickled objects; the cases stay packed in
memory after it until touched (CaseShard.cool), and a shard restored from it, or packed
at every snapshot, carries on exactly as one never packed does."""

from __future__ import annotations

import marshal
import pickle
from pathlib import Path
from typing import Any

import pytest

from archwatch.engine import (
    ArchiveNoShard,
    CaseShard,
    ChangeLog,
    DedupShard,
    _Snapshottable,
    pack_shard,
)
from archwatch.generate import GenerateOptions, generate
from archwatch.harness import Engine
from archwatch.receivers import load_registrations
from archwatch.settings import EngineSettings
from archwatch.timeutil import parse_ts


def _contents(sh: CaseShard) -> object:
    """What a shard's state says, packed or not (bytes depend on which strings are interned
    and on how shared tuples are numbered: compared as plain data, by case number). Of
    the deadline heap, the entries that are each case's next deadline, in order (stale
    ones are skipped when they come up, and a restore rebuilds the heap without them)."""
    states = dict(sorted(zip(sh.cases, sh.states(), strict=True)))  # in any order
    live = sorted({(d, c) for d, c in sh.heap
                   if c in states and states[c].next_deadline == d})
    # (the KPI accumulators in key order too: a restore orders them as their log does)
    return marshal.loads(pack_shard(states, live, dict(sorted(sh.accs())))[1])


def _engines(tmp_path: Path, evict_after_ms: int | None) -> tuple[Engine, Engine, list[str]]:
    truth = generate(tmp_path / "w", GenerateOptions(cases=300, seed=21, anomaly_rate=0.7))
    lines = (tmp_path / "w" / "events.jsonl").read_text().splitlines()
    s = EngineSettings(as_of=parse_ts(truth["asOf"]), shards=4,
                       receivers=load_registrations(tmp_path / "w" / "receivers.json"))
    return (Engine(s, evict_after_ms=evict_after_ms), Engine(s, evict_after_ms=evict_after_ms),
            lines)


@pytest.mark.parametrize("evict_after_ms", [None, 3_600_000])
def test_a_restored_case_shard_carries_on_as_the_original(tmp_path: Path,
                                                          evict_after_ms: int | None) -> None:
    a, b, lines = _engines(tmp_path, evict_after_ms)
    half = len(lines) * 3 // 5
    for eng in (a, b):
        for i in range(0, half, 500):
            eng.feed(lines[i:min(i + 500, half)])
    shards = list(b.cases.items())
    # what the snapshot holds: receipts, checks, anomalies, settled cases, KPI receipts ...
    assert any(st.facts.receipts and st.facts.checks for _, sh in shards
               for st in sh.states())
    assert any(st.anomalies for _, sh in shards for st in sh.states())
    if evict_after_ms is not None:
        assert any(sh.evicted for _, sh in shards)
    for key, sh in shards:
        blob = pickle.dumps(sh, protocol=pickle.HIGHEST_PROTOCOL)
        restored = pickle.loads(blob)
        assert isinstance(restored, CaseShard)
        restored.adopt(sh)  # the running process's clock and loader, as after a restore
        assert _contents(restored) == _contents(sh)
        assert restored.evicted == sh.evicted and restored.src == sh.src
        # shared item tuples are shared again, not one copy per case
        assert all(type(v) is bytes for v in restored.cases.values())  # packed until touched
        items = {id(st.facts.completion.item) for st in restored.states()
                 if st.facts.completion is not None}
        assert len(items) <= len({st.facts.completion.item for st in restored.states()
                                  if st.facts.completion is not None})
        b.cases[key] = restored
    for eng in (a, b):
        for i in range(half, len(lines), 500):
            eng.feed(lines[i:i + 500])
        eng.finish()
    for table in ("anomaly", "case_state", "receiver_status"):
        assert b.tables.final(table) == a.tables.final(table), table
    assert b.tables.kpi_totals() == a.tables.kpi_totals()
    assert b.tables.count_differences() == {} == a.tables.count_differences()


def _former_state(sh: _Snapshottable) -> dict[str, Any]:
    """A shard's snapshot state as written before the packed forms: every attribute but
    the injected ones pickled as objects (and no change logs: they came in session 13)."""
    skip = (*sh._INJECTED, *sh._TRACKING, "_cases_log")
    state = {k: v for k, v in sh.__dict__.items() if k not in skip}
    state["_injected"] = [n for n in sh._INJECTED if n in sh.__dict__]
    return state


def test_snapshots_of_the_objects_still_restore(tmp_path: Path) -> None:
    """A snapshot written before the packed form (cases pickled as objects) loads."""
    a, _, lines = _engines(tmp_path, None)
    a.feed(lines[:2000])
    for sh in a.cases.values():
        old = pickle.dumps(_former_state(sh))
        restored = CaseShard.__new__(CaseShard)
        restored.__setstate__(pickle.loads(old))
        assert _contents(restored) == _contents(sh)


@pytest.mark.parametrize("evict_after_ms", [None, 3_600_000])
def test_snapshots_of_form_2_still_restore(tmp_path: Path, evict_after_ms: int | None) -> None:
    """Form 2 (sessions 5–12): every packed case, the deadline heap and the KPI blobs in
    one marshal blob, the evicted and settled cases pickled as objects."""
    a, _, lines = _engines(tmp_path, evict_after_ms)
    for i in range(0, len(lines) * 3 // 5, 500):
        a.feed(lines[i:i + 500])
    for sh in a.cases.values():
        sh.cool()
        state = {k: v for k, v in _former_state(sh).items()
                 if k not in ("heap", "kpi", "refs", "hot", "hot_kpi")}
        state["cases"] = ("shard-marshal-2", marshal.dumps(
            (sh.refs.packed(), sh.cases, sh.heap, list(sh.kpi.values()))))
        restored = CaseShard.__new__(CaseShard)
        restored.__setstate__(pickle.loads(pickle.dumps(state)))
        assert _contents(restored) == _contents(sh)
        assert restored.evicted == sh.evicted and list(restored.settled) == list(sh.settled)
        # its next snapshot is a form 3 one, its logs started afresh
        again = pickle.loads(pickle.dumps(restored))
        assert _contents(again) == _contents(sh)
        assert again.evicted == sh.evicted and list(again.settled) == list(sh.settled)


def assert_same_engines(a: Engine, b: Engine) -> None:
    """Two engines fed alike hold the same cases, and once finished write the same
    tables (whatever either packed, and when)."""
    assert [_contents(sh) for sh in b.cases.values()] == \
        [_contents(sh) for sh in a.cases.values()]
    for eng in (a, b):
        eng.finish()
    for table in ("anomaly", "case_state", "receiver_status"):
        assert b.tables.final(table) == a.tables.final(table), table
    assert b.tables.kpi_totals() == a.tables.kpi_totals()


@pytest.mark.parametrize("evict_after_ms", [None, 3_600_000])
def test_packing_at_every_snapshot_changes_nothing(tmp_path: Path,
                                                   evict_after_ms: int | None) -> None:
    """A live run with recovery snapshots every epoch: the cases it touched are packed,
    then unpacked by the next event or deadline (or peeked at by eviction). Same tables
    as a run that never packs, and only the cases touched since stay unpacked."""
    a, b, lines = _engines(tmp_path, evict_after_ms)
    packed_seen = False
    for i in range(0, len(lines), 300):
        a.feed(lines[i:i + 300])
        b.feed(lines[i:i + 300])
        for sh in b.cases.values():
            blob = pickle.dumps(sh, protocol=pickle.HIGHEST_PROTOCOL)  # a snapshot: packs
            assert all(type(v) is bytes for v in (*sh.cases.values(), *sh.kpi.values()))
            # the cases, the evicted and the settled go as logs of their changes: each
            # snapshot (on top of the ones before) restores them as they are
            restored = pickle.loads(blob)
            assert restored.evicted == sh.evicted
            assert list(restored.settled) == list(sh.settled)
            assert _contents(restored) == _contents(sh)  # the cases' log, the heap rebuilt
            packed_seen = packed_seen or bool(sh.cases)
    assert packed_seen
    assert_same_engines(a, b)
    if evict_after_ms is not None:
        assert sum(sh.evictions for sh in b.cases.values()) == \
            sum(sh.evictions for sh in a.cases.values()) > 0


@pytest.mark.parametrize("evict_after_ms", [None, 3_600_000])
def test_packing_between_snapshots_changes_nothing(tmp_path: Path,
                                                   evict_after_ms: int | None) -> None:
    """Live with recovery, a case shard packs what was touched between snapshots too
    (precool): each snapshot still restores the shard as it is — the cases packed since
    the last one, by precool or by the snapshot itself, are in its change log — and the
    tables are those of a run that never packs."""
    a, b, lines = _engines(tmp_path, evict_after_ms)
    precooled = staged = 0
    for n, i in enumerate(range(0, len(lines), 100)):
        a.feed(lines[i:i + 100])
        b.feed(lines[i:i + 100])
        for sh in b.cases.values():
            precooled += sh.precool()
            # the packed cases and accumulators went into their logs' blobs (staged)
            staged += sh._cases_log.staged + sh._kpi_log.staged
            if n % 3 == 2:  # an epoch: three batches, each followed by a precool
                restored = pickle.loads(pickle.dumps(sh, protocol=pickle.HIGHEST_PROTOCOL))
                assert _contents(restored) == _contents(sh)
                assert restored.evicted == sh.evicted
                assert not sh._cooled  # taken by the snapshot's log
    assert precooled > 0 and staged > 0
    assert_same_engines(a, b)


def test_precool_waits_for_the_first_snapshot(tmp_path: Path) -> None:
    """Before a shard's first snapshot what is touched is not tracked (no recovery, or
    not yet): precool packs nothing then."""
    a, _, lines = _engines(tmp_path, None)
    a.feed(lines[:1000])
    assert all(sh.precool() == 0 for sh in a.cases.values())
    assert all(type(v) is not bytes for sh in a.cases.values() for v in sh.cases.values())


def test_the_shared_tuple_table_round_trips_across_many_snapshots() -> None:
    """The table is packed a chunk per snapshot that numbered new tuples; past 64 chunks it
    starts again as one. Restored, every number names an equal tuple."""
    from archwatch.engine import _Refs

    refs = _Refs()
    for i in range(150):
        ref = refs.numberer()
        t = ("item", f"task-{i}", "330102")
        assert ref(t) == i and ref(t) == i  # numbered once, by identity
        chunks = refs.packed()
        assert 1 <= len(chunks) <= 64
        restored = _Refs.unpacked(chunks)
        assert restored.items == refs.items
    assert refs.packed() is refs.packed()  # nothing new: the same chunks, not re-packed


def _plain_attrs(sh: _Snapshottable) -> dict[str, Any]:
    return {n: list(v) if n in ("queue", "settled") else v
            for n, v in ((n, getattr(sh, n)) for n in sh._PLAIN)}


def test_state_that_grows_goes_as_one_marshal_blob_and_restores(tmp_path: Path) -> None:
    """The event ids of the dedup shards (and their retirement queue), every receipt fact
    and conflict of the archive-number shards, the settled and evicted case numbers: in
    one marshal blob, as logs of their changes (pickling them object by object cost 10x
    more, every epoch). Restored they equal the originals; a snapshot from before
    (objects, no logs) restores too, and starts its logs afresh."""
    a, _, lines = _engines(tmp_path, 3_600_000)
    for i in range(0, len(lines), 500):
        a.feed(lines[i:i + 500])
    kinds: list[tuple[type[Any], dict[str, Any]]] = [
        (DedupShard, a.dedup), (ArchiveNoShard, a.archive_nos), (CaseShard, a.cases)]
    for cls, shards in kinds:
        attrs = [_plain_attrs(sh) for sh in shards.values()]
        assert cls._PLAIN and all(any(x[n] for x in attrs) for n in cls._PLAIN), cls  # not vacuous
        for sh, want in zip(shards.values(), attrs, strict=True):
            state = sh.__getstate__()
            assert not set(cls._PLAIN) & set(state) and type(state["_plain"]) is bytes
            restored = pickle.loads(pickle.dumps(sh, protocol=pickle.HIGHEST_PROTOCOL))
            assert _plain_attrs(restored) == want
            assert type(restored.__dict__[cls._PLAIN[1]]) is type(sh.__dict__[cls._PLAIN[1]])
            former = cls.__new__(cls)
            former.__setstate__(pickle.loads(pickle.dumps(_former_state(sh))))
            assert _plain_attrs(former) == want
            if cls is not CaseShard:  # (a case shard's former forms: the tests above)
                assert _plain_attrs(pickle.loads(pickle.dumps(former))) == want


def test_shared_tuples_keep_their_place_without_an_index_of_the_table() -> None:
    """Items, names and KPI keys have process-wide numbers (rules.SHARED_NO): a shard's
    table finds a tuple's place through it, across packing passes and after a restore."""
    from archwatch.engine import _Refs
    from archwatch.rules import SHARED_NO, KpiKey, _shared_item, shared_key

    items = [_shared_item(("task", f"task-{i}", "330102")) for i in range(100)]
    keys = [shared_key(KpiKey(2024, "330102", "d", "s", f"task-{i}", "市")) for i in range(50)]
    assert shared_key(KpiKey(2024, "330102", "d", "s", "task-7", "市")) is keys[7]
    assert all(id(t) in SHARED_NO for t in (*items, *keys))
    refs = _Refs()
    for i, t in enumerate([*items, *keys]):
        assert refs.numberer()(t) == i  # a new pass each time: still found, or added once
    ref = refs.numberer()
    assert [ref(t) for t in [*keys, *items]] == [*range(100, 150), *range(100)]
    assert len(refs.items) == 150
    restored = _Refs.unpacked(refs.packed())
    for i in range(100, 150):  # as CaseShard.__setstate__ does with the keys
        restored.items[i] = shared_key(KpiKey(*restored.items[i]))
    ref = restored.numberer()
    assert [ref(t) for t in [*items, *keys]] == list(range(150))
    assert len(restored.items) == 150


def _as_form_3(sh: CaseShard) -> CaseShard:
    """``sh`` restored from a form 3 snapshot (sessions 13–18: the KPI accumulators as one
    list, marshalled whole at every snapshot)."""
    state = sh.__getstate__()
    table, kpi_blobs, _entries = marshal.loads(state["cases"][1])
    accs = list(ChangeLog.replay(ChangeLog(kpi_blobs).blobs).values())
    state["cases"] = ("shard-marshal-3", marshal.dumps((table, accs)), *state["cases"][2:])
    restored = CaseShard.__new__(CaseShard)
    restored.__setstate__(pickle.loads(pickle.dumps(state)))
    return restored


def test_the_kpi_accumulators_log_and_snapshots_of_form_3(tmp_path: Path) -> None:
    """Form 4 logs the KPI accumulators' changes: one emptied and deleted between two
    snapshots is gone from the next one's restore, one changed is changed. A form 3
    snapshot restores, and its next snapshot writes every accumulator again."""
    a, _, lines = _engines(tmp_path, None)
    a.feed(lines[:3000])
    sh = max(a.cases.values(), key=lambda x: len(x.kpi))
    pickle.dumps(sh)  # the first snapshot: every accumulator packed and logged
    gone, changed = list(sh.kpi)[:2]
    assert sh.acc(gone) is not None
    del sh.kpi[gone]  # as _kpi_rows deletes an emptied one
    sh.acc(changed).kpi += 5  # type: ignore[union-attr]
    restored = pickle.loads(pickle.dumps(sh))
    assert gone not in restored.kpi and restored.acc(changed).kpi == sh.acc(changed).kpi
    assert dict(sorted(restored.accs())) == dict(sorted(sh.accs()))
    assert _contents(restored) == _contents(sh)
    former = _as_form_3(sh)
    assert _contents(former) == _contents(sh)
    again = pickle.loads(pickle.dumps(former))
    assert former._kpi_log.entries == len(sh.kpi)  # written whole: its log was new
    assert _contents(again) == _contents(sh)
