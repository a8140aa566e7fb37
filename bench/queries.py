"""API latency on a large store: seed endpoints, drill-down levels and anomalies under
16 concurrent clients, each against /healthz measured the same way in the same run.

1. Fill (a fresh interpreter that owns the store): the project's migrations
   (archwatch.migrate.migrate on archwatch.store.open_store(dir)), then SQL only —
   INSERT ... SELECT from numbers() — N cases over the Hangzhou shape (archwatch.catalog:
   14 regions, 7,835 items with their departments and 国/省/市 systems; skewed so some
   items are busy) completed 2024-01-01 .. 2026-11-25 into ``case_state``; ``kpi_task``
   rolled up from it with one row per group and src shard (crc32(caseNo) % 32, as the
   engine writes); ``anomaly`` for ~5% of the cases.
2. `archwatch serve --db DIR` as a subprocess (uvicorn) on a free port.
3. Per endpoint, 16 threads (one httpx client each) send requests back to back with
   varied parameters; latency percentiles per endpoint, and as ratios to /healthz.

    .venv/bin/python bench/queries.py                       # 2 million cases
    .venv/bin/python bench/queries.py --cases 100000000     # the full target (long fill)
    .venv/bin/python bench/queries.py --db /tmp/bench-queries-x/db --reuse   # skip the fill
    .venv/bin/python bench/queries.py --cases 10000000 --fill-only --optimize   # size a store
    .venv/bin/python bench/queries.py --db ... --reuse --read-cache 0   # without the cache
    .venv/bin/python bench/queries.py --db ... --reuse --kpi-cube-rows 0   # KPI reads by SQL
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from _common import (
    BENCH_PASSWORD,
    BENCH_USER,
    PY,
    ROOT,
    UNLIMITED_ENV,
    api_headers,
    emit,
    ensure_bench_account,
    free_port,
    http_ok,
    percentile,
    profile_all,
    profile_top,
    run_worker,
    scratch,
    stop_process,
    table,
    target,
    wait_for,
    write_results,
)

SEED_P99_MS = 50.0
DRILL_P99_MS = 200.0
CODES = ["MISSING_ARCHIVE", "LATE_ARCHIVE", "PUSH_NOT_RECEIVED", "NOT_CHECKED", "NOT_BACKED_UP",
         "NOT_DISTRIBUTED", "DISTRIBUTION_FAILED", "CHECK_FAILED", "METADATA_MISMATCH",
         "INVALID_ARCHIVE_NO", "ORPHAN_ARCHIVE", "BACKUP_HASH_MISMATCH", "DUPLICATE_ARCHIVE",
         "DUPLICATE_RECEIPT", "ARCHIVE_NO_CONFLICT"]

ITEMS_DDL = """
CREATE TABLE bench_items (i UInt32, task_id String, task_code String, task_name String,
    dept_code String, dept_name String, qym String, area String, system_code String,
    system_name String, system_level String) ENGINE = MergeTree ORDER BY i
"""

# completed: 2024-01-01 .. 2026-11-25 (Asia/Shanghai); ~3% never received (MISSING, or
# PENDING in the last 30 days); received 4 h .. 20 d later; ~3% failed, ~1% unchecked.
CASES_SQL = """
INSERT INTO case_state (case_no, task_id, task_code, task_name, dept_code, dept_name, qym,
    area, system_code, system_name, system_level, completed_at, first_received_at,
    archive_count, status, year, src, version, is_deleted)
SELECT
    concat('HZ', formatDateTime(n.completed, '%Y%m%d', 'Asia/Shanghai'),
           leftPad(toString(n.number), 9, '0')) AS case_no,
    it.task_id, it.task_code, it.task_name, it.dept_code, it.dept_name, it.qym, it.area,
    it.system_code, it.system_name, it.system_level,
    n.completed,
    if(n.u < 0.03, NULL, n.completed + toIntervalMillisecond(n.cycle)) AS first_received_at,
    if(n.u < 0.03, 0, if(n.u > 0.995, 2, 1)) AS archive_count,
    multiIf(n.u < 0.03 AND n.completed > toDateTime64('2026-10-26 00:00:00', 3, 'UTC'),
            'PENDING', n.u < 0.03, 'MISSING', n.u < 0.06, 'ARCHIVED_FAIL', n.u < 0.07,
            'ARCHIVED_UNCHECKED', 'ARCHIVED_OK') AS status,
    toYear(n.completed, 'Asia/Shanghai') AS year,
    concat('c', leftPad(toString(CRC32(case_no) % 32), 3, '0')) AS src,
    1 AS version, 0 AS is_deleted
