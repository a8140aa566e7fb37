"""Settled cases leave memory and come back exactly when a late event needs them."""

from __future__ import annotations

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
