"""The reconciliation as one nightly ClickHouse SQL batch, timed against `archwatch replay`.

The batch (the ETL a city archive centre could run instead of a stream): load
``events.jsonl`` into a chDB MergeTree table (one INSERT ... SELECT from ``file()``,
fields extracted with JSONExtract, malformed lines dropped), then compute with SQL over
the raw events, as of the workload's ``asOf``:

- MISSING_ARCHIVE / LATE_ARCHIVE per case (earliest completion by (occurredAt, eventId);
  deadline = completedAt + archiveSla; fires iff deadline < asOf; first receipt later
  than the deadline, or none),
- per (year, qym, dept, system, task) KPI counts: kpi, archived, cycle_ms_sum.

The streaming side is `archwatch replay` (the whole dataflow: every anomaly code, case
states, the event log) of the same file into a fresh store. Each side runs in a fresh
interpreter and is timed inside it (no interpreter start-up); both sides' answers are
then compared: MISSING/LATE counts and every KPI group's kpi/archived/cycle must match.

    .venv/bin/python bench/batch_baseline.py                                # 20k/60k/180k events
    .venv/bin/python bench/batch_baseline.py --sizes 1000000                # 1M events
    .venv/bin/python bench/batch_baseline.py --sizes 1000000,10000000 --no-stream
    .venv/bin/python bench/batch_baseline.py --sizes 10000000 --work DIR      # reuse DIR/w10000000
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from _common import emit, run_worker, scratch, table, write_results

# what the generator writes (measured): ~5,030 heartbeat lines + ~7.06 lines per case
FIXED_EVENTS, EVENTS_PER_CASE = 5_030, 7.06
RFC3339 = r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$"
TYPES = ("case.completed", "province.pushed", "archive.received", "archive.checked",
         "archive.backedUp", "archive.distributed", "receiver.heartbeat", "interface.error")

LOAD_SQL = """
CREATE TABLE ev ENGINE = MergeTree ORDER BY (type, case_no) AS
SELECT
    JSONExtractString(line, 'eventId') AS event_id,
    JSONExtractString(line, 'type') AS type,
    parseDateTime64BestEffort(JSONExtractString(line, 'occurredAt'), 3, 'UTC') AS occurred_at,
    JSONExtractString(line, 'caseNo') AS case_no,
    parseDateTime64BestEffortOrNull(JSONExtractString(line, 'completedAt'), 3, 'UTC')
        AS completed_at,
    JSONExtractString(line, 'taskId') AS task_id,
    JSONExtractString(line, 'qym') AS qym,
    JSONExtractString(line, 'deptCode') AS dept_code,
    JSONExtractString(line, 'systemCode') AS system_code,
    JSONExtractString(line, 'systemLevel') AS system_level,
    line AS raw
FROM file({path:String}, 'LineAsString')
WHERE isValidJSON(line)
  AND JSONType(line) = 'Object'
  AND JSONExtractString(line, 'type') IN {types:Array(String)}
  AND JSONExtractString(line, 'eventId') != ''
  AND match(JSONExtractString(line, 'occurredAt'), {rfc3339:String})
"""

# One statement per result table, as a nightly job would materialise them.
CASES_SQL = """
CREATE TABLE case_batch ENGINE = MergeTree ORDER BY case_no AS
WITH
    completions AS (
        SELECT case_no,
               argMin(tuple(completed_at, task_id, qym, dept_code, system_code, system_level),
                      tuple(occurred_at, event_id)) AS c
        FROM ev
        WHERE type = 'case.completed' AND occurred_at <= {as_of:DateTime64(3, 'UTC')}
          AND completed_at IS NOT NULL AND system_level IN ('国', '省', '市') AND case_no != ''
        GROUP BY case_no),
    receipts AS (
        SELECT case_no, min(occurred_at) AS first_at
        FROM ev
        WHERE type = 'archive.received' AND occurred_at <= {as_of:DateTime64(3, 'UTC')}
          AND JSONExtractString(raw, 'archiveNo') != ''
          AND JSONType(raw, 'meta') = 'Object'
        GROUP BY case_no)
