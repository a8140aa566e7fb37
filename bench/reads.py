"""What one store read of the case trace and of an item's case page costs, beside
``SELECT 1`` in the same run.

Under 16 clients on 2 cores a page's latency is its CPU times the queue, and a chDB read
costs the same few milliseconds however little it returns plus a share per column it
reads (bench/RESULTS.md §4, session 8). This times each of the trace's reads, and the
item case page's for both chains, exactly as the API runs them (the SQL of
``api/routes/cases.py`` and ``api/routes/stats.py`` with ``api.deps.read_settings``),
one after another on one thread, each on case numbers (items) not asked before in this process
(ClickHouse's query condition cache makes a repeated lookup look 3-5x cheaper than it
is), after a few untimed reads of each kind, and reports wall p50/p90 and the process's
CPU per read, each also as a ratio to ``SELECT 1``'s CPU. The process's CPU includes chDB's
background merges, so it first waits for the store's merges to end (a freshly migrated
store merges for minutes).

    .venv/bin/python bench/queries.py --fill-only --db /tmp/q   # a store to read
    .venv/bin/python bench/reads.py --db /tmp/q
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from _common import percentile, table, write_results

READS_PER_ROUND = 40


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", type=Path, required=True, help="a filled store directory")
    ap.add_argument("--rounds", type=int, default=3,
                    help="rounds; each times every read on fresh case numbers")
    ap.add_argument("--per-round", type=int, default=READS_PER_ROUND,
                    help="reads of each kind per round")
    args = ap.parse_args()

    from archwatch.api.deps import read_settings
    from archwatch.api.queries import where_of
    from archwatch.api.routes.cases import TRACE_DOCS, TRACE_EVENTS
    from archwatch.api.routes.stats import Order, item_page_sql
    from archwatch.api.settings import Settings

    from archwatch.casedoc import current
    from archwatch.lookups import ITEM_PREFIX_IN, item_prefix_sets
    from archwatch.store import open_store

    store = open_store(args.db)
    settings = read_settings(store, Settings())
    waited = time.monotonic()
    while merging := store.query("SELECT count() AS n FROM system.merges")[0]["n"]:
        if time.monotonic() - waited > 3600:
            raise SystemExit(f"{merging} merges still running after an hour")
        print(f"waiting for {merging} merge(s) to end ...", flush=True)
        time.sleep(10)
    reads = {
        "SELECT 1 (baseline)": "SELECT {c:String} AS c",
        "trace: state and anomalies (case_doc)": TRACE_DOCS,
        "trace: events": TRACE_EVENTS,
        # (before 0018 the state and the anomalies were two FINAL reads of 0017's copies,
        # 11-17 and 9-12 ms at 100M cases: bench/RESULTS.md section 4, session 9)
        # an item's case page as the API reads it with the KPI cube loaded (the total from
        # the cube), sorted by case number: both chains' filters
        "item cases (region chain)": item_page_sql(
            where_of({"taskId": "", "year": 0, "qym": "", "deptCode": ""})[0], "caseNo",
            Order.asc, True, 20, 0),
        "item cases (system chain)": item_page_sql(
            where_of({"taskId": "", "year": 0, "systemCode": ""})[0] + " AND "
            + ITEM_PREFIX_IN, "caseNo", Order.asc, True, 20, 0),
    }
    # the region chain's read as it was before session 10, reading in order (the default)
    reads["item cases (region chain), read in order"] = reads[
        "item cases (region chain)"].replace("optimize_read_in_order = 0",
                                             "optimize_read_in_order = 1")
    # the trace's own work on a read's rows, timed with it (casedoc.current: the newest
    # version of each row, parsed)
    after = {TRACE_DOCS: lambda rows: current(r["doc"] for r in rows)}
    warmup = 10  # reads of each kind first, untimed: a fresh process loads each column's
    # marks and the primary index on its first read of a part (seconds at 100M cases)
    per_kind = args.rounds * args.per_round + warmup
    need = per_kind * len(reads)
    # cases with an anomaly, so that every read finds rows (the SQL fill's anomalies)
    cases = [r["case_no"] for r in store.query(
        "SELECT case_no FROM case_doc WHERE kind = 1 GROUP BY case_no"
        " ORDER BY cityHash64(case_no) LIMIT {n:UInt64}", {"n": need})]
    if len(cases) < need:
        raise SystemExit(f"the store has {len(cases)} cases with anomalies; {need} needed "
                         "(fewer --rounds or --per-round)")
    # items (with the region and system of each), in an order unrelated to their keys,
    # not the same for two kinds of read; the system chain's key prefixes as the API's
    # cube gives them (not timed)
    kinds = [name for name in reads if name.startswith("item cases")]
    found = store.query(
        "SELECT year, qym, dept_code, task_id, system_code FROM kpi_item FINAL"
        " ORDER BY cityHash64(task_id, qym, dept_code, year) LIMIT {n:UInt64}",
        {"n": len(kinds) * per_kind})
    if len(found) < len(kinds) * per_kind:
        raise SystemExit(f"the store has {len(found)} items; {len(kinds) * per_kind} needed")
    params: dict[str, list[dict[str, Any]]] = {}
    for k, name in enumerate(reads):
        if name in kinds:
            i = kinds.index(name)
            items = found[i * per_kind:(i + 1) * per_kind]
            params[name] = [
                {"taskId": r["task_id"], "year": r["year"], "qym": r["qym"],
                 "deptCode": r["dept_code"]} if "region" in name else
                {"taskId": r["task_id"], "year": r["year"], "systemCode": r["system_code"],
                 **item_prefix_sets(store, r["task_id"], r["year"])}
                for r in items]
        else:
            params[name] = [{"c": c} for c in cases[k * per_kind:(k + 1) * per_kind]]
    wall: dict[str, list[float]] = {k: [] for k in reads}
    cpu: dict[str, float] = dict.fromkeys(reads, 0.0)
    for name, sql in reads.items():
        for p in params[name][:warmup]:
            store.query(sql, p, settings)
    pos = warmup
    for _ in range(args.rounds):  # interleaved, so that the machine's load falls on all
        for name, sql in reads.items():
            c0 = time.process_time()
            for p in params[name][pos:pos + args.per_round]:
                t0 = time.perf_counter()
                rows = store.query(sql, p, settings)
                if sql in after:
                    after[sql](rows)
                wall[name].append((time.perf_counter() - t0) * 1000)
            cpu[name] += (time.process_time() - c0) * 1000
        pos += args.per_round
    n = args.rounds * args.per_round
    base = cpu["SELECT 1 (baseline)"] / n
    rows: list[list[Any]] = []
    out: dict[str, Any] = {}
    for name in reads:
        per = cpu[name] / n
        rows.append([name, n, round(percentile(wall[name], 50), 2),
                     round(percentile(wall[name], 90), 2), round(per, 2), round(per / base, 2)])
        out[name] = {"reads": n, "p50_ms": percentile(wall[name], 50),
                     "p90_ms": percentile(wall[name], 90), "cpu_ms": per,
                     "cpu_x_baseline": per / base}
    trace = sum(cpu[k] for k in reads if k.startswith("trace:")) / n
    print(table(["read", "reads", "p50 ms", "p90 ms", "CPU ms", "CPU x SELECT 1"], rows,
                title=f"store reads, one thread, settings {settings}"))
    print(f"\nthe trace's reads together: {trace:.1f} ms of CPU ({trace / base:.1f}x SELECT 1)")
    write_results("reads", {"db": str(args.db), "settings": settings, "reads": out,
                            "trace_cpu_ms": trace, "trace_cpu_x_baseline": trace / base})


if __name__ == "__main__":
    main()
