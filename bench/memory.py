"""Resident memory per million open cases in the dataflow's state.

Drives the engine's shards (archwatch.harness.Engine: dedup shards + CaseShard, exactly
what the dataflow keys and keeps) with generated ``case.completed`` events that stay open:
no receipts, and the watermark (latest occurredAt - lateness) stays weeks before their
archive deadlines. The harness's store emulation (FinalTables) is not dataflow state, so
rows are dropped as the sink would ship them.

Baseline, measured in the same run (each in a fresh interpreter): RSS growth of the same
number of plain dicts ``{caseNo: None}``. Also reported: one dict of all case numbers,
and the pickled size of the case and event-id shards (what a recovery snapshot holds).

    .venv/bin/python bench/memory.py                # 200k cases, extrapolated to 1M
    .venv/bin/python bench/memory.py --cases 1000000
"""

from __future__ import annotations

import argparse
import gc
import pickle
import sys
import time
from typing import Any

import orjson
from _common import emit, rss_bytes, run_worker, table, target, write_results

GIB = 1024**3
BATCH = 5_000
WARMUP = 5_000
START_MS = 1_762_000_000_000  # 2025-11-01; all completions fall within a few days of it


def case_no(i: int) -> str:
    return f"HZ20251101{i:08d}"


def completion_lines(catalog: list[Any], first: int, n: int) -> list[str]:
    from archwatch.timeutil import to_iso_utc

    out = []
    for i in range(first, first + n):
        it = catalog[i % len(catalog)]
        at = START_MS + i * 997 % (3 * 86_400_000)
        stamp = to_iso_utc(at)
        out.append(orjson.dumps({
            "eventId": f"ev-mem-{i:09d}", "type": "case.completed", "occurredAt": stamp,
            "source": it.system_code, "caseNo": case_no(i), "taskId": it.task_id,
            "taskCode": it.task_code, "taskName": it.task_name, "deptCode": it.dept_code,
            "deptName": it.dept_name, "qym": it.qym, "area": it.area,
            "systemCode": it.system_code, "systemName": it.system_name,
            "systemLevel": it.system_level, "completedAt": stamp,
        }).decode())
    return out


def snapshot_all(eng: Any) -> tuple[int, float]:
    """Pickle every case and event-id shard, as a recovery snapshot does: (bytes, seconds).
    (The event-id shards since session 13: their change logs stay in memory.)"""
    t0 = time.perf_counter()
    size = sum(len(pickle.dumps(sh, protocol=pickle.HIGHEST_PROTOCOL))
               for sh in (*eng.cases.values(), *eng.dedup.values()))
    return size, time.perf_counter() - t0


def worker_engine(cases: int, recovery: bool = False) -> dict[str, Any]:
    """The engine's state for ``cases`` open cases. With ``recovery``, a snapshot of every
    case and event-id shard after each batch (an epoch, as a live run with recovery takes
    them), which leaves the cases packed until touched (CaseShard.cool) and the shards'
    change logs in memory (engine.ChangeLog)."""
    from archwatch.catalog import build_catalog
    from archwatch.harness import Engine
    from archwatch.settings import EngineSettings

    class StateOnly(Engine):
        def _write(self, out: Any) -> None:  # the sink ships rows away; keep none
            return None

    catalog = build_catalog(1)
    eng = StateOnly(EngineSettings())
    eng.feed(completion_lines(catalog, 0, WARMUP))
    gc.collect()
    before = rss_bytes()
    t0 = time.perf_counter()
    epochs: list[float] = []
    for first in range(WARMUP, WARMUP + cases, BATCH):
        eng.feed(completion_lines(catalog, first, min(BATCH, WARMUP + cases - first)))
        if recovery:
            epochs.append(snapshot_all(eng)[1])
    elapsed = time.perf_counter() - t0 - sum(epochs)
    gc.collect()
    after = rss_bytes()
    open_cases = sum(len(sh.cases) for sh in eng.cases.values())
    pending_deadlines = sum(len(sh.heap) for sh in eng.cases.values())
    fired = open_cases - WARMUP - cases
    parts = {} if recovery else breakdown(eng)
    # without recovery: every case still in objects, all packed now (the first snapshot);
    # with it: all packed already, their bytes copied
    snap, snap_s = snapshot_all(eng)
    # an epoch that touched BATCH cases (new ones) of all those held
    first = WARMUP + cases
    eng.feed(completion_lines(catalog, first, BATCH))
    _, touched_s = snapshot_all(eng)
    dedup = sum(len(d.seen) for d in eng.dedup.values())
    return {"breakdown": parts, "rss_before": before, "rss_after": after,
            "growth": after - before, "open_cases": open_cases, "extra_cases": fired,
            "heap": pending_deadlines, "dedup_ids": dedup, "snapshot_bytes": snap,
            "snapshot_s": snap_s, "snapshot_touched_s": touched_s,
            "epoch_snapshots_s": sum(epochs), "epochs": len(epochs), "feed_s": elapsed,
            "counts": eng.counts}