SELECT c.case_no AS case_no,
       toUnixTimestamp64Milli(assumeNotNull(c.c.1)) AS completed_ms,
       c.c.2 AS task_id, c.c.3 AS qym, c.c.4 AS dept_code, c.c.5 AS system_code,
       c.c.6 AS system_level,
       toYear(toTimeZone(assumeNotNull(c.c.1), 'Asia/Shanghai')) AS year,
       toUnixTimestamp64Milli(r.first_at) AS first_ms,
       completed_ms + {sla_ms:Int64} AS deadline_ms,
       (first_ms IS NULL OR first_ms > deadline_ms)
           AND deadline_ms < {as_of_ms:Int64} AS missing,
       first_ms IS NOT NULL AND first_ms > deadline_ms AS late
FROM completions AS c
LEFT JOIN receipts AS r ON r.case_no = c.case_no
SETTINGS join_use_nulls = 1
"""

KPI_SQL = """
CREATE TABLE kpi_batch ENGINE = MergeTree ORDER BY (year, qym, dept_code, system_code, task_id)
AS SELECT year, qym, dept_code, system_code, task_id,
          count() AS kpi, countIf(first_ms IS NOT NULL) AS archived,
          sum(ifNull(first_ms - completed_ms, 0)) AS cycle_ms_sum,
          countIf(missing) AS missing, countIf(late) AS late
