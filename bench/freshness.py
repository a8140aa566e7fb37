"""Freshness: from a planted anomaly's deadline to its row being visible through the API,
under a steady produce rate, with /healthz round trips in the same run as the baseline.

A generated workload (archwatch.generate) is produced to fresh topics at a steady rate
(default 2,000 events/s for 30 s) and re-timed on the way: every event's occurredAt is
the wall-clock moment it is sent, a case's completedAt is the moment its case.completed
is sent (receipts' meta.completedAt and archive-number years follow, so nothing but the
planted anomalies and the compressed timeline differs from the workload), and exact
redeliveries stay exact. `archwatch up` (dataflow + API in one process, a fresh store,
--no-recovery unless --recovery) runs with short deadlines: --archive-sla PT2S
--lateness PT0S.

The cases planted with a MISSING_ARCHIVE (truth.json: kinds "missing" and "late") are
the probes: deadline = the moment their completion was sent + archiveSla. A poller asks
/api/v1/anomalies?caseNo=...&code=MISSING_ARCHIVE for each probe past its deadline until
the row is there (--poll list: one list request, openedFrom the earliest due deadline, for
all of them); freshness = response time of the first answer holding it - deadline, and
its lower bound the moment the last answer without it was asked for. Between probes it
times GET /healthz: the API's own round trip, the baseline.

    .venv/bin/python bench/freshness.py                     # 2,000/s for 30 s
    .venv/bin/python bench/freshness.py --rate 10000        # 10,000/s for 30 s
    .venv/bin/python bench/freshness.py --archive-sla PT10S # the workload's P30D, compressed
    .venv/bin/python bench/freshness.py --recovery          # the product's default: recovery on
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from _common import (
    PY,
    ROOT,
    UNLIMITED_ENV,
    api_headers,
    emit,
    ensure_bench_account,
    free_port,
    http_ok,
    percentile,
    run_worker,
    scratch,
    stop_process,
    table,
    wait_for,
    write_results,
)

BROKERS = "127.0.0.1:19092"
# what the generator writes (measured): ~5,030 heartbeat lines + ~7.06 lines per case
FIXED_EVENTS, EVENTS_PER_CASE = 5_030, 7.06
ARCHIVE_NO = re.compile(r"^(\d{6}-\d{2}-\d{5}-\d{3}-)(\d{4})(-.*)$")


def worker_prepare(db: Path) -> dict[str, Any]:
    """Create the store (migrations) and, when the API has accounts, the bench reader."""
    from archwatch.migrate import migrate
    from archwatch.store import open_store

    store = open_store(db)
    migrate(store)
    auth = ensure_bench_account(store)
    store.close()
    return {"auth": auth}


def worker_versions(db: Path, cases: list[str]) -> dict[str, Any]:
    """When the engine made each probe's MISSING_ARCHIVE row: its first version, which the
    dataflow's VersionClock takes from the wall clock (ns) as it computes the row."""
    from archwatch.store import open_store

    store = open_store(db, read_only=True)
    rows = store.query("SELECT case_no, min(version) AS v FROM anomaly WHERE code = "
                       "'MISSING_ARCHIVE' AND case_no IN {cases:Array(String)} GROUP BY case_no",
                       {"cases": cases})
    store.close()
    return {r["case_no"]: r["v"] for r in rows}


def _sh_text(ms: int) -> str:
    from archwatch.timeutil import SHANGHAI

    return datetime.fromtimestamp(ms / 1000, SHANGHAI).isoformat(timespec="milliseconds")