FROM (
    SELECT number,
           toUInt32(floor(7835 * pow((cityHash64(number, 1) % 1000003) / 1000003, 2))) AS i,
           toDateTime64('2023-12-31 16:00:00', 3, 'UTC')
               + toIntervalMillisecond(cityHash64(number, 2) % 91497600000) AS completed,
           (cityHash64(number, 3) % 100000) / 100000 AS u,
           14400000 + cityHash64(number, 4) % 1713600000 AS cycle
    FROM numbers({first:UInt64}, {count:UInt64})
) AS n
INNER JOIN bench_items AS it ON it.i = n.i
"""

KPI_SQL = """
INSERT INTO kpi_task (year, qym, area, dept_code, dept_name, system_code, system_name, task_id,
    task_code, task_name, system_level, src, kpi, archived, archived_succ, archived_fail,
    cycle_ms_sum, last_receive, last_update, version, is_deleted)
SELECT year, qym, any(area), dept_code, any(dept_name), system_code, any(system_name), task_id,
       any(task_code), any(task_name), system_level, src, count(),
       countIf(first_received_at IS NOT NULL), countIf(status = 'ARCHIVED_OK'),
       countIf(status = 'ARCHIVED_FAIL'),
       sum(ifNull(toUnixTimestamp64Milli(first_received_at)
                  - toUnixTimestamp64Milli(completed_at), 0)),
       max(first_received_at), now(), 1, 0
FROM case_state
GROUP BY year, qym, dept_code, system_code, task_id, system_level, src
"""

ANOMALY_SQL = """
INSERT INTO anomaly (anomaly_id, code, class, case_no, archive_no, receiver_id, qym, dept_code,
    system_code, task_code, opened_at, resolved_at, detail, src, version, is_deleted)
SELECT lower(hex(MD5(concat(code, case_no)))) AS anomaly_id, code,
       transform(code, {codes:Array(String)}, {classes:Array(String)}, '?') AS class,
       case_no, '', '', qym, dept_code, system_code, task_code,
       completed_at + toIntervalDay(30) AS opened_at,
       if(h % 3 = 0, NULL, completed_at + toIntervalDay(31)) AS resolved_at, '', src, 1, 0
FROM (SELECT *, cityHash64(case_no, 7) AS h,
             arrayElement({codes:Array(String)}, (intDiv(h, 20) % 15) + 1) AS code
      FROM case_state WHERE h % 20 = 0)
