"""Distribution to the districts (issue #7): the queue built from the engine's tables, the
distributor against real HTTP receivers, and the batch reset upload with real workbooks.

One chDB store for the module, filled by the real dataflow (archwatch.replay). Tests run
in file order and build on each other's state where it says so; the distributor runs on an
injected clock, so backoff and leases are checked without sleeping.
"""

from __future__ import annotations

import argparse
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import openpyxl
import pytest
import xlwt
from archwatch.api.app import create_app
from archwatch.api.routes import distribution as routes
from archwatch.api.settings import Settings
from fastapi.testclient import TestClient

from archwatch import distribution as dist
from archwatch.accounts import Accounts, Role
from archwatch.distribution import (
    ACKED,
    FAILED,
    PENDING,
    SENT,
    Delivery,
    DistributionQueue,
    Distributor,
    DistributorSettings,
    JsonlEmitter,
    http_post,
)
from archwatch.models import Envelope, parse_record
from archwatch.receivers import load_registrations
from archwatch.registry import Registry
from archwatch.replay import replay
from archwatch.settings import EngineSettings
from archwatch.store import open_store
from archwatch.timeutil import now_ms

MIN = 60_000
H = 60 * MIN
SETTINGS = DistributorSettings(base_delay_ms=MIN, max_delay_ms=H, max_attempts=3,
                               lease_ms=2 * MIN, timeout_s=5.0, batch=100)
QYM = {"sc": "330102", "gs": "330105", "xh": "330106", "bj": "330108"}


# ------------------------------------------------------------------ receivers over HTTP

