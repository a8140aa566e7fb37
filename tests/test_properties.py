"""Properties of contract §3 over the engine's shard logic (many orders, many batchings).

The real dataflow is exercised on the same inputs in test_golden/test_workload; here the
in-process harness lets hypothesis try thousands of delivery orders cheaply.
"""

from __future__ import annotations

import json
import pickle
from functools import lru_cache
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from archwatch.generate import GenerateOptions, generate
from archwatch.harness import Engine, run_batches
from archwatch.models import Envelope, parse_record
from archwatch.receivers import load_registrations
from archwatch.settings import EngineSettings
from archwatch.timeutil import parse_ts
from tests.conftest import GOLDEN, SCENARIOS, scenario_settings

TABLES = ("anomaly", "case_state", "kpi_task_totals", "receiver_status")


def snapshot(eng: Engine) -> dict[str, object]:
    t = eng.tables
    assert t.count_differences() == {}  # every shard's anomaly_count counts its anomalies
    return {
        "anomaly": t.final("anomaly"),
        "case_state": t.final("case_state"),
        "kpi_task_totals": t.kpi_totals(),
        "receiver_status": t.final("receiver_status"),
    }


def clean_lines(lines: list[str]) -> list[str]:
    """Valid records, first copy of each eventId: order cannot then change which applies."""
    seen: set[str] = set()
    out = []
    for line in lines:
        rec = parse_record(line, "")
        if not isinstance(rec, Envelope):
            continue
        eid = rec.event.eventId
        if eid not in seen:
            seen.add(eid)
            out.append(line)
    return out


def golden_lines(name: str) -> list[str]:
    return [x for x in (GOLDEN / name / "events.jsonl").read_text().splitlines() if x.strip()]


@lru_cache(maxsize=1)
def small_workload() -> tuple[list[str], EngineSettings]:
    out = Path(__file__).resolve().parent / ".cache" / "prop-workload"
    truth = generate(out, GenerateOptions(cases=120, seed=11, anomaly_rate=0.9,
                                          redelivery_rate=0.02, heartbeat_hours=1))
    lines = (out / "events.jsonl").read_text().splitlines()
    s = EngineSettings(as_of=parse_ts(truth["asOf"]),
                       receivers=load_registrations(out / "receivers.json"), shards=4)
    return lines, s


def batches_of(lines: list[str], cuts: list[int]) -> list[list[str]]:
    points = sorted({c % (len(lines) + 1) for c in cuts} | {0, len(lines)})
    return [lines[a:b] for a, b in zip(points, points[1:], strict=False) if b > a]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(SCENARIOS), data=st.data())
def test_any_order_any_batching_same_tables(name: str, data: st.DataObject) -> None:
    lines = clean_lines(golden_lines(name))
    s = scenario_settings(name)
    reference = snapshot(run_batches(s, [lines]))
    order = data.draw(st.permutations(lines))
    cuts = data.draw(st.lists(st.integers(0, 10_000), max_size=8))
    assert snapshot(run_batches(s, batches_of(list(order), cuts))) == reference


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), cuts=st.lists(st.integers(0, 100_000), max_size=20))
def test_workload_any_order_same_tables(seed: int, cuts: list[int]) -> None:
    """Any order at all (weeks late, per-source files one after another...)."""
    import random

    lines, s = small_workload()
    lines = clean_lines(lines)
    reference = snapshot(run_batches(s, [lines]))
    order = list(lines)
    random.Random(seed).shuffle(order)
    assert snapshot(run_batches(s, batches_of(order, cuts))) == reference


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), cuts=st.lists(st.integers(0, 100_000), max_size=12),
       restore=st.booleans())