"""


def worker_fill(db: Path, cases: int, chunk: int, optimize: bool) -> dict[str, Any]:
    from archwatch import rollup
    from archwatch.catalog import build_catalog
    from archwatch.migrate import migrate
    from archwatch.rules import CLASS_OF_CODE
    from archwatch.store import open_store

    t0 = time.perf_counter()
    store = open_store(db)
    migrate(store)
    auth = ensure_bench_account(store)
    catalog = build_catalog(1)
    store.command("DROP TABLE IF EXISTS bench_items")
    store.command(ITEMS_DDL)
    store.insert("bench_items", [{
        "i": i, "task_id": it.task_id, "task_code": it.task_code, "task_name": it.task_name,
        "dept_code": it.dept_code, "dept_name": it.dept_name, "qym": it.qym, "area": it.area,
        "system_code": it.system_code, "system_name": it.system_name,
        "system_level": it.system_level} for i, it in enumerate(catalog)])
    for first in range(0, cases, chunk):
        t_chunk = time.perf_counter()
        store.command(CASES_SQL, {"first": first, "count": min(chunk, cases - first)})
        print(f"  cases {first + min(chunk, cases - first):,}: "
              f"{time.perf_counter() - t_chunk:.1f} s", file=sys.stderr, flush=True)
    t_cases = time.perf_counter()
    store.command(KPI_SQL)
    store.command(rollup.REBUILD)  # what the sink keeps after each kpi_task write
    t_kpi = time.perf_counter()
    store.command(ANOMALY_SQL, {"codes": CODES, "classes": [CLASS_OF_CODE[c] for c in CODES]})
    # what the shards write beside their anomalies (0014)
    store.command(f"INSERT INTO anomaly_count SELECT *, 1, 0 FROM ({rollup.COUNTS})")
    t_anom = time.perf_counter()
    store.command("DROP TABLE bench_items")
    t_opt = time.perf_counter()
    if optimize:  # what background merges reach on a store at rest (one part per table)
        for t in ("kpi_task", "kpi_item", "anomaly", "anomaly_count", "case_state",
                  "case_doc"):
            store.command(f"OPTIMIZE TABLE {t} FINAL")
    t_done = time.perf_counter()
    store.close()
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)  # chDB's threads are this process's
    return {"auth": auth, "cpu_s": usage.ru_utime + usage.ru_stime, "cases_s": t_cases - t0,
            "kpi_s": t_kpi - t_cases, "anomaly_s": t_anom - t_kpi,
            "optimize_s": t_done - t_opt, "total_s": t_done - t0, **worker_disk(db)}  # rows too


def worker_disk(db: Path) -> dict[str, Any]:
    """Active parts and bytes on disk per table, and the store directory's size."""
    from archwatch.store import open_store

    store = open_store(db)
    rows = store.query(
        "SELECT table, count() AS parts, sum(rows) AS rows, sum(bytes_on_disk) AS bytes"
        " FROM system.parts WHERE active AND database = currentDatabase()"
        " GROUP BY table ORDER BY bytes DESC")
    store.close()
    du = subprocess.run(["du", "-sb", str(db)], capture_output=True, text=True, check=False)
    return {"parts": {r["table"]: r["parts"] for r in rows},
            "rows": {r["table"]: r["rows"] for r in rows},
            "table_bytes": {r["table"]: r["bytes"] for r in rows},
            "dir_bytes": int(du.stdout.split()[0]) if du.returncode == 0 else None}


def worker_params(db: Path) -> dict[str, Any]:
    """Parameters the clients draw from: what the store holds (read before serving)."""
    from archwatch.store import open_store

    store = open_store(db, read_only=True)
    q = store.query
    out = {
        "depts": [[r["qym"], r["dept_code"]] for r in q(
            "SELECT DISTINCT qym, dept_code FROM kpi_task WHERE year = 2025")],
        "items": [[r["task_id"], r["qym"], r["dept_code"]] for r in q(
            "SELECT DISTINCT task_id, qym, dept_code FROM kpi_task WHERE year = 2025")],
        "systems": [r["system_code"] for r in q("SELECT DISTINCT system_code FROM kpi_task")],
        "system_items": [[r["task_id"], r["system_code"]] for r in q(
            "SELECT DISTINCT task_id, system_code FROM kpi_task WHERE year = 2025")],
        "cases": [r["case_no"] for r in q(
            "SELECT case_no FROM anomaly WHERE case_no != '' LIMIT 2000")],
    }
    store.close()
    return out