class Receiver:
    """A district receiving system on a free port: records every POST; answers 200, or
    500 while ``failing``."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.failing = False
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append({"path": self.path, "body": body,
                                       "key": self.headers.get("Idempotency-Key"),
                                       "type": self.headers.get("Content-Type")})
                code = 500 if outer.failing else 200
                payload = b'{"error":"busy"}' if outer.failing else b'{"received":true}'
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/packages"

    def got(self, dno: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["body"]["distributionNo"] == dno]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Clock:
    def __init__(self, t: int) -> None:
        self.t = t

    def __call__(self) -> int:
        return self.t


# ------------------------------------------------------------------ the world

def _events(t0: int) -> list[dict[str, Any]]:
    """Cases in four districts; distributions reported by the archive centre; heartbeats
    that leave xh-recv down."""
    out: list[dict[str, Any]] = []
    seq = iter(range(1, 10_000))

    def emit(type_: str, at: int, source: str = "ARCHIVE-CENTER", **payload: Any) -> None:
        out.append({"eventId": f"ev-{next(seq):04d}", "type": type_,
                    "occurredAt": dist.shanghai_iso(at), "source": source, **payload})

    def case(n: int, qym: str, dists: list[tuple[str, list[str], str | None]]) -> None:
        case_no, archive_no = f"HZ{n:05d}", f"{qym}-08-00322-001-2026-D100-{n:07d}"
        done = dist.shanghai_iso(t0)
        emit("case.completed", t0 + MIN, "SYS1", caseNo=case_no, taskId=f"T-{qym}",
             taskCode="TC1", taskName="事项", deptCode=f"D-{qym}", deptName="部门", qym=qym,
             area="区", systemCode="SYS1", systemName="系统", systemLevel="市", completedAt=done)
        emit("archive.received", t0 + 10 * MIN, caseNo=case_no, archiveNo=archive_no,
             receiverQym=qym, packageSha256="a" * 64,
             meta={"taskCode": "TC1", "deptCode": f"D-{qym}", "qym": qym, "completedAt": done})
        emit("archive.checked", t0 + 20 * MIN, archiveNo=archive_no, caseNo=case_no,
             passed=True, failedItems=[])
        emit("archive.backedUp", t0 + 30 * MIN, "BACKUP-CENTER", archiveNo=archive_no,
             caseNo=case_no, backupId=f"bk-{n}", sha256="a" * 64)
        for dno, statuses, target in dists:
            for i, status in enumerate(statuses):
                emit("archive.distributed", t0 + (40 + 5 * i) * MIN, archiveNo=archive_no,
                     caseNo=case_no, distributionNo=dno,
                     targetQym=qym if target is None else target, status=status)

    case(1, QYM["sc"], [("FF001", ["sent"], None)])
    case(2, QYM["sc"], [("FF002", ["sent", "failed"], None)])
    case(3, QYM["sc"], [("FF003", ["sent", "acked"], None)])
    case(4, QYM["gs"], [("FF004", ["sent"], None)])
    case(5, QYM["xh"], [("FF005", ["sent"], None)])
    case(6, QYM["bj"], [("FF006", ["sent"], None)])
    case(7, QYM["sc"], [])  # backed up, never distributed
    case(8, QYM["sc"], [("FF008", ["sent"], "")])  # report without a target region
    for name in ("sc", "gs", "bj"):
        emit("receiver.heartbeat", t0 + 170 * MIN, f"{name}-recv", receiverId=f"{name}-recv",
             qym=QYM[name])
    for at in (t0, t0 + MIN):
        emit("receiver.heartbeat", at, "xh-recv", receiverId="xh-recv", qym=QYM["xh"])
    return out


def _receivers() -> list[dict[str, str]]:
    slow = {"period": "PT1H", "grace": "PT1H"}
    return [{"receiverId": "sc-recv", "qym": QYM["sc"], **slow},
            {"receiverId": "gs-recv", "qym": QYM["gs"], **slow},
            {"receiverId": "xh-recv", "qym": QYM["xh"], "period": "PT1M", "grace": "PT2M"},
            {"receiverId": "bj-recv", "qym": QYM["bj"], **slow}]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("distribution")
    t0 = (now_ms() - 3 * H) // 1000 * 1000
    events = root / "events.jsonl"
    events.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in _events(t0)))
    (root / "receivers.json").write_text(json.dumps(_receivers()))
    regs = load_registrations(root / "receivers.json")
    store = open_store(root / "db")
    replay([events], store, EngineSettings(receivers=regs), root / "rejects.jsonl",
           progress=False)
    good, flaky = Receiver(), Receiver()
    reg = Registry(store)
    bj = reg.get("bj-recv")
    assert bj is not None
    reg.put(bj.__class__(**{**bj.__dict__, "paused": True}))
    for rid, r in (("sc-recv", good), ("gs-recv", flaky), ("xh-recv", good), ("bj-recv", good)):
        dist.set_endpoint(store, rid, r.url)
    acc = Accounts(store)
    users = {"city": acc.create("city", Role.city)[1],
             "district": acc.create("district", Role.district, qym=QYM["sc"])[1],
             "dept": acc.create("dept", Role.department, dept_code="D-330102")[1],
             "auditor": acc.create("auditor", Role.auditor)[1]}
    app = create_app(Settings(rate_burst=100_000, rate_per_second=100_000), store=store)
    if not any(getattr(r, "path", "") == "/gdtjapi/batchResetPushStatus" for r in app.routes):
        app.include_router(routes.router)
    with TestClient(app, raise_server_exceptions=False) as client:
        tokens = {}
        for who, pw in users.items():
            r = client.post("/api/v1/auth/login", json={"username": who, "password": pw})
            assert r.status_code == 200, r.text
            tokens[who] = {"Authorization": f"Bearer {r.json()['accessToken']}"}
        yield {"store": store, "client": client, "tokens": tokens, "good": good,
               "flaky": flaky, "root": root, "events": events, "regs": regs}
    good.close()
    flaky.close()
    store.close()


def _events_in(path: Path) -> list[dict[str, Any]]:
    """Events a distributor wrote, each checked against the contract's parser."""
    out = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        env = parse_record(line, f"{path.name}:{i + 1}")
        assert isinstance(env, Envelope), env
        ev = json.loads(line)
        assert ev["type"] == "archive.distributed" and ev["source"] == "DISTRIBUTOR"
        assert ev["occurredAt"].endswith("+08:00")
        assert set(ev) == {"eventId", "type", "occurredAt", "source", "archiveNo", "caseNo",
                           "distributionNo", "targetQym", "status"}
        out.append(ev)
    return out


def _row(store: Any, dno: str) -> dist.Distribution:
    d = DistributionQueue(store).get(dno)
    assert d is not None, dno
    return d


# ------------------------------------------------------------------ queue