class Retimer:
    """Re-times workload lines to the wall clock as they are sent (see the module doc)."""

    def __init__(self, lines: list[str]) -> None:
        from archwatch.timeutil import parse_ts, shanghai_year

        self.lines = lines
        self.parsed: list[dict[str, Any] | None] = []
        self.case_year: dict[str, int] = {}
        for line in lines:
            try:
                obj = json.loads(line)
            except ValueError:
                obj = None
            if not isinstance(obj, dict):
                obj = None
            self.parsed.append(obj)
            if obj and obj.get("type") == "case.completed" and isinstance(
                    obj.get("completedAt"), str):
                with contextlib.suppress(ValueError):
                    self.case_year.setdefault(obj["caseNo"],
                                              shanghai_year(parse_ts(obj["completedAt"])))
        self.completed: dict[str, int] = {}  # caseNo -> completedAt as sent (epoch ms)
        self.first_receipt: dict[str, int] = {}  # caseNo -> first archive.received sent
        self.sent_text: dict[str, str] = {}  # eventId -> text as first sent
        self.year_now = int(_sh_text(int(time.time() * 1000))[:4])
        self.sent = 0
        self._now_ms, self._now_text = -1, ""  # the last send's wall clock, and as text

    def _archive_no(self, no: Any, case_no: Any) -> Any:
        m = ARCHIVE_NO.match(no) if isinstance(no, str) else None
        year = self.case_year.get(case_no) if isinstance(case_no, str) else None
        if m is None or year is None:
            return no
        return f"{m.group(1)}{int(m.group(2)) + self.year_now - year:04d}{m.group(3)}"

    def __iter__(self) -> Iterator[str]:
        for line, obj in zip(self.lines, self.parsed, strict=True):
            self.sent += 1
            if obj is None or not isinstance(obj.get("eventId"), str):
                yield line
                continue
            again = self.sent_text.get(obj["eventId"])
            if again is not None:  # a redelivery stays an exact copy
                yield again
                continue
            now = int(time.time() * 1000)
            if now != self._now_ms:  # ≈ 10 events a millisecond at 10,000/s
                self._now_ms, self._now_text = now, _sh_text(now)
            ev = dict(obj)
            ev["occurredAt"] = self._now_text
            case_no = ev.get("caseNo")
            if ev.get("type") == "case.completed" and isinstance(case_no, str):
                self.completed.setdefault(case_no, now)
                ev["completedAt"] = self._now_text
            elif ev.get("type") == "archive.received" and isinstance(case_no, str):
                self.first_receipt.setdefault(case_no, now)
            if "archiveNo" in ev:
                ev["archiveNo"] = self._archive_no(ev["archiveNo"], case_no)
            meta = ev.get("meta")
            if isinstance(meta, dict) and case_no in self.completed:
                ev["meta"] = {**meta, "completedAt": _sh_text(self.completed[case_no])}
            text = orjson.dumps(ev).decode()
            self.sent_text[obj["eventId"]] = text
            yield text


# the poller's request, by --poll
QUERY = {"list": "code=&openedFrom=", "case": "caseNo=&code="}