def worker_profile(db: Path, n: int, out: Path, only: list[str]) -> dict[str, Any]:
    """Every endpoint (or those ``only`` names) ``n`` times in-process under cProfile,
    serially. The app runs on this thread (ASGI transport; FastAPI's thread pool replaced
    by inline calls) so that the profile sees the route, the auth, the SQL and the
    serialisation."""
    import asyncio
    import cProfile

    import anyio.to_thread
    import httpx
    from archwatch.api.app import create_app
    from archwatch.api.settings import Settings

    from archwatch.store import open_store

    async def inline(func: Any, *args: Any, **_kw: Any) -> Any:
        return func(*args)

    anyio.to_thread.run_sync = inline  # type: ignore[assignment]
    params = worker_params(db)
    store = open_store(db)
    os.environ.update(UNLIMITED_ENV)
    app = create_app(Settings(db=db), store=store)
    serial: dict[str, float] = {}
    failed: dict[str, int] = {}
    sql_time: dict[str, list[float]] = {}
    measuring = [False]
    plain = store.query_text

    def timed(sql: str, fmt: str, params: Any = None, settings: Any = None) -> str:
        t0 = time.perf_counter()
        try:
            return plain(sql, fmt, params, settings)
        finally:
            if measuring[0]:
                frame = sys._getframe(1)
                while frame is not None and (not frame.f_code.co_filename.startswith(str(ROOT))
                                             or frame.f_code.co_filename.endswith("store.py")):
                    frame = frame.f_back
                where = "?" if frame is None else (
                    f"{Path(frame.f_code.co_filename).relative_to(ROOT)}:{frame.f_code.co_name}")
                acc = sql_time.setdefault(where, [0, 0.0])
                acc[0] += 1
                acc[1] += time.perf_counter() - t0

    store.query_text = timed  # type: ignore[method-assign]

    async def go() -> None:
        async with app.router.lifespan_context(app), httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://bench") as c:
            r = await c.post("/api/v1/auth/login",
                             json={"username": BENCH_USER, "password": BENCH_PASSWORD})
            if r.status_code == 200:
                c.headers["Authorization"] = f"Bearer {r.json()['accessToken']}"
            rng = random.Random(7)
            for _name, _kind, make in eps:
                await c.get(make(rng))
            prof = cProfile.Profile()
            for name, _kind, make in eps:
                lat = []
                for _ in range(n):
                    path = make(rng)
                    prof.enable()
                    measuring[0] = True
                    t0 = time.perf_counter()
                    resp = await c.get(path)
                    lat.append((time.perf_counter() - t0) * 1000)
                    if resp.status_code != 200:
                        failed[name] = failed.get(name, 0) + 1
                    measuring[0] = False
                    prof.disable()
                serial[name] = percentile(lat, 50)
            prof.dump_stats(str(out))

    eps = selected(endpoints(params), only)
    asyncio.run(go())
    store.close()
    total = len(eps) * n
    sql = sorted(({"caller": k, "queries": v[0], "ms_per_request": 1000 * v[1] / total,
                   "ms_per_query": 1000 * v[1] / v[0]} for k, v in sql_time.items()),
                 key=lambda r: -r["ms_per_request"])
    return {"serial_ms": serial, "sql": sql, "failed": failed}