def test_rebuild_from_event_log_case_state_and_registry(world: Any) -> None:
    store = world["store"]
    q = DistributionQueue(store)
    first = q.rebuild(undistributed=True)
    assert first == {"distributions": 7, "added": 8, "learnedAcked": 0}
    rows, total = q.list(limit=100)
    assert total == 8
    by = {d.distribution_no: d for d in rows}
    assert {d: by[d].status for d in ("FF001", "FF002", "FF003", "FF004", "FF005", "FF006")} == {
        "FF001": PENDING, "FF002": PENDING, "FF003": ACKED, "FF004": PENDING,
        "FF005": PENDING, "FF006": PENDING}
    assert by["FF004"].receiver_id == "gs-recv" and by["FF005"].receiver_id == "xh-recv"
    assert by["FF008"].target_qym == QYM["sc"]  # from case_state: the report had none
    assert by["FF001"].case_no == "HZ00001" and by["FF001"].archive_no.startswith("330102-")
    [rd] = [d for d in rows if d.distribution_no.startswith("RD-")]
    assert (rd.case_no, rd.target_qym, rd.status) == ("HZ00007", QYM["sc"], PENDING)
    assert q.unreported() == []  # facts learned from the log are not ours to publish
    versions = {d.distribution_no: d.version for d in rows}
    assert q.rebuild(undistributed=True) == {"distributions": 7, "added": 0, "learnedAcked": 0}
    assert {d.distribution_no: d.version for d in q.list(limit=100)[0]} == versions


def test_enqueue(world: Any) -> None:
    q = DistributionQueue(world["store"])
    d = q.enqueue("330105-08-00322-001-2026-D100-0000004", "HZ00004", distribution_no="FF100")
    assert (d.status, d.target_qym, d.receiver_id, d.attempts) == (PENDING, QYM["gs"],
                                                                    "gs-recv", 0)
    assert q.enqueue("330105-08-00322-001-2026-D100-0000004", "HZ00004",
                     distribution_no="FF100").version == d.version  # idempotent
    with pytest.raises(ValueError, match="another archive"):
        q.enqueue("330105-08-00322-001-2026-D100-0000009", "HZ00009", distribution_no="FF100")
    auto = q.enqueue("330199-08-00322-001-2026-D100-0000999", "HZ-UNKNOWN")
    assert auto.target_qym == "330199" and auto.distribution_no.startswith("DS")
    assert auto.receiver_id == ""  # no receiver registered there: it waits (noReceiver)


# ------------------------------------------------------------------ distributor

def test_distributor_delivers_skips_down_and_paused_and_emits(world: Any, tmp_path: Path
                                                              ) -> None:
    store, good, flaky = world["store"], world["good"], world["flaky"]
    out = tmp_path / "events.jsonl"
    clock = Clock(now_ms())
    d = Distributor(store, JsonlEmitter(out), SETTINGS, clock=clock)
    counts = d.cycle()
    sc = {"FF001", "FF002", "FF008", _rd(store)}
    assert {r["body"]["distributionNo"] for r in good.requests} == sc
    assert {r["body"]["distributionNo"] for r in flaky.requests} == {"FF004", "FF100"}
    assert not good.got("FF005") and not good.got("FF006")  # down, paused: never sent
    assert not good.got("FF003")  # acked already
    req = good.got("FF001")[0]
    assert req["body"] == {"distributionNo": "FF001", "archiveNo": _row(store, "FF001").archive_no,
                           "caseNo": "HZ00001", "targetQym": QYM["sc"]}
    assert req["key"] == "FF001" and req["type"].startswith("application/json")
    assert counts["sent"] == counts["acked"] == 6 and counts["failed"] == 0
    assert counts["receiverDown"] == 2 and counts["noReceiver"] == 1
    for dno in (*sc, "FF004"):
        row = _row(store, dno)
        assert (row.status, row.attempts, row.last_error) == (ACKED, 1, "")
    for dno in ("FF005", "FF006"):
        assert (_row(store, dno).status, _row(store, dno).attempts) == (PENDING, 0)
    events = _events_in(out)
    assert len(events) == 12 and len({e["eventId"] for e in events}) == 12
    assert sorted(e["status"] for e in events if e["distributionNo"] == "FF001") == \
        ["acked", "sent"]
    # nothing more to do: no request, no event
    n = len(good.requests) + len(flaky.requests)
    clock.t += H
    again = d.cycle()
    assert again["sent"] == 0 and again["events"] == 0
    assert len(good.requests) + len(flaky.requests) == n
    world["first_events"] = out


def _rd(store: Any) -> str:
    return next(d.distribution_no for d in DistributionQueue(store).list(limit=100)[0]
                if d.distribution_no.startswith("RD-"))