class Poller:
    """Polls the API for each probe past its deadline; times /healthz in between."""

    def __init__(self, base: str, headers: dict[str, str], probes: list[str],
                 retimer: Retimer, sla_ms: int, mode: str = "case") -> None:
        import httpx

        self.mode = mode
        self.c = httpx.Client(base_url=base, headers=headers, timeout=30)
        self.probes = probes
        self.r = retimer
        self.sla = sla_ms
        self.seen: dict[str, dict[str, float]] = {}
        self.polls: dict[str, int] = {}
        # when the last poll that did not see it was sent: the row became visible after
        # that (a lower bound; the poll that saw it ended at the upper bound)
        self.missed: dict[str, float] = {}
        self.health: list[float] = []
        self.query_ms: list[float] = []
        self.errors: dict[str, int] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, name="poller", daemon=True)

    def _get(self, path: str) -> tuple[Any, float, float]:
        t0 = time.time()
        try:
            r = self.c.get(path)
        except Exception as exc:  # noqa: BLE001 - counted, never fatal
            self.errors[type(exc).__name__] = self.errors.get(type(exc).__name__, 0) + 1
            return None, t0, time.time()
        t1 = time.time()
        if r.status_code != 200:
            self.errors[str(r.status_code)] = self.errors.get(str(r.status_code), 0) + 1
            return None, t0, t1
        return r.json(), t0, t1

    def run(self) -> None:
        last_health = 0.0
        while not self.stop.is_set():
            now = time.time()
            if now - last_health >= 0.25:
                body, t0, t1 = self._get("/healthz")
                if body is not None:
                    self.health.append((t1 - t0) * 1000)
                last_health = now
            now_ms = time.time() * 1000
            due = [c for c in self.probes if c not in self.seen and c in self.r.completed
                   and self.r.completed[c] + self.sla <= now_ms and not self.on_time(c)]
            if self.mode == "list":
                if due:
                    self._poll_list(due)
            else:
                for case in due:
                    body, t0, t1 = self._get(
                        f"/api/v1/anomalies?caseNo={case}&code=MISSING_ARCHIVE")
                    if body is not None:
                        self.query_ms.append((t1 - t0) * 1000)
                        self._saw(case, body.get("total", 0) >= 1, t0, t1)
            time.sleep(0.01)

    def _poll_list(self, due: list[str]) -> None:
        """One request for every probe due: the MISSING_ARCHIVE anomalies opened since the
        earliest due deadline (an anomaly opens at its deadline), newest first."""
        since = min(self.r.completed[c] + self.sla for c in due) - 1
        frm = datetime.fromtimestamp(since / 1000, UTC).isoformat(timespec="milliseconds")
        body, t0, t1 = self._get("/api/v1/anomalies?code=MISSING_ARCHIVE&pageSize=200"
                                 f"&openedFrom={frm.replace('+00:00', 'Z')}")
        if body is None:
            return
        self.query_ms.append((t1 - t0) * 1000)
        if len(body["items"]) == 200:
            self.errors["list page full"] = self.errors.get("list page full", 0) + 1
        listed = {a["caseNo"] for a in body["items"]}
        for case in due:
            self._saw(case, case in listed, t0, t1)

    def _saw(self, case: str, there: bool, t0: float, t1: float) -> None:
        """A poll sent at t0, answered at t1, found the probe's row there or not."""
        self.polls[case] = self.polls.get(case, 0) + 1
        if there:
            deadline = (self.r.completed[case] + self.sla) / 1000
            self.seen[case] = {"deadline": deadline, "latency_ms": (t1 - deadline) * 1000,
                               "sent_after_deadline_ms": (t0 - deadline) * 1000,
                               "missed_ms": max(self.missed.get(case, deadline)
                                                - deadline, 0.0) * 1000}
        else:
            self.missed[case] = t0

    def on_time(self, case: str) -> bool:
        """Re-timing compressed the workload's 90 days into the run: a planted late receipt
        may now come before the short deadline, and then no anomaly is due."""
        first = self.r.first_receipt.get(case)
        return first is not None and first <= self.r.completed[case] + self.sla

    def done(self) -> bool:
        return all(c in self.seen or (c in self.r.completed and self.on_time(c))
                   for c in self.probes)


