"""What one store read of the case trace costs, beside ``SELECT 1`` in the same run.

Under 16 clients on 2 cores a page's latency is its CPU times the queue, and a chDB read
costs the same few milliseconds however little it returns plus a share per column it
reads (bench/RESULTS.md §4, session 8). This times each of the trace's reads exactly as
the API runs them (the SQL of ``api/routes/cases.py`` with ``api.deps.read_settings``),
one after another on one thread, each on case numbers not asked before in this process
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
    from archwatch.api.routes.cases import TRACE_DOCS, TRACE_EVENTS
    from archwatch.api.settings import Settings

    from archwatch.casedoc import current
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
    }
    # the trace's own work on a read's rows, timed with it (casedoc.current: the newest
    # version of each row, parsed)
    after = {TRACE_DOCS: lambda rows: current(r["doc"] for r in rows)}
    warmup = 10  # reads of each kind first, untimed: a fresh process loads each column's
    # marks and the primary index on its first read of a part (seconds at 100M cases)
    need = (args.rounds * args.per_round + warmup) * len(reads)
    # cases with an anomaly, so that every read finds rows (the SQL fill's anomalies)
    cases = [r["case_no"] for r in store.query(
        "SELECT case_no FROM case_doc WHERE kind = 1 GROUP BY case_no"
        " ORDER BY cityHash64(case_no) LIMIT {n:UInt64}", {"n": need})]
    if len(cases) < need:
        raise SystemExit(f"the store has {len(cases)} cases with anomalies; {need} needed "
                         "(fewer --rounds or --per-round)")
    wall: dict[str, list[float]] = {k: [] for k in reads}
    cpu: dict[str, float] = dict.fromkeys(reads, 0.0)
    pos = 0
    for sql in reads.values():
        for case_no in cases[pos:pos + warmup]:
            store.query(sql, {"c": case_no}, settings)
        pos += warmup
    for _ in range(args.rounds):  # interleaved, so that the machine's load falls on all
        for name, sql in reads.items():
            c0 = time.process_time()
            for case_no in cases[pos:pos + args.per_round]:
                t0 = time.perf_counter()
                rows = store.query(sql, {"c": case_no}, settings)
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
