"""Settled cases leave memory and come back exactly when a late event needs them."""

from __future__ import annotations

import json
import random
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from archwatch.harness import run_batches
from tests.conftest import SCENARIOS, scenario_settings
from tests.test_properties import (
    batches_of,
    clean_lines,
    golden_lines,
    small_workload,
    snapshot,
)
from tests.test_workload import check_truth, settings_for, workload  # noqa: F401


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(SCENARIOS), data=st.data())
def test_eviction_never_changes_the_answer(name: str, data: st.DataObject) -> None:
    lines = clean_lines(golden_lines(name))
    s = scenario_settings(name)
    order = list(data.draw(st.permutations(lines)))
    cuts = data.draw(st.lists(st.integers(0, 1000), max_size=10))
    kept = run_batches(s, batches_of(order, cuts))
    evicting = run_batches(s, batches_of(order, cuts), evict_after_ms=0)
    assert snapshot(evicting) == snapshot(kept)


def test_workload_evicts_reloads_and_agrees() -> None:
    lines, s = small_workload()
    lines = clean_lines(lines)
    rng = random.Random(7)
    order = list(lines)
    rng.shuffle(order)
    batches = [order[i:i + 40] for i in range(0, len(order), 40)]
    kept = run_batches(s, batches)
    evicting = run_batches(s, batches, evict_after_ms=0)
    assert snapshot(evicting) == snapshot(kept)
    shards = evicting.cases.values()
    assert sum(sh.evictions for sh in shards) > 50
    assert sum(sh.reloads for sh in shards) > 10  # late events really came back
    in_memory = sum(len(sh.cases) for sh in shards)
    assert in_memory < sum(len(sh.cases) for sh in kept.cases.values()) / 2


def test_real_dataflow_reloads_from_the_store(workload, store, tmp_path: Path) -> None:  # noqa: F811
    """Per-source files one after another (cases, then receipts weeks later): settled
    cases are evicted and reloaded from chDB's event log, and the tables equal the truth."""
    from dataclasses import replace

    from archwatch import report
    from archwatch.replay import replay

    out, truth = workload
    s = replace(settings_for(out, truth), evict_after_ms=0, evict_min_wall_ms=0)
    files = [out / f for f in truth["files"] if f != "events.jsonl"]
    res = replay(files, store, s, tmp_path / "rejects.jsonl", progress=False, batch=200,
                 synchronous=True)
    got = report.full(store, res.report())
    assert got["counts"] == truth["counts"]
    check_truth(got, truth)


def test_retired_event_ids_still_tell_redeliveries_from_reuse() -> None:
    """Ids of applied events leave the dedup step's memory for a Bloom filter; a
    redelivery of one, or a reuse of the id, is still recognised (from the event log)."""
    lines, s = small_workload()  # with redeliveries and rejects, not cleaned
    assert len(lines) > len(clean_lines(lines))
    order = list(lines)
    random.Random(3).shuffle(order)
    batches = [order[i:i + 40] for i in range(0, len(order), 40)]
    kept = run_batches(s, batches)
    retiring = run_batches(s, batches, evict_after_ms=0)
    assert retiring.counts == kept.counts and kept.counts["duplicate"] > 0
    assert snapshot(retiring) == snapshot(kept)
    in_memory = sum(len(d.seen) for d in retiring.dedup.values())
    assert in_memory < sum(len(d.seen) for d in kept.dedup.values()) / 4
    assert sum(d.lookups for d in retiring.dedup.values()) > 0  # the event log was asked


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30), st.integers(0, 2)), max_size=80),
       st.lists(st.integers(1, 10), max_size=20))
def test_dedup_with_retirement_answers_as_one_that_never_forgets(
        events: list[tuple[int, int]], cuts: list[int]) -> None:
    """Any sequence of (id, payload) pairs, in any batches: the same statuses."""
    from archwatch.engine import DedupShard, Retirement
    from archwatch.models import parse_record

    template = json.loads(next(x for x in golden_lines("on-time") if '"case.completed"' in x))

    def env(i: int, payload: int):
        return parse_record(json.dumps({**template, "eventId": f"ev-{i}", "caseNo": f"C{i}",
                                        "occurredAt": f"2022-03-0{1 + payload}T10:01:00Z"}),
                            "t")

    logged: dict[str, bytes] = {}
    plain = DedupShard()
    retiring = DedupShard(Retirement(lambda ids: {i: logged[i] for i in ids if i in logged},
                                     0, 0), wall_ms=lambda: 0)
    envs = [env(i, p) for i, p in events]
    assert all(not hasattr(e, "reason") for e in envs)
    expected = [plain.classify(e) for e in envs]
    got: list[str] = []
    pos = 0
    for size in [*cuts, len(envs)]:
        batch = envs[pos:pos + size]
        pos += size
        statuses = retiring.classify_batch(batch)
        for e, status in zip(batch, statuses, strict=True):
            if status == "new":
                logged[e.event.eventId] = e.digest
                retiring.logged(e)
        retiring.retire_due()
        got.extend(statuses)
    assert got == expected