def test_the_reconciliation_sees_the_distributors_results(world: Any, tmp_path: Path) -> None:
    """The events written above, replayed with the rest: FF002's failed run (reported by
    the archive centre) is resolved by the distributor's ack."""
    store = world["store"]

    def failed_ff002() -> list[dict[str, Any]]:
        return store.query("SELECT resolved_at FROM anomaly FINAL WHERE code ="
                           " 'DISTRIBUTION_FAILED' AND detail LIKE '%FF002%'")

    assert [r["resolved_at"] for r in failed_ff002()] == [None]
    res = replay([world["events"], world["first_events"]], store,
                 EngineSettings(receivers=world["regs"]), tmp_path / "rejects.jsonl",
                 progress=False)
    assert res.report()["rejected"] == 0 and res.report()["applied"] > 0
    [row] = failed_ff002()
    assert row["resolved_at"] is not None
    latest = store.query(
        "SELECT argMax(JSONExtractString(payload, 'status'), occurred_at) AS s FROM event_log"
        " WHERE type = 'archive.distributed' AND archive_no LIKE '%0000001'")
    assert latest == [{"s": "acked"}]
    assert "xh-recv" in dist.down_receivers(store)  # still down: the next tests rely on it
    assert DistributionQueue(store).rebuild()["learnedAcked"] == 0  # the queue knew already


def test_failing_receiver_backs_off_then_recovers(world: Any, tmp_path: Path) -> None:
    store, flaky = world["store"], world["flaky"]
    clock = Clock(now_ms())
    q = DistributionQueue(store, clock)
    q.enqueue("330105-08-00322-001-2026-D100-0000004", "HZ00004", distribution_no="FF101")
    d = Distributor(store, JsonlEmitter(tmp_path / "ev.jsonl"), SETTINGS, clock=clock)
    flaky.failing = True
    t = clock.t
    d.cycle()
    r1 = _row(store, "FF101")
    assert (r1.status, r1.attempts) == (FAILED, 1) and "HTTP 500" in r1.last_error
    assert r1.updated_at == t + 1 and r1.next_attempt_at == r1.updated_at + MIN
    clock.t = r1.next_attempt_at - 1  # not due yet: no request
    d.cycle()
    assert len(flaky.got("FF101")) == 1 and _row(store, "FF101").attempts == 1
    clock.t = r1.next_attempt_at
    d.cycle()
    r2 = _row(store, "FF101")
    assert (r2.status, r2.attempts) == (FAILED, 2) and len(flaky.got("FF101")) == 2
    assert r2.next_attempt_at == r2.updated_at + 2 * MIN  # the delay doubled
    assert r2.next_attempt_at > r1.next_attempt_at
    flaky.failing = False
    clock.t = r2.next_attempt_at
    d.cycle()
    r3 = _row(store, "FF101")
    assert (r3.status, r3.attempts, r3.last_error) == (ACKED, 3, "")
    clock.t += 10 * H
    d.cycle()
    assert len(flaky.got("FF101")) == 3
    statuses = [e["status"] for e in _events_in(tmp_path / "ev.jsonl")
                if e["distributionNo"] == "FF101"]
    assert statuses == ["sent", "failed", "sent", "failed", "sent", "acked"]


def test_attempts_are_capped_and_a_failing_receiver_is_skipped_for_the_cycle(
        world: Any, tmp_path: Path) -> None:
    store, flaky = world["store"], world["flaky"]
    clock = Clock(now_ms())
    q = DistributionQueue(store, clock)
    for dno in ("FF110", "FF111"):
        q.enqueue("330105-08-00322-001-2026-D100-0000004", "HZ00004", distribution_no=dno)
    d = Distributor(store, JsonlEmitter(tmp_path / "ev.jsonl"), SETTINGS, clock=clock)
    flaky.failing = True
    try:
        counts = d.cycle()
        assert counts["failed"] == 1 and counts["deferred"] == 1  # 500: rest waits a cycle
        assert _row(store, "FF111").attempts == 0
        for _ in range(20):
            clock.t += H
            d.cycle()
            if all(_row(store, x).attempts == SETTINGS.max_attempts for x in ("FF110", "FF111")):
                break
        for dno in ("FF110", "FF111"):
            row = _row(store, dno)
            assert (row.status, row.attempts) == (FAILED, SETTINGS.max_attempts)
            assert "gave up after 3 attempts" in row.last_error
        n = len(flaky.requests)
        clock.t += 100 * H
        assert d.cycle()["due"] == 0 and len(flaky.requests) == n  # no more retries
    finally:
        flaky.failing = False
    assert SETTINGS.backoff(1) == MIN and SETTINGS.backoff(2) == 2 * MIN
    assert SETTINGS.backoff(30) == H  # capped