def deep_size(obj: Any, seen: set[int]) -> int:
    """Bytes of ``obj`` and everything it references that ``seen`` does not hold yet."""
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    size = sys.getsizeof(obj)
    if isinstance(obj, dict):
        size += sum(deep_size(k, seen) + deep_size(v, seen) for k, v in obj.items())
    elif isinstance(obj, list | tuple | set | frozenset):
        size += sum(deep_size(v, seen) for v in obj)
    elif hasattr(obj, "__slots__"):
        for cls in type(obj).__mro__:
            for name in getattr(cls, "__slots__", ()):
                if hasattr(obj, name):
                    size += deep_size(getattr(obj, name), seen)
    elif hasattr(obj, "__dict__"):
        size += deep_size(obj.__dict__, seen)
    return size


def breakdown(eng: Any, sample: int = 5_000) -> dict[str, float]:
    """Bytes per case by part of the state, from ``sample`` cases (shared objects are
    counted once, at their first part); per-shard structures are divided by all cases."""
    parts: dict[str, int] = {}
    seen: set[int] = set()

    def add(name: str, obj: Any) -> None:
        parts[name] = parts.get(name, 0) + deep_size(obj, seen)

    n = 0
    total = sum(len(sh.cases) for sh in eng.cases.values())
    for sh in eng.cases.values():
        for key, st in list(sh.cases.items())[: max(1, sample // len(eng.cases))]:
            n += 1
            add("caseNo key", key)
            c = st.facts.completion
            add("Completion: shared item tuple and its strings (once per item)", c.item)
            add("Completion: eventId string", c.event_id)
            add("Completion object (4 slots) + its 2 ints", c)
            for name in ("pushes", "receipts", "checks", "backups", "dists"):
                add("CaseFacts: containers (created on first use)", getattr(st.facts, name))
            add("CaseFacts object (7 slots)", st.facts)
            add("written summary without its completion (shared while no receipt)", st.written)
            add("anomalies (None while there are none)", st.anomalies)
            add("CaseState object (6 slots) + next deadline", st)
    per = {k: v / n for k, v in parts.items()}
    per_shard: dict[str, int] = {}
    seen_shard: set[int] = set(seen)
    for sh in eng.cases.values():
        per_shard["deadline heap entries"] = per_shard.get("deadline heap entries", 0) + \
            deep_size(sh.heap, seen_shard)
        per_shard["KPI accumulators (per group and shard)"] = per_shard.get(
            "KPI accumulators (per group and shard)", 0) + deep_size(sh.kpi, seen_shard)
        per_shard["shard dict of cases"] = per_shard.get("shard dict of cases", 0) + \
            sys.getsizeof(sh.cases)
    for d in eng.dedup.values():
        per_shard["dedup: eventId -> digest"] = per_shard.get("dedup: eventId -> digest", 0) + \
            deep_size(d.seen, seen_shard)
    per.update({k: v / total for k, v in per_shard.items()})
    return dict(sorted(per.items(), key=lambda kv: -kv[1]))


def worker_dicts(cases: int, one: bool) -> dict[str, Any]:
    warm = [{case_no(i): None} for i in range(WARMUP)]
    gc.collect()
    before = rss_bytes()
    if one:
        held: Any = {case_no(i): None for i in range(WARMUP, WARMUP + cases)}
    else:
        held = [{case_no(i): None} for i in range(WARMUP, WARMUP + cases)]
    gc.collect()
    after = rss_bytes()
    del warm
    return {"rss_before": before, "rss_after": after, "growth": after - before,
            "objects": len(held)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=200_000, help="open cases (default 200k)")
    ap.add_argument("--worker", choices=["engine", "engine-recovery", "dicts", "dict"],
                    help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker in ("engine", "engine-recovery"):
        emit(worker_engine(args.cases, recovery=args.worker == "engine-recovery"))
        return 0
    if args.worker in ("dicts", "dict"):
        emit(worker_dicts(args.cases, one=args.worker == "dict"))
        return 0

    n = args.cases
    print(f"memory: {n:,} open cases, each in a fresh interpreter ...", flush=True)
    eng = run_worker("memory.py", ["--worker", "engine", "--cases", str(n)])
    engr = run_worker("memory.py", ["--worker", "engine-recovery", "--cases", str(n)])
    base = run_worker("memory.py", ["--worker", "dicts", "--cases", str(n)])
    one = run_worker("memory.py", ["--worker", "dict", "--cases", str(n)])
    per_m = 1_000_000 / n

    def row(name: str, growth: int) -> list[Any]:
        return [name, growth / 2**20, growth * per_m / GIB, growth / n,
                growth / base["growth"] if base["growth"] else None]

    rows = [
        row("engine state (dedup + CaseShard)", eng["growth"]),
        row("... with recovery: a snapshot every batch (cases packed until touched)",
            engr["growth"]),
        row("baseline: N dicts {caseNo: None}", base["growth"]),
        row("one dict of N caseNo keys", one["growth"]),
        row("pickled case + event-id shards (snapshot)", eng["snapshot_bytes"]),
    ]
    gib_per_m = eng["growth"] * per_m / GIB
    table(["what", "RSS growth MiB", "GiB per 1M cases", "bytes/case", "x baseline"], rows,
          title=f"\nresident memory, {n:,} open cases (extrapolated linearly to 1M)")
    table(["part of the state (sampled deep sizes)", "bytes/case"],
          [[k, v] for k, v in eng["breakdown"].items()],
          title="\nwhere it goes (sys.getsizeof, each object counted once)")
    met = gib_per_m < 1.0
    print(f"\ntarget < 1 GiB per million open cases: {gib_per_m:.3f} GiB -> {target(met)}")
    gib_per_m_r = engr["growth"] * per_m / GIB
    print(f"with recovery on (cases packed from the snapshot after their last change): "
          f"{gib_per_m_r:.3f} GiB -> {target(gib_per_m_r < 1.0)}")
    snap_per_m = eng["snapshot_s"] * per_m
    copy_per_m = engr["snapshot_s"] * per_m
    print(f"recovery snapshot of every case and event-id shard, {n:,} open cases:\n"
          f"  all cases changed since the last (each packed): {eng['snapshot_s']:.2f} s "
          f"({snap_per_m:.2f} s per million open cases)\n"
          f"  none changed (packed bytes copied): {engr['snapshot_s']:.2f} s "
          f"({copy_per_m:.2f} s per million; {copy_per_m / snap_per_m:.3f}x)\n"
          f"  an epoch that touched {BATCH:,} cases: {engr['snapshot_touched_s']:.2f} s "
          f"(their events took {engr['feed_s'] / engr['epochs']:.2f} s to apply)\n"
          f"  during the feed, a snapshot after each of {engr['epochs']} batches: "
          f"{engr['epoch_snapshots_s']:.1f} s in all, against {engr['feed_s']:.1f} s to "
          f"apply the events ({engr['epoch_snapshots_s'] / engr['feed_s']:.2f}x)")
    print(f"(open cases in state {eng['open_cases']:,}, pending deadlines {eng['heap']:,}, "
          f"event ids in dedup {eng['dedup_ids']:,}; fed in {eng['feed_s']:.1f} s)")
    write_results("memory", {
        "cases": n, "engine": eng, "engine_recovery": engr, "baseline_dicts": base,
        "one_dict": one, "snapshot_s_per_million": snap_per_m,
        "snapshot_unchanged_s_per_million": copy_per_m,
        "gib_per_million_recovery": gib_per_m_r,
        "gib_per_million": gib_per_m,
        "ratio_to_baseline": eng["growth"] / base["growth"] if base["growth"] else None,
        "targets": {"lt_1GiB_per_million": {"value": gib_per_m, "met": met}},
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