def sink_breakdown(m: dict[str, float]) -> dict[str, Any]:
    """From the run's /metrics: the mean time from a write's oldest row entering the
    sink's buffer to the write's end, and the mean INSERT per table (where a row's way to
    the store goes, after the engine made it)."""
    def mean(name: str) -> float | None:
        n = m.get(f"{name}_count")
        return m[f"{name}_sum"] / n * 1000 if n else None

    out: dict[str, Any] = {"sink_delay_mean_ms": mean("archwatch_sink_delay_seconds"),
                           "writes": int(m.get("archwatch_sink_delay_seconds_count", 0)),
                           "insert_mean_ms": {},
                           # with recovery: epochs' closes waiting for the writer
                           "epoch_drains": int(m.get(
                               "archwatch_sink_epoch_drain_seconds_count", 0)),
                           "epoch_drain_s": m.get("archwatch_sink_epoch_drain_seconds_sum", 0.0),
                           # the clock step's backlog hold: under live load it should be 0
                           "watermark_held_s": m.get(
                               "archwatch_watermark_held_time_seconds_total", 0.0)}
    for key, n in m.items():
        hit = re.fullmatch(r'archwatch_store_write_seconds_count\{table="([^"]+)"\}', key)
        if hit and n:
            total = m[f'archwatch_store_write_seconds_sum{{table="{hit.group(1)}"}}']
            out["insert_mean_ms"][hit.group(1)] = total / n * 1000
    # recovery's blob files (archwatch/blobstore.py): written on the dataflow thread
    files = m.get('archwatch_snapshot_files_total{op="written"}', 0)
    out["snapshot_files"] = {"written": int(files),
                             "bytes": int(m.get("archwatch_snapshot_file_bytes_total", 0)),
                             "seconds": m.get("archwatch_snapshot_file_write_seconds_total", 0)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=2000, help="events per second (default 2000)")
    ap.add_argument("--seconds", type=float, default=30, help="production time (default 30)")
    ap.add_argument("--archive-sla", dest="archive_sla", default="PT2S")
    ap.add_argument("--lateness", default="PT0S")
    ap.add_argument("--seed", type=int, default=17)
    ap.add_argument("--anomaly-rate", dest="anomaly_rate", type=float, default=0.05)
    ap.add_argument("--workers", type=int, default=1, help="`archwatch up -w`")
    ap.add_argument("--recovery", action="store_true",
                    help="run `archwatch up` with recovery on (its default: synchronous writes"
                         " and a snapshot per epoch), not --no-recovery")
    ap.add_argument("--epoch-interval", dest="epoch_interval", type=float,
                    help="`archwatch up --epoch-interval` (default: the product's)")
    ap.add_argument("--shards", type=int,
                    help="`archwatch up --shards` (default: the product's)")
    ap.add_argument("--poll", choices=["case", "list"], default="case",
                    help="how the poller looks for the probes: one request per due probe "
                         "by caseNo (default), or one anomaly-list request for all due "
                         "(openedFrom the earliest deadline: fewer requests, each slower)")
    ap.add_argument("--no-capacity", dest="capacity", action="store_false",
                    help="skip timing the engine's shards alone over the workload first "
                         "(the in-run baseline the load is given against)")
    ap.add_argument("--worker", choices=["prepare", "versions"], help=argparse.SUPPRESS)
    ap.add_argument("--db", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--cases", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker == "prepare":
        emit(worker_prepare(args.db))
        return 0
    if args.worker == "versions":
        emit(worker_versions(args.db, args.cases.split(",")))
        return 0

    from archwatch.connectors.kafka import (
        KafkaSettings,
        delete_topics,
        produce_lines,
        wait_for_broker,
    )

    from archwatch.generate import GenerateOptions, generate
    from archwatch.metrics import scrape
    from archwatch.timeutil import parse_duration

    sla_ms = parse_duration(args.archive_sla)
    tmp = scratch("freshness")
    total = int(args.rate * args.seconds)
    cases = max(200, round((total - FIXED_EVENTS) / EVENTS_PER_CASE))
    print(f"freshness: generating {cases:,} cases (~{total:,} events) into {tmp} ...",
          flush=True)
    truth = generate(tmp / "w", GenerateOptions(cases=cases, seed=args.seed,
                                                anomaly_rate=args.anomaly_rate))
    lines = [x for x in (tmp / "w" / "events.jsonl").read_text(encoding="utf-8").splitlines()
             if x.strip()]
    probes = sorted({a["caseNo"] for a in truth["anomalies"]
                     if a["code"] == "MISSING_ARCHIVE" and a["caseNo"]})
    retimer = Retimer(lines)
    capacity = None
    if args.capacity:
        # How fast this machine runs the product's Python this hour: the same rate is an
        # easy load on a quiet machine and more than the engine can take on one three
        # times slower (bench/RESULTS.md section 2, session 22). Alone, before the run.
        print("timing the engine's shards alone over the workload (the machine's speed "
              "this hour) ...", flush=True)
        alone = run_worker("ingest.py", ["--worker", "engine", "--events",
                                         str(tmp / "w" / "events.jsonl")])
        capacity = alone["events"] / alone["engine_s"]
    wait_for_broker(BROKERS, timeout=30)
    prefix = f"bench-fresh-{time.time_ns() % 10**9}."
    # `up` creates them; deleted when this script ends (they pile up in the broker else)
    ks = KafkaSettings(brokers=BROKERS, topic_prefix=prefix)
    atexit.register(delete_topics, BROKERS, ks.all_topics)
    db = tmp / "db"
    prep = run_worker("freshness.py", ["--worker", "prepare", "--db", str(db)])
    port = free_port()
    mport = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp / "up.log"
    proc = subprocess.Popen(
        [PY, "-m", "archwatch.cli", "up", "--db", str(db), "--port", str(port), "--brokers",
         BROKERS, "--topic-prefix", prefix, "--archive-sla", args.archive_sla, "--lateness",
         args.lateness, *([] if args.recovery else ["--no-recovery"]), "-w", str(args.workers),
         "--metrics-port", str(mport),
         *(["--epoch-interval", str(args.epoch_interval)] if args.epoch_interval else []),
         *(["--shards", str(args.shards)] if args.shards else [])],
        cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT,
        env={**os.environ, **UNLIMITED_ENV})
    poller = None
    produced = 0
    sink: dict[str, Any] = {}
    try:
        wait_for(lambda: http_ok(f"{base}/healthz") or proc.poll() is not None, 120,
                 what="archwatch up")
        if proc.poll() is not None:
            raise RuntimeError(f"archwatch up exited: {log.read_text()[-2000:]}")
        headers = api_headers(base) if prep["auth"] else {}
        time.sleep(2.0)  # let the dataflow subscribe to the new topics
        poller = Poller(base, headers, probes, retimer, sla_ms, args.poll)
        poller.thread.start()
        print(f"producing {len(lines):,} events at {args.rate:,.0f}/s to {prefix}* "
              f"({len(probes)} planted MISSING_ARCHIVE probes) ...", flush=True)
        t0 = time.perf_counter()
        produced = produce_lines(retimer, ks, rate=args.rate)
        produce_s = time.perf_counter() - t0
        print(f"  produced {produced:,} in {produce_s:.1f} s ({produced / produce_s:,.0f}/s); "
              "waiting for the last probes ...", flush=True)
        try:
            wait_for(poller.done, sla_ms / 1000 + 20, every=0.2, what="every probe visible")
        except TimeoutError as exc:
            print(f"  {exc}")
        poller.stop.set()
        poller.thread.join(10)
        summary = None
        with contextlib.suppress(Exception):  # informational only
            summary = poller.c.get("/api/v1/anomalies/summary").json()
        sink = sink_breakdown(scrape(mport))
    finally:
        if poller is not None:
            poller.stop.set()
        stop_process(proc, 60)

    made = run_worker("freshness.py", ["--worker", "versions", "--db", str(db), "--cases",
                                       ",".join(poller.seen) or "none"])
    # only rows never updated keep their first version (an update replaces it on merge):
    # the planted "missing" kind, whose MISSING_ARCHIVE is never resolved
    never_resolved = {a["caseNo"] for a in truth["anomalies"]
                      if a["code"] == "MISSING_ARCHIVE" and a["resolvedAt"] is None}
    for case, seen in poller.seen.items():
        if case in made and case in never_resolved:
            seen["computed_ms"] = made[case] / 1e6 - seen["deadline"] * 1000
    comp = [s["computed_ms"] for s in poller.seen.values() if "computed_ms" in s]
    lat = [s["latency_ms"] for s in poller.seen.values()]
    low = [s["missed_ms"] for s in poller.seen.values()]
    l50, l99 = percentile(low, 50), percentile(low, 99)
    hz = poller.health
    p50, p99 = percentile(lat, 50), percentile(lat, 99)
    h50, h99 = percentile(hz, 50), percentile(hz, 99)
    q50, q99 = percentile(poller.query_ms, 50), percentile(poller.query_ms, 99)
    polls = [poller.polls.get(c, 0) for c in poller.seen]
    c50, c99 = percentile(comp, 50), percentile(comp, 99)

    def row(what: str, xs: list[float], x50: float, x99: float) -> list[Any]:
        """A table row: count, p50, p99, max, and the percentiles against /healthz's."""
        return [what, len(xs), x50, x99, max(xs) if xs else None,
                x50 / h50 if h50 else None, x99 / h99 if h99 else None]

    rows = [
        row("deadline -> row computed by the engine (row version)", comp, c50, c99),
        row("deadline -> visible in the API (planted MISSING_ARCHIVE)", lat, p50, p99),
        row("  lower bound: the last poll that did not see it, sent", low, l50, l99),
        ["baseline: GET /healthz round trip", len(hz), h50, h99, max(hz) if hz else None,
         1.0, 1.0],
        row(f"GET /api/v1/anomalies?{QUERY[args.poll]} round trip", poller.query_ms, q50, q99),
    ]
    table(["what", "n", "p50 ms", "p99 ms", "max ms", "p50 x healthz", "p99 x healthz"], rows,
          title=f"\nfreshness at {args.rate:,.0f} events/s for {args.seconds:.0f} s, "
                f"archiveSla {args.archive_sla}, lateness {args.lateness}, `archwatch up` "
                f"-w {args.workers}"
                + (f" --epoch-interval {args.epoch_interval}" if args.epoch_interval else "")
                + (f" --shards {args.shards}" if args.shards else "")
                + f"; poller: --poll {args.poll}")
    if capacity:
        print(f"load: {args.rate:,.0f} events/s is {args.rate / capacity:.2f} of the engine's "
              f"shards alone on this machine now ({capacity:,.0f}/s without Bytewax, the "
              "broker, the store or the API, which `archwatch up` adds: its ceiling is lower)")
    on_time = [c for c in probes if c in retimer.completed and poller.on_time(c)]
    missing = len(probes) - len(lat) - len(on_time)
    print(f"probes seen {len(lat)}/{len(probes) - len(on_time)} ({len(on_time)} planted late "
          f"receipts arrived before the compressed deadline: no anomaly due); "
          f"polls per probe until seen: median "
          f"{percentile(polls, 50) if polls else 'n/a'}; API errors {poller.errors or 'none'}")
    if missing:
        print(f"note: {missing} probes never became visible within the wait")
    if summary and "byCode" in summary:
        by = summary["byCode"]
        print("anomalies in the store at the end: "
              + ", ".join(f"{k} {v['total']:,}" for k, v in sorted(by.items())))
    if sink.get("writes"):
        inserts = ", ".join(f"{t} {ms:.1f}" for t, ms in
                            sorted(sink["insert_mean_ms"].items(), key=lambda kv: -kv[1]))
        print(f"the sink: {sink['writes']:,} writes, each {sink['sink_delay_mean_ms']:.0f} ms "
              f"on average from its oldest row entering the buffer to its end; mean INSERT "
              f"ms by table: {inserts}")
    if sink.get("epoch_drains"):
        print(f"epochs' closes waited for the sink's writes {sink['epoch_drains']} times, "
              f"{sink['epoch_drain_s']:.2f} s in all (no input is read meanwhile)")
    print(f"the watermark was held by a partition's backlog {sink['watermark_held_s']:.1f} s "
          "in all (deadlines wait meanwhile; under live load it should not be)")
    files = sink.get("snapshot_files", {})
    if files.get("written"):
        print(f"recovery's blob files: {files['written']:,} written, "
              f"{files['bytes'] / 1e6:,.1f} MB, {files['seconds'] * 1000:,.0f} ms in all "
              f"({files['seconds'] * 1000 / files['written']:.2f} ms each, dataflow thread)")
    write_results("freshness" + ("-recovery" if args.recovery else ""), {
        "rate": args.rate, "seconds": args.seconds, "archive_sla": args.archive_sla,
        "lateness": args.lateness, "workers": args.workers, "recovery": args.recovery,
        "events": produced,
        "cases": cases, "probes": len(probes), "seen": len(lat), "on_time": len(on_time),
        "never_seen": missing, "epoch_interval": args.epoch_interval, "poll": args.poll,
        "shards": args.shards, "engine_alone_rate": capacity,
        "load_vs_engine_alone": args.rate / capacity if capacity else None,
        "freshness_ms": {"p50": p50, "p99": p99, "max": max(lat) if lat else None},
        "freshness_lower_bound_ms": {"p50": l50, "p99": l99},
        "computed_ms": {"p50": c50, "p99": c99},
        "baseline_healthz_ms": {"p50": h50, "p99": h99, "n": len(hz)},
        "anomaly_query_ms": {"p50": q50, "p99": q99},
        "ratio_to_healthz": {"p50": p50 / h50 if h50 else None,
                             "p99": p99 / h99 if h99 else None},
        "api_errors": poller.errors, "summary_at_end": summary, "topic_prefix": prefix,
        "per_probe": poller.seen, "scratch": str(tmp), "sink": sink,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