def test_crash_resumes_without_resending_what_was_acked(world: Any, tmp_path: Path) -> None:
    store, good = world["store"], world["good"]
    clock = Clock(now_ms())
    q = DistributionQueue(store, clock)
    archive = _row(store, "FF001").archive_no
    for dno in ("FF200", "FF201", "FF202"):
        q.enqueue(archive, "HZ00001", distribution_no=dno)

    class Crash(BaseException):
        pass

    def crashing_post(url: str, body: dict[str, str], timeout: float) -> Delivery:
        if body["distributionNo"] == "FF201":  # delivered, then the process dies
            http_post(url, body, timeout)
            raise Crash
        return http_post(url, body, timeout)

    out = tmp_path / "ev.jsonl"
    a = Distributor(store, JsonlEmitter(out), SETTINGS, clock=clock, post=crashing_post)
    with pytest.raises(Crash):
        a.cycle()
    assert _row(store, "FF200").status == ACKED
    assert (_row(store, "FF201").status, _row(store, "FF201").attempts) == (SENT, 1)
    assert _row(store, "FF202").status == PENDING
    assert not out.exists()  # the crash came before the events were published

    b = Distributor(store, JsonlEmitter(out), SETTINGS, clock=clock)  # a new process
    counts = b.cycle()
    assert counts["sent"] == 1  # FF202 only: FF200 is acked, FF201 within its lease
    assert len(good.got("FF200")) == 1 and len(good.got("FF201")) == 1
    assert len(good.got("FF202")) == 1
    clock.t += SETTINGS.lease_ms
    b.cycle()  # FF201's answer was never recorded: sent again (receivers are idempotent)
    assert [r["key"] for r in good.got("FF201")] == ["FF201", "FF201"]
    assert (_row(store, "FF201").status, _row(store, "FF201").attempts) == (ACKED, 2)
    clock.t += 10 * H
    b.cycle()
    c = Distributor(store, JsonlEmitter(out), SETTINGS, clock=clock)
    c.cycle()
    assert len(good.got("FF200")) == 1 and len(good.got("FF202")) == 1
    assert len(good.got("FF201")) == 2
    events = _events_in(out)
    assert len({e["eventId"] for e in events}) == len(events)
    assert [e["status"] for e in events if e["distributionNo"] == "FF201"] == \
        ["sent", "sent", "acked"]
    assert [e["status"] for e in events if e["distributionNo"] == "FF200"] == ["sent", "acked"]


def test_a_reset_while_in_flight_wins(world: Any, tmp_path: Path) -> None:
    store = world["store"]
    clock = Clock(now_ms())
    q = DistributionQueue(store, clock)
    archive = _row(store, "FF001").archive_no
    q.enqueue(archive, "HZ00001", distribution_no="FF210")

    def post_and_reset(url: str, body: dict[str, str], timeout: float) -> Delivery:
        if body["distributionNo"] == "FF210":
            q.reset([(archive, "FF210")], "someone")
        return Delivery(True)

    d = Distributor(store, JsonlEmitter(tmp_path / "ev.jsonl"), SETTINGS, clock=clock,
                    post=post_and_reset)
    assert d.cycle()["conflict"] == 1
    row = _row(store, "FF210")
    assert (row.status, row.attempts, row.resets, row.reset_by) == (PENDING, 0, 1, "someone")


# ------------------------------------------------------------------ batch reset upload

def xlsx(rows: list[list[Any]], sheets: int = 1) -> bytes:
    wb = openpyxl.Workbook()
    ws = wb.active
    for r in rows:
        ws.append(r)
    for i in range(1, sheets):
        wb.create_sheet(f"S{i}")
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


def xls(rows: list[list[Any]]) -> bytes:
    wb = xlwt.Workbook()
    ws = wb.add_sheet("分发")
    for i, r in enumerate(rows):
        for j, v in enumerate(r):
            ws.write(i, j, v)
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


def upload(world: Any, who: str | None, name: str, data: bytes,
           path: str = "/gdtjapi/batchResetPushStatus", field: str = "file") -> Any:
    headers = world["tokens"][who] if who else {}
    return world["client"].post(path, headers=headers,
                                files={field: (name, data, "application/octet-stream")})