def endpoints(p: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """(name, kind, rng -> path) for every endpoint measured."""
    def year(r: random.Random) -> int:
        return r.choice([2024, 2025, 2026])

    def dept(r: random.Random) -> tuple[str, str]:
        return tuple(r.choice(p["depts"]))  # type: ignore[return-value]

    def item(r: random.Random) -> str:
        t, qym, d = r.choice(p["items"])
        return f"/api/v1/drill/items/{t}/cases?year={year(r)}&qym={qym}&deptCode={d}"

    def system_item(r: random.Random) -> str:
        t, s = r.choice(p["system_items"])
        return f"/api/v1/drill/items/{t}/cases?year={year(r)}&systemCode={s}"

    return [
        ("/healthz", "baseline", lambda r: "/healthz"),
        ("/gdtjapi/charts/taskArchiveList", "seed",
         lambda r: "/gdtjapi/charts/taskArchiveList?qym={}&deptCode={}&year={}".format(
             *dept(r), year(r))),
        ("/gdtjapi/charts/sysView", "seed",
         lambda r: f"/gdtjapi/charts/sysView?year={year(r)}" + (
             f"&systemCode={r.choice(p['systems'])}" if r.random() < 0.5 else "")),
        ("/api/v1/drill/regions", "drill", lambda r: f"/api/v1/drill/regions?year={year(r)}"),
        ("/api/v1/drill/regions/{qym}/departments", "drill",
         lambda r: f"/api/v1/drill/regions/{dept(r)[0]}/departments?year={year(r)}"),
        ("/api/v1/drill/regions/{qym}/departments/{dept}/items", "drill",
         lambda r: "/api/v1/drill/regions/{}/departments/{}/items?year={}".format(
             *dept(r), year(r))),
        ("/api/v1/drill/items/{taskId}/cases", "drill", item),
        ("/api/v1/drill/systems/{systemCode}/items", "drill",
         lambda r: f"/api/v1/drill/systems/{r.choice(p['systems'])}/items?year={year(r)}"),
        ("/api/v1/drill/items/{taskId}/cases?systemCode", "drill", system_item),
        ("/api/v1/cases/{caseNo}", "drill",
         lambda r: f"/api/v1/cases/{r.choice(p['cases'])}"),
        ("/api/v1/anomalies", "drill",
         lambda r: r.choice([
             "/api/v1/anomalies",
             f"/api/v1/anomalies?qym={dept(r)[0]}&status=open",
             f"/api/v1/anomalies?code={r.choice(CODES)}",
             f"/api/v1/anomalies?caseNo={r.choice(p['cases'])}",
         ])),
    ]


def selected(eps: list[Any], only: list[str]) -> list[Any]:
    """The endpoints whose name contains one of ``only`` (all when empty), and always
    ``/healthz``, the baseline."""
    return [e for e in eps if e[0] == "/healthz" or not only or any(t in e[0] for t in only)]


LOADGEN_SRC = ROOT / "bench" / "loadgen"
LOADGEN_BIN = ROOT / "bench" / ".bin" / "loadgen"


def native_client() -> Path | None:
    """bench/loadgen (Go) built once into bench/.bin, or None without a Go toolchain.
    Rebuilt when its source is newer than the binary."""
    import shutil

    go = shutil.which("go") or ("/usr/local/go/bin/go"
                                if Path("/usr/local/go/bin/go").exists() else None)
    src = LOADGEN_SRC / "main.go"
    if LOADGEN_BIN.exists() and LOADGEN_BIN.stat().st_mtime >= src.stat().st_mtime:
        return LOADGEN_BIN
    if go is None:
        return None
    LOADGEN_BIN.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([go, "build", "-o", str(LOADGEN_BIN), "."], cwd=LOADGEN_SRC, check=True,
                   env={**os.environ, "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local"})
    return LOADGEN_BIN


def hammer(base: str, headers: dict[str, str], make: Any, clients: int, per_client: int,
           seed: int, seen: set[str] | None = None, loadgen: Path | None = None
           ) -> dict[str, Any]:
    """``clients`` clients, each sending ``per_client`` requests back to back: goroutines
    of ``loadgen`` when given, else Python threads (one httpx client each). ``seen``:
    paths asked before in this run (the server's read cache can answer a repeat: the
    share of repeats is reported)."""
    plans = []
    for k in range(clients):
        rng = random.Random(seed * 1000 + k)
        plans.append([make(rng) for _ in range(per_client)])
    if loadgen is not None:
        lat, errors, wall = _native(loadgen, base, headers, plans)
    else:
        lat, errors, wall = _threads(base, headers, plans)
    seen = set() if seen is None else seen
    paths = [p for plan in plans for p in plan]
    kinds: dict[str, int] = {}
    for e in errors:
        kinds[e.split(" ", 1)[0]] = kinds.get(e.split(" ", 1)[0], 0) + 1
    repeats = sum(1 for p in paths if p in seen)
    new = set(paths) - seen
    repeats += len(paths) - repeats - len(new)  # asked twice within this pass
    seen.update(paths)
    return {"n": len(lat), "errors": len(errors), "error_kinds": kinds,
            "repeat_share": repeats / len(paths) if paths else None,
            "error_sample": errors[:2],
            "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99),
            "max_ms": max(lat) if lat else None, "rps": len(lat) / wall if wall else None}


def _native(loadgen: Path, base: str, headers: dict[str, str], plans: list[list[str]]
            ) -> tuple[list[float], list[str], float]:
    out = subprocess.run([str(loadgen)], input=json.dumps(
        {"base": base, "headers": headers, "paths": plans}).encode(), capture_output=True,
        check=True, timeout=3600)
    res = json.loads(out.stdout)
    lat, errors = [], []
    for r in res["results"]:
        if r.get("error"):
            errors.append(f"transport {r['path']}: {r['error']}")
        elif r["status"] == 200:
            lat.append(r["ms"])
        else:
            errors.append(f"{r['status']} {r['path']}: {r.get('body', '')}")
    return lat, errors, res["wall_s"]


def _threads(base: str, headers: dict[str, str], plans: list[list[str]]
             ) -> tuple[list[float], list[str], float]:
    import httpx

    lat: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(len(plans))

    def client(plan: list[str]) -> None:
        mine, bad = [], []
        with httpx.Client(base_url=base, headers=headers, timeout=60) as c:
            try:
                c.get("/healthz")  # connect before the clock starts
            finally:
                start.wait()
            for path in plan:
                t0 = time.perf_counter()
                try:
                    r = c.get(path)
                except httpx.HTTPError as exc:
                    bad.append(f"{type(exc).__name__} {path}: {exc}")
                    continue
                dt = time.perf_counter() - t0
                if r.status_code == 200:
                    mine.append(dt * 1000)
                else:
                    bad.append(f"{r.status_code} {path}: {r.text[:200]}")
        with lock:
            lat.extend(mine)
            errors.extend(bad)

    threads = [threading.Thread(target=client, args=(plan,)) for plan in plans]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return lat, errors, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=2_000_000)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=8, help="requests per client per endpoint")
    ap.add_argument("--chunk", type=int, default=10_000_000, help="cases per INSERT")
    ap.add_argument("--db", type=Path, help="store directory (default: a new /tmp/bench-*)")
    ap.add_argument("--reuse", action="store_true", help="use --db as filled before")
    ap.add_argument("--serial", type=int, default=5,
                    help="requests per endpoint of the one-client pass")
    ap.add_argument("--optimize", action="store_true",
                    help="merge each table to one part after the fill (timed apart)")
    ap.add_argument("--fill-only", action="store_true", help="fill (and size) the store, no API")
    ap.add_argument("--read-cache", type=int, default=None,
                    help="ARCHWATCH_READ_CACHE_ENTRIES for the server (0: cache off)")
    ap.add_argument("--client", choices=("auto", "go", "python"), default="auto",
                    help="load generator: bench/loadgen (Go; auto: when a Go toolchain is "
                         "there) or Python threads with httpx (~3 ms of CPU a request here)")
    ap.add_argument("--read-max-threads", type=int, default=None,
                    help="the server's ARCHWATCH_READ_MAX_THREADS (default: the product's)")
    ap.add_argument("--only", action="append", default=[], metavar="TEXT",
                    help="run only the endpoints whose name contains TEXT (repeatable; "
                         "/healthz, the baseline, always runs)")
    ap.add_argument("--kpi-cube-rows", type=int, default=None,
                    help="ARCHWATCH_KPI_CUBE_ROWS for the server (0: KPI reads go to the store)")
    ap.add_argument("--profile", action="store_true",
                    help="also profile every endpoint in-process and list the hot spots")
    ap.add_argument("--worker", choices=["fill", "params", "profile", "disk"],
                    help=argparse.SUPPRESS)
    ap.add_argument("--profile-out", dest="profile_out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker == "fill":
        emit(worker_fill(args.db, args.cases, args.chunk, args.optimize))
        return 0
    if args.worker == "disk":
        emit(worker_disk(args.db))
        return 0
    if args.worker == "params":
        emit(worker_params(args.db))
        return 0
    if args.worker == "profile":
        emit(worker_profile(args.db, args.requests, args.profile_out, args.only))
        return 0

    db = args.db or scratch("queries") / "db"
    fill: dict[str, Any] = {}
    if not args.reuse:
        print(f"queries: filling {db} with {args.cases:,} cases (SQL) ...", flush=True)
        fill = run_worker("queries.py", ["--worker", "fill", "--db", str(db), "--cases",
                                         str(args.cases), "--chunk", str(args.chunk)]
                          + (["--optimize"] if args.optimize else []), timeout=6 * 3600)
        print(f"  filled in {fill['total_s']:.1f} s: rows {fill['rows']}, "
              f"active parts {fill['parts']}", flush=True)
        n_m = fill["rows"]["case_state"] / 1e6
        active = sum(fill["table_bytes"].values())
        fill["per_million_cases"] = {
            "fill_s": (fill["total_s"] - fill["optimize_s"]) / n_m,
            "active_bytes": active / n_m,
            # the directory also holds parts a merge replaced, until they expire (8 min)
            "dir_bytes": fill["dir_bytes"] / n_m if fill["dir_bytes"] else None,
            "table_bytes": {t: b / n_m for t, b in fill["table_bytes"].items()}}
        fill["per_million_cases"]["cpu_s"] = fill["cpu_s"] / n_m
        print(f"  per million cases: fill {fill['per_million_cases']['fill_s']:.1f} s "
              f"({fill['cpu_s'] / n_m:.1f} CPU s, fill and optimize), "
              f"disk {active / n_m / 2**20:.1f} MiB (active parts; "
              f"{fill['dir_bytes'] / n_m / 2**20:.1f} MiB the whole directory), "
              f"optimize {fill['optimize_s']:.1f} s in all", flush=True)
        if args.fill_only:
            write_results(f"queries-fill-{args.cases}", {"cases": args.cases, "db": str(db),
                                                         "fill": fill})
            return 0
    else:
        fill = {"reused": True, **run_worker("queries.py", ["--worker", "disk", "--db", str(db)])}
        # a reused store names its results by what it holds, not by the --cases default
        args.cases = int(fill.get("rows", {}).get("case_state") or args.cases)
    params = run_worker("queries.py", ["--worker", "params", "--db", str(db)])
    loadgen = None if args.client == "python" else native_client()
    if args.client == "go" and loadgen is None:
        raise SystemExit("queries: --client go needs a Go toolchain (go on PATH)")
    print(f"queries: clients are {'bench/loadgen (Go)' if loadgen else 'Python threads'}",
          flush=True)

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = db.parent / "serve.log"
    proc = subprocess.Popen(
        [PY, "-m", "archwatch.cli", "serve", "--db", str(db), "--port", str(port)],
        cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT,
        env={**os.environ, **UNLIMITED_ENV, **({} if args.read_cache is None else {
            "ARCHWATCH_READ_CACHE_ENTRIES": str(args.read_cache)}), **(
            {} if args.kpi_cube_rows is None else {
                "ARCHWATCH_KPI_CUBE_ROWS": str(args.kpi_cube_rows)}), **(
            {} if args.read_max_threads is None else {
                "ARCHWATCH_READ_MAX_THREADS": str(args.read_max_threads)})})
    results: dict[str, Any] = {}
    try:
        wait_for(lambda: http_ok(f"{base}/healthz") or proc.poll() is not None, 120,
                 what="archwatch serve")
        if proc.poll() is not None:
            raise RuntimeError(f"archwatch serve exited: {log.read_text()[-2000:]}")
        headers = api_headers(base)
        eps = selected(endpoints(params), args.only)
        import httpx

        seen: set[str] = set()
        with httpx.Client(base_url=base, headers=headers, timeout=60) as c:  # warm caches
            rng = random.Random(0)
            for _name, _kind, make in eps:
                for _ in range(3):
                    path = make(rng)
                    seen.add(path)
                    c.get(path)
        serial = {}
        for i, (name, _kind, make) in enumerate(eps):
            serial[name] = hammer(base, headers, make, 1, args.serial, seed=100 + i, seen=seen,
                                  loadgen=loadgen)
        for i, (name, _kind, make) in enumerate(eps):
            print(f"  {args.clients} clients x {args.requests}: {name} ...", flush=True)
            results[name] = hammer(base, headers, make, args.clients, args.requests, seed=i,
                                   seen=seen, loadgen=loadgen)
            results[name]["serial_p50_ms"] = serial[name]["p50_ms"]
        # the baseline once more at the end: did the machine change under us?
        results["/healthz (again, at the end)"] = hammer(
            base, headers, eps[0][2], args.clients, args.requests, seed=99, loadgen=loadgen)
    finally:
        stop_process(proc, 30)
    server_errors: dict[str, int] = {}
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("archwatch.store.StoreError:"):
            msg = line.split("DB::Exception:", 1)[-1].strip()
            server_errors[msg] = server_errors.get(msg, 0) + 1

    base_p50 = results["/healthz"]["p50_ms"]
    base_p99 = results["/healthz"]["p99_ms"]
    kinds = {name: kind for name, kind, _ in endpoints(params)}
    rows = []
    verdict: dict[str, Any] = {}
    for name, r in results.items():
        kind = kinds.get(name, "baseline")
        limit = SEED_P99_MS if kind == "seed" else DRILL_P99_MS if kind == "drill" else None
        met = None if limit is None else r["p99_ms"] < limit and not r["errors"]
        verdict[name] = {"kind": kind, "limit_p99_ms": limit, "met": met, **r,
                         "p50_x_healthz": r["p50_ms"] / base_p50,
                         "p99_x_healthz": r["p99_ms"] / base_p99}
        rows.append([name, kind, r["n"], r["errors"], r.get("serial_p50_ms"),
                     r["repeat_share"], r["p50_ms"], r["p99_ms"],
                     r["p50_ms"] / base_p50, r["p99_ms"] / base_p99, r["rps"],
                     f"p99 < {limit:.0f} ms: {target(met)}" if limit else ""])
    rows_total = fill.get("rows", {})

    def count(table_name: str, default: Any = None) -> str:
        v = rows_total.get(table_name, default)
        return f"{v:,}" if isinstance(v, int) else "?"

    table(["endpoint", "kind", "requests", "errors", "1 client p50", "repeats", "p50 ms",
           "p99 ms",
           "p50 x healthz",
           "p99 x healthz", "req/s", "target"], rows,
          title=f"\nAPI latency, {args.clients} concurrent clients "
                f"({'Go' if loadgen else 'Python'}), store of "
                f"{count('case_state', args.cases)} cases / "
                f"{count('kpi_task')} kpi_task rows / {count('anomaly')} anomalies")
    for name, r in results.items():
        if r["errors"]:
            print(f"errors on {name}: {r['error_kinds']}, e.g. {r['error_sample'][0][:300]}")
    if server_errors:
        print("server-side store errors (serve.log):")
        for msg, n in sorted(server_errors.items(), key=lambda kv: -kv[1]):
            print(f"  {n:>6}  {msg}")
    hot: dict[str, Any] = {}
    if args.profile:
        print("\nprofiling each endpoint in-process (TestClient, serial, cProfile) ...",
              flush=True)
        prof = db.parent / "api.prof"
        out = run_worker("queries.py", ["--worker", "profile", "--db", str(db), "--requests",
                                        str(args.requests), "--profile-out", str(prof)]
                         + [a for t in args.only for a in ("--only", t)])
        if out["failed"]:
            print(f"  failed during profiling (serial): {out['failed']}")
        hot = {"serial_ms": out["serial_ms"], "sql": out["sql"], "failed": out["failed"],
               "product": profile_top(prof, key="cum_s"), "all": profile_all(prof)}
        table(["store query issued by", "queries", "ms per request (avg)", "ms per query"],
              [[h["caller"], h["queries"], h["ms_per_request"], h["ms_per_query"]]
               for h in hot["sql"]],
              title="\ntime in chDB by calling product function (serial, all endpoints)")
        table(["product function (cumulative time)", "calls", "own s", "cum s"],
              [[h["function"], h["calls"], h["own_s"], h["cum_s"]] for h in hot["product"]],
              title="\nhot spots in product code (all endpoints, serial)")
        table(["any function (own time)", "calls", "own s", "cum s"],
              [[h["function"], h["calls"], h["own_s"], h["cum_s"]] for h in hot["all"]],
              title="\nhot spots overall")
    write_results(f"queries-{args.cases}" + (f"-cache{args.read_cache}"
                                             if args.read_cache is not None else "")
                  + (f"-cube{args.kpi_cube_rows}" if args.kpi_cube_rows is not None else "")
                  + (f"-threads{args.read_max_threads}"
                     if args.read_max_threads is not None else "")
                  + ("-only" if args.only else ""),
                  {"cases": args.cases, "clients": args.clients, "read_cache": args.read_cache,
                   "kpi_cube_rows": args.kpi_cube_rows, "only": args.only,
                   "read_max_threads": args.read_max_threads,
                   "client": "go" if loadgen else "python",
                   "requests_per_client": args.requests, "db": str(db),
                   "fill": fill, "auth": bool(headers), "endpoints": verdict,
                   "server_errors": server_errors, "profile": hot})
    return 0


if __name__ == "__main__":
    sys.exit(main())