def test_recovery_snapshots_between_batches_same_tables(seed: int, cuts: list[int],
                                                        restore: bool) -> None:
    """A recovery snapshot after every batch packs the cases it touched (they stay packed
    until touched again); restored from it or not, any order gives the same tables."""
    import random

    lines, s = small_workload()
    lines = clean_lines(lines)
    reference = snapshot(run_batches(s, [lines]))
    order = list(lines)
    random.Random(seed).shuffle(order)
    eng = Engine(s)
    for batch in batches_of(order, cuts):
        eng.feed(batch)
        for key, sh in list(eng.cases.items()):
            blob = pickle.dumps(sh, protocol=pickle.HIGHEST_PROTOCOL)
            if restore:
                restored = pickle.loads(blob)
                restored.adopt(sh)
                eng.cases[key] = restored
    eng.finish()
    assert snapshot(eng) == reference


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), data=st.data())
def test_bounded_disorder_within_lateness_same_tables(seed: int, data: st.DataObject) -> None:
    """Delivery shuffled within the lateness bound (as a live feed would be), batches of
    any size, and the same tables as delivery in event-time order."""
    import random

    lines, s = small_workload()
    lines = clean_lines(lines)
    by_time = sorted(lines, key=lambda x: parse_ts(json.loads(x)["occurredAt"]))
    rng = random.Random(seed)
    jittered = sorted(
        by_time,
        key=lambda x: parse_ts(json.loads(x)["occurredAt"]) + rng.randint(0, s.sla.lateness),
    )
    size = data.draw(st.integers(1, 200))
    batches = [jittered[i:i + size] for i in range(0, len(jittered), size)]
    assert snapshot(run_batches(s, batches)) == snapshot(run_batches(s, [by_time]))


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_intermediate_tables_are_the_batch_answer_so_far(data: st.DataObject) -> None:
    """At any moment (a prefix of the delivery, at a common watermark) the stored tables
    equal a fresh run over the same events: late events withdraw and update anomalies."""
    name = data.draw(st.sampled_from(SCENARIOS))
    lines = clean_lines(golden_lines(name))
    s = scenario_settings(name, as_of=None)
    order = list(data.draw(st.permutations(lines)))
    k = data.draw(st.integers(1, len(order)))
    cuts = data.draw(st.lists(st.integers(0, 1000), max_size=5))
    wm = max(parse_ts(json.loads(x)["occurredAt"]) for x in order[:k])
    live = Engine(s)
    for b in batches_of(order[:k], cuts):
        live.feed(b)
        live.watermark(parse_ts("2000-01-01T00:00:00Z"))  # a tick between batches
    live.watermark(wm)
    fresh = Engine(s)
    fresh.feed(sorted(order[:k]))
    fresh.watermark(wm)
    assert snapshot(live) == snapshot(fresh)


def test_replaying_the_same_input_twice_changes_nothing() -> None:
    lines, s = small_workload()
    once = run_batches(s, [lines])
    twice = run_batches(s, [lines, lines])
    assert snapshot(twice) == snapshot(once)
    # the second pass: every valid line is a redelivery, whether applied or after --as-of
    c = once.counts
    assert twice.counts["duplicate"] == 2 * c["duplicate"] + c["applied"] + c["afterAsOf"]
    assert twice.counts["rejected"] == 2 * c["rejected"]


def test_kpi_totals_equal_the_sum_of_their_cases() -> None:
    lines, s = small_workload()
    eng = run_batches(s, [lines])
    by_group: dict[tuple[object, ...], list[object]] = {}
    for c in eng.tables.final("case_state"):
        key = (c["year"], c["qym"], c["dept_code"], c["system_code"], c["task_id"])
        acc = by_group.setdefault(key, [0, 0, 0, 0, 0, None])
        acc[0] += 1
        if c["first_received_at"] is not None:
            acc[1] += 1
            acc[4] += round(float(c["first_received_at"]) * 1000) - round(
                float(c["completed_at"]) * 1000)
            if acc[5] is None or float(c["first_received_at"]) > float(acc[5]):
                acc[5] = c["first_received_at"]
        acc[2] += c["status"] == "ARCHIVED_OK"
        acc[3] += c["status"] == "ARCHIVED_FAIL"
    assert eng.tables.kpi_totals() == {k: tuple(v) for k, v in by_group.items()}
    assert len(by_group) > 10