def _snapshot(store: Any) -> tuple[dict[str, int], int]:
    versions = {r["distribution_no"]: r["version"] for r in store.query(
        "SELECT distribution_no, version FROM distribution FINAL")}
    audits = store.query("SELECT count() AS n FROM audit_log")[0]["n"]
    return versions, audits


def test_upload_xlsx_resets_to_pending_and_is_redistributed(world: Any, tmp_path: Path) -> None:
    store, good = world["store"], world["good"]
    a1, a3 = _row(store, "FF001").archive_no, _row(store, "FF003").archive_no
    rows = [["分发记录导出"], [],
            ["备注", "分发号", "接收单位", "档号"],
            ["x", "FF001", "上城区", a1],
            [None, "FF003", None, a3],
            [None, None, None, None]]
    r = upload(world, "city", "重置.xlsx", xlsx(rows))
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"code", "message", "data", "timestamp", "executeTime"}
    assert (body["code"], body["message"], body["data"]) == (200, "操作成功", None)
    assert isinstance(body["timestamp"], int) and isinstance(body["executeTime"], int)
    for dno in ("FF001", "FF003"):
        row = _row(store, dno)
        assert (row.status, row.attempts, row.resets, row.reset_by) == (PENDING, 0, 1, "city")
    [audit] = store.query("SELECT actor, target, detail, toUnixTimestamp64Milli(at) AS at"
                          " FROM audit_log WHERE action = 'distribution.reset'")
    assert audit["actor"] == "city" and audit["target"] == "重置.xlsx"
    assert abs(audit["at"] - now_ms()) < H
    detail = json.loads(audit["detail"])
    assert {x["distributionNo"] for x in detail["reset"]} == {"FF001", "FF003"}
    assert detail["unmatched"] == [] and detail["rows"] == 2 and len(detail["sha256"]) == 64
    # the next cycle sends them again
    n1, n3 = len(good.got("FF001")), len(good.got("FF003"))
    Distributor(store, JsonlEmitter(tmp_path / "ev.jsonl"), SETTINGS).cycle()
    assert len(good.got("FF001")) == n1 + 1 and len(good.got("FF003")) == n3 + 1
    assert (_row(store, "FF003").status, _row(store, "FF003").resets) == (ACKED, 1)
    ids = [e["eventId"] for e in _events_in(tmp_path / "ev.jsonl")]
    assert "dist-FF003-1.1.acked" in ids


def test_upload_xls_on_the_seed_path_reports_unmatched(world: Any) -> None:
    store = world["store"]
    a2, a3 = _row(store, "FF002").archive_no, _row(store, "FF003").archive_no
    rows = [["档号", "其他", "分发号"],
            [a2, "", "FF002"],
            ["330102-08-00322-001-2026-D100-0009999", "", "FF003"],  # wrong archive
            ["330102-08-00322-001-2026-D100-0008888", "", "NOPE"],  # no such distribution
            [a3, "", ""],  # no distribution number
            [a2, "", "FF002"]]  # twice: once
    before = _row(store, "FF002")
    r = upload(world, "city", "reset.xls", xls(rows), path="/gdtjapi//batchResetPushStatus")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["code"] == 200
    assert body["data"] == ["330102-08-00322-001-2026-D100-0009999",
                            "330102-08-00322-001-2026-D100-0008888", a3]
    assert body["message"] == "操作成功，其中3条档号未匹配到分发记录"
    after = _row(store, "FF002")
    assert (after.status, after.resets) == (PENDING, before.resets + 1)


def test_a_district_resets_only_its_own_distributions(world: Any) -> None:
    store = world["store"]
    a2, a5 = _row(store, "FF002").archive_no, _row(store, "FF005").archive_no
    other = _row(store, "FF005")
    mine = _row(store, "FF002")
    r = upload(world, "district", "mine.xlsx", xlsx([["档号", "分发号"], [a2, "FF002"],
                                                     [a5, "FF005"]]))
    assert r.status_code == 200, r.text
    assert r.json()["data"] == [a5] and "1条" in r.json()["message"]
    assert _row(store, "FF005").version == other.version  # another district's: untouched
    assert (_row(store, "FF002").resets, _row(store, "FF002").reset_by) == \
        (mine.resets + 1, "district")
    [audit] = store.query("SELECT detail FROM audit_log WHERE action = 'distribution.reset'"
                          " AND actor = 'district'")
    assert json.loads(audit["detail"])["scope"] == QYM["sc"]


