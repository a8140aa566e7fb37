"""`archwatch demo`: generate a modest workload, replay it, and show what was found."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

from archwatch import report
from archwatch.generate import GenerateOptions, generate
from archwatch.kpi import rate, time_diff_days
from archwatch.receivers import load_registrations
from archwatch.replay import replay
from archwatch.rules import CLASS_OF_CODE
from archwatch.settings import EngineSettings
from archwatch.store import open_store
from archwatch.timeutil import parse_ts


def run_demo(root: Path, cases: int = 20_000, seed: int = 7) -> int:
    tty = sys.stderr.isatty()
    work, db = root / "workload", root / "db"
    print(f"1/3 generating {cases:,} cases (seed {seed}) into {work}/ ...", flush=True)
    truth = generate(work, GenerateOptions(cases=cases, seed=seed, anomaly_rate=0.08),
                     progress=tty)
    if db.exists():
        shutil.rmtree(db)
    settings = EngineSettings(as_of=parse_ts(truth["asOf"]),
                              receivers=load_registrations(work / "receivers.json"))
    print(f"2/3 replaying {truth['events']:,} events as of {truth['asOf']} into {db}/ ...",
          flush=True)
    store = open_store(db)
    t0 = time.perf_counter()
    try:
        res = replay([work / "events.jsonl"], store, settings, root / "rejects.jsonl",
                     progress=tty)
        elapsed = time.perf_counter() - t0
        print(json.dumps(res.report()))
        print(f"    {truth['events'] / elapsed:,.0f} events/s")
        print("3/3 results\n")
        summary = report.summary(store)
        print(f"{'code':<22}{'class':<6}{'total':>8}{'open':>8}")
        for code, s in summary.items():
            print(f"{code:<22}{CLASS_OF_CODE[code]:<6}{s['total']:>8}{s['open']:>8}")
        ok = summary == truth["summary"]
        print(f"\nanomaly summary {'matches' if ok else 'DIFFERS FROM'} the workload's ground truth")
        rows = store.query(
            "SELECT toString(year) AS year, qym, sum(kpi) AS kpi, sum(archived) AS archived,"
            " sum(archived_fail) AS fail, sum(cycle_ms_sum) AS cycle FROM kpi_task FINAL"
            " GROUP BY year, qym ORDER BY year, qym LIMIT 8")
        print(f"\n{'year':<6}{'qym':<8}{'cases':>8}{'归档率':>9}{'周期(天)':>9}{'错误率':>9}")
        for r in rows:
            print(f"{r['year']:<6}{r['qym']:<8}{r['kpi']:>8}"
                  f"{rate(r['archived'], r['kpi']):>10.1%}"
                  f"{time_diff_days(r['cycle'], r['archived']):>10.2f}"
                  f"{rate(r['fail'], r['archived']):>10.1%}")
    finally:
        store.close()
    print(f"\nexplore: .venv/bin/archwatch sql --db {db} "
          "\"SELECT status, count() FROM case_state FINAL GROUP BY status\"")
    return 0 if ok else 1