FROM case_batch
GROUP BY year, qym, dept_code, system_code, task_id
"""


def worker_batch(events: Path, db: Path, as_of: str, sla_ms: int) -> dict[str, Any]:
    from archwatch.store import open_store
    from archwatch.timeutil import parse_ts

    t0 = time.perf_counter()
    store = open_store(db)
    t_open = time.perf_counter()
    as_of_ms = parse_ts(as_of)
    as_of_text = f"{as_of_ms // 1000}.{as_of_ms % 1000:03d}"
    store.command(LOAD_SQL, {"path": str(events), "types": list(TYPES), "rfc3339": RFC3339})
    t_load = time.perf_counter()
    params = {"as_of": as_of_text, "as_of_ms": as_of_ms, "sla_ms": sla_ms}
    store.command(CASES_SQL, params)
    store.command(KPI_SQL)
    t_done = time.perf_counter()
    counts = store.query("SELECT count() AS events FROM ev")[0]
    totals = store.query("SELECT countIf(missing) AS missing, countIf(late) AS late, "
                         "count() AS cases FROM case_batch")[0]
    kpi = store.query("SELECT toString(year) AS year, qym, dept_code, system_code, task_id, "
                      "kpi, archived, cycle_ms_sum FROM kpi_batch")
    store.close()
    return {"open_s": t_open - t0, "load_s": t_load - t_open, "compute_s": t_done - t_load,
            "elapsed_s": t_done - t_open, "loaded": counts["events"], **totals,
            "kpi": _kpi_map(kpi)}


def worker_stream(events: Path, db: Path, as_of: str, receivers: Path) -> dict[str, Any]:
    from archwatch.receivers import load_registrations
    from archwatch.replay import replay
    from archwatch.settings import EngineSettings
    from archwatch.store import open_store
    from archwatch.timeutil import parse_ts

    store = open_store(db)
    settings = EngineSettings(as_of=parse_ts(as_of), receivers=load_registrations(receivers))
    t0 = time.perf_counter()
    res = replay([events], store, settings, db / "rejects.jsonl", progress=False)
    elapsed = time.perf_counter() - t0
    codes = {r["code"]: r["n"] for r in store.query(
        "SELECT code, count() AS n FROM anomaly FINAL WHERE code IN "
        "('MISSING_ARCHIVE', 'LATE_ARCHIVE') GROUP BY code")}
    cases = store.query("SELECT count() AS n FROM case_state FINAL")[0]["n"]
    kpi = store.query(
        "SELECT toString(year) AS year, qym, dept_code, system_code, task_id, sum(kpi) AS kpi,"
        " sum(archived) AS archived, sum(cycle_ms_sum) AS cycle_ms_sum FROM kpi_task FINAL"
        " GROUP BY year, qym, dept_code, system_code, task_id HAVING kpi != 0")
    store.close()
    return {"elapsed_s": elapsed, "counts": res.report(), "cases": cases,
            "missing": codes.get("MISSING_ARCHIVE", 0), "late": codes.get("LATE_ARCHIVE", 0),
            "kpi": _kpi_map(kpi)}


def _kpi_map(rows: list[dict[str, Any]]) -> dict[str, list[int]]:
    return {"|".join((r["year"], r["qym"], r["dept_code"], r["system_code"], r["task_id"])):
            [int(r["kpi"]), int(r["archived"]), int(r["cycle_ms_sum"])] for r in rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="20000,60000,180000",
                    help="comma-separated event counts (approximate; default 20k,60k,180k)")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--no-stream", dest="stream", action="store_false",
                    help="skip `archwatch replay` (for sizes too large to replay here)")
    ap.add_argument("--work", type=Path,
                    help="scratch directory to use (default: a new one); a workload already "
                         "generated there for a size is reused")
    ap.add_argument("--days-per-million", dest="days_per_million", type=float,
                    help="spread each size's completions over this many days per million "
                         "events (the same number of open cases at every size, as a longer "
                         "history would have); default: 90 days whatever the size, so a "
                         "bigger size is a denser feed")
    ap.add_argument("--worker", choices=["batch", "stream"], help=argparse.SUPPRESS)
    ap.add_argument("--events", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--db", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--as-of", dest="as_of", help=argparse.SUPPRESS)
    ap.add_argument("--receivers", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--sla-ms", dest="sla_ms", type=int, default=30 * 86_400_000,
                    help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker == "batch":
        emit(worker_batch(args.events, args.db, args.as_of, args.sla_ms))
        return 0
    if args.worker == "stream":
        emit(worker_stream(args.events, args.db, args.as_of, args.receivers))
        return 0

    from archwatch.generate import GenerateOptions, generate

    tmp = args.work or scratch("batch")
    name = ("batch_baseline" if args.days_per_million is None
            else f"batch_baseline-{args.days_per_million:g}dpm")
    sizes = [int(float(s)) for s in args.sizes.split(",") if s]
    results = []
    for size in sizes:
        cases = max(100, round((size - FIXED_EVENTS) / EVENTS_PER_CASE))
        span = 90 if args.days_per_million is None else max(
            1, round(args.days_per_million * size / 1e6))
        work = tmp / (f"w{size}" if span == 90 else f"w{size}-{span}d")
        if (work / "truth.json").exists() and (work / "events.jsonl").exists():
            print(f"size {size:,}: the workload in {work} ...", flush=True)
            truth = json.loads((work / "truth.json").read_text())
        else:
            print(f"size {size:,}: generating {cases:,} cases over {span} days ...",
                  flush=True)
            truth = generate(work, GenerateOptions(cases=cases, seed=args.seed, span_days=span))
        events = work / "events.jsonl"
        common = ["--events", str(events), "--as-of", truth["asOf"]]
        timeout = max(900.0, size / 2_000)  # the replay of 10M events takes ~20 min here
        print("  batch SQL ...", flush=True)
        shutil.rmtree(tmp / f"batch{size}", ignore_errors=True)  # a fresh store each time
        batch = run_worker("batch_baseline.py", ["--worker", "batch", "--db",
                                                 str(tmp / f"batch{size}"), *common],
                           timeout=timeout)
        stream = None
        if args.stream:
            print("  archwatch replay ...", flush=True)
            shutil.rmtree(tmp / f"stream{size}", ignore_errors=True)
            stream = run_worker("batch_baseline.py", [
                "--worker", "stream", "--db", str(tmp / f"stream{size}"),
                "--receivers", str(work / "receivers.json"), *common], timeout=timeout)
        results.append({**_compare(truth["events"], cases, truth, batch, stream),
                        "span_days": span})
        # what is measured so far survives a later size's failure
        write_results(name, {"sizes": results, "scratch": str(tmp),
                                         "partial": len(results) < len(sizes)})

    rows = []
    prev = None
    for r in results:
        b, s = r["batch"], r["stream"]
        n = r["events"]
        growth_b = growth_s = None
        if prev is not None:
            scale = n / prev["events"]
            growth_b = (b["elapsed_s"] / prev["batch"]["elapsed_s"]) / scale
            if s and prev["stream"]:
                growth_s = (s["elapsed_s"] / prev["stream"]["elapsed_s"]) / scale
        rows.append([n, r["span_days"], b["load_s"], b["compute_s"], 1e6 * b["elapsed_s"] / n,
                     s and s["elapsed_s"], s and 1e6 * s["elapsed_s"] / n,
                     s and s["elapsed_s"] / b["elapsed_s"], growth_b, growth_s,
                     r["check"]])
        prev = r
    table(["events", "days", "batch load s", "batch SQL s", "batch us/event", "replay s",
           "replay us/event", "replay x batch", "batch growth/size", "replay growth/size",
           "answers"], rows,
          title="\nnightly SQL batch (baseline) vs `archwatch replay`, same data"
                " (growth/size: time ratio to the previous size, divided by the size ratio;"
                " 1.0 = linear)")
    for r in results:
        print(f"  {r['events']:,} events: batch MISSING {r['batch']['missing']:,} "
              f"LATE {r['batch']['late']:,} cases {r['batch']['cases']:,} kpi groups "
              f"{r['batch']['kpi_groups']:,}"
              + (f"; replay MISSING {r['stream']['missing']:,} LATE {r['stream']['late']:,}"
                 f" cases {r['stream']['cases']:,}" if r["stream"] else "")
              + f"; planted (truth.json) MISSING {r['truth']['MISSING_ARCHIVE']} "
                f"LATE {r['truth']['LATE_ARCHIVE']}"
              + (f"; differences: {r['differences']}" if r["differences"] else ""))
    write_results(name, {"sizes": results, "scratch": str(tmp), "partial": False})
    return 0 if all(r["check"] in ("equal", "batch only") for r in results) else 1


def _compare(n: int, cases: int, truth: dict[str, Any], batch: dict[str, Any],
             stream: dict[str, Any] | None) -> dict[str, Any]:
    diffs: list[str] = []
    bk = batch.pop("kpi")
    batch["kpi_groups"] = len(bk)
    expected = {"MISSING_ARCHIVE": truth["summary"].get("MISSING_ARCHIVE", {}).get("total"),
                "LATE_ARCHIVE": truth["summary"].get("LATE_ARCHIVE", {}).get("total")}
    if stream is not None:
        sk = stream.pop("kpi")
        stream["kpi_groups"] = len(sk)
        for key in ("missing", "late"):
            if batch[key] != stream[key]:
                diffs.append(f"{key}: batch {batch[key]} != replay {stream[key]}")
        if bk != sk:
            keys = set(bk) | set(sk)
            bad = [k for k in keys if bk.get(k) != sk.get(k)]
            diffs.append(f"{len(bad)} KPI groups differ, e.g. {bad[0]}: batch {bk.get(bad[0])}"
                         f" replay {sk.get(bad[0])}")
    check = "batch only" if stream is None else "DIFFER" if diffs else "equal"
    return {"events": n, "cases": cases, "batch": batch, "stream": stream,
            "truth": expected, "check": check, "differences": diffs}


if __name__ == "__main__":
    sys.exit(main())