def test_uploads_need_a_resetting_role(world: Any) -> None:
    data = xlsx([["档号", "分发号"], ["x", "y"]])
    r = upload(world, None, "a.xlsx", data)
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    for who in ("dept", "auditor"):
        r = upload(world, who, "a.xlsx", data)
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"


def test_bad_uploads_are_refused_and_change_nothing(world: Any,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    store, client = world["store"], world["client"]
    a1 = _row(store, "FF001").archive_no
    good = xlsx([["档号", "分发号"], [a1, "FF001"]])
    before = _snapshot(store)
    cases: list[tuple[str, bytes, int, str]] = [
        ("reset.csv", b"\xe6\xa1\xa3\xe5\x8f\xb7,\xe5\x88\x86\xe5\x8f\x91\xe5\x8f\xb7\n",
         415, "unsupported_file"),
        ("reset", good, 415, "unsupported_file"),
        ("reset.xlsx", b"this is not a workbook at all", 400, "invalid_file"),
        ("reset.xlsx", good[: len(good) // 2], 400, "invalid_file"),  # truncated
        ("reset.xls", good, 400, "invalid_file"),  # an .xlsx named .xls
        ("reset.xls", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 600, 400, "invalid_file"),
        ("reset.xlsx", xlsx([["档号", "编号"], [a1, "FF001"]]), 400, "missing_columns"),
        ("reset.xls", xls([["分发号", "备注"], ["FF001", ""]]), 400, "missing_columns"),
        ("reset.xlsx", xlsx([], sheets=2), 400, "empty_file"),
        ("reset.xlsx", xlsx([["档号", "分发号"]]), 400, "empty_file"),
        ("reset.xls", xls([["档号", "分发号"]]), 400, "empty_file"),
        ("reset.xlsx", b"", 400, "empty_file"),
    ]
    for name, data, status, code in cases:
        r = upload(world, "city", name, data)
        assert r.status_code == status, (name, r.status_code, r.text)
        err = r.json()["error"]
        assert err["code"] == code and err["message"], (name, err)
    monkeypatch.setattr(dist, "MAX_UPLOAD_BYTES", len(good) - 1)
    r = upload(world, "city", "big.xlsx", good)
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"
    monkeypatch.setattr(dist, "MAX_UPLOAD_BYTES", 5 * 1024 * 1024)
    monkeypatch.setattr(dist, "MAX_UPLOAD_ROWS", 3)
    many = [["档号", "分发号"]] + [[a1, "FF001"]] * 4
    for name, data in (("many.xlsx", xlsx(many)), ("many.xls", xls(many))):
        r = upload(world, "city", name, data)
        assert r.status_code == 413 and r.json()["error"]["code"] == "too_many_rows", r.text
    r = upload(world, "city", "a.xlsx", good, field="upload")  # not the field 'file'
    assert r.status_code == 400 and "file" in r.json()["error"]["message"]
    r = client.post("/gdtjapi/batchResetPushStatus", headers=world["tokens"]["city"],
                    json={"file": "x"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_parameter"
    assert _snapshot(store) == before  # nothing reset, nothing audited


def test_the_default_caps() -> None:
    assert dist.MAX_UPLOAD_BYTES == 5 * 1024 * 1024 and dist.MAX_UPLOAD_ROWS == 50_000


# ------------------------------------------------------------------ other routes

def test_queue_listing_is_scoped_and_endpoints_are_managed(world: Any) -> None:
    client, tokens = world["client"], world["tokens"]
    r = client.get("/api/v1/distributions", headers=tokens["district"],
                   params={"pageSize": 200})
    assert r.status_code == 200
    items = r.json()["items"]
    assert items and {i["targetQym"] for i in items} == {QYM["sc"]}
    r = client.get("/api/v1/distributions", headers=tokens["district"],
                   params={"qym": QYM["xh"]})
    assert r.status_code == 403
    r = client.get("/api/v1/distributions", headers=tokens["city"],
                   params={"status": "pending", "qym": QYM["xh"]})
    assert [i["distributionNo"] for i in r.json()["items"]] == ["FF005"]
    url = "http://127.0.0.1:9/in"
    r = client.put("/api/v1/receivers/gs-recv/endpoint", headers=tokens["district"],
                   json={"url": url})
    assert r.status_code == 403
    r = client.put("/api/v1/receivers/nobody/endpoint", headers=tokens["city"], json={"url": url})
    assert r.status_code == 404
    r = client.put("/api/v1/receivers/gs-recv/endpoint", headers=tokens["city"],
                   json={"url": "ftp://x/y"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_parameter"
    old = client.get("/api/v1/receivers/gs-recv/endpoint", headers=tokens["city"]).json()["url"]
    assert old == world["flaky"].url
    for u in (url, old):
        r = client.put("/api/v1/receivers/gs-recv/endpoint", headers=tokens["city"],
                       json={"url": u})
        assert r.status_code == 200 and r.json()["url"] == u
    rows = world["store"].query("SELECT target FROM audit_log WHERE action = 'receiver.endpoint'")
    assert [r["target"] for r in rows] == ["gs-recv", "gs-recv"]


# ------------------------------------------------------------------ the command

def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="archwatch")
    dist.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["distribute", *argv])


def test_cli_distribute_once_to_a_jsonl_file(world: Any, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    store, good = world["store"], world["good"]
    other = Receiver()
    try:
        archive = _row(store, "FF001").archive_no
        DistributionQueue(store).enqueue(archive, "HZ00001", distribution_no="FF300")
        out = tmp_path / "cli.jsonl"
        args = _args("--db", str(world["root"] / "db"), "--once", "--events-out", str(out),
                     "--endpoint", f"sc-recv={other.url}", "--no-rebuild")
        assert args.func is dist.cmd_distribute
        assert dist.cmd_distribute(args) == 0
        printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert printed["acked"] == printed["sent"] == len(other.requests) >= 1
        assert len(other.got("FF300")) == 1 and not good.got("FF300")
        assert {r["body"]["targetQym"] for r in other.requests} == {QYM["sc"]}
        assert [e["status"] for e in _events_in(out) if e["distributionNo"] == "FF300"] == \
            ["sent", "acked"]
        assert _row(store, "FF300").status == ACKED
    finally:
        dist.set_endpoint(store, "sc-recv", good.url)
        other.close()


def test_cli_refuses_bad_arguments(world: Any) -> None:
    from archwatch.cli import CliError

    with pytest.raises(CliError, match="--db or --url"):
        dist.cmd_distribute(_args("--once"))
    with pytest.raises(CliError, match="RECEIVER=URL"):
        dist.cmd_distribute(_args("--db", "x", "--endpoint", "nourl"))
    with pytest.raises(CliError, match="--events-out"):
        dist.cmd_distribute(_args("--url", "http://127.0.0.1:9/db", "--once"))
    with pytest.raises(SystemExit):
        _args("--db", "x", "--base-delay", "soon")
    with pytest.raises(CliError, match="--takeover must exceed"):
        dist.cmd_distribute(_args("--db", "x", "--takeover", "PT15S"))  # --interval 10 s


@pytest.mark.kafka
def test_events_reach_the_kafka_topic(world: Any) -> None:
    """``--brokers``: the events go to <prefix>archive.distributions on the real broker."""
    import subprocess

    from archwatch.connectors.kafka import KafkaSettings, create_topics, delete_topics, read_topic

    from tests.kafka_helpers import BROKERS, ROOT, prefix_for

    script = str(ROOT / "scripts" / "kafka.sh")
    was_running = subprocess.run([script, "status"], capture_output=True).returncode == 0
    subprocess.run([script, "start"], check=True, timeout=600)
    try:
        prefix = prefix_for("dist")
        create_topics(KafkaSettings(BROKERS, prefix), 1)
        store = world["store"]
        # the queue as the first test leaves it (a rebuild is idempotent), so that this
        # test also runs alone (-m kafka)
        DistributionQueue(store).rebuild(undistributed=True)
        DistributionQueue(store).enqueue(_row(store, "FF001").archive_no, "HZ00001",
                                         distribution_no="FF400")
        args = _args("--db", str(world["root"] / "db"), "--once", "--no-rebuild",
                     "--brokers", BROKERS, "--topic-prefix", prefix)
        assert dist.cmd_distribute(args) == 0
        msgs = list(read_topic(BROKERS, prefix + "archive.distributions", timeout=20))
    finally:
        delete_topics(BROKERS, KafkaSettings(BROKERS, prefix).all_topics)
        if not was_running:
            subprocess.run([script, "stop"], check=False, timeout=120)
    mine = [m for m in msgs if json.loads(m.value())["distributionNo"] == "FF400"]
    assert [json.loads(m.value())["status"] for m in mine] == ["sent", "acked"]
    assert {m.key() for m in mine} == {b"HZ00001"}
    for m in msgs:
        assert isinstance(parse_record(m.value(), "kafka"), Envelope)
