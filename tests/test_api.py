"""The API through the real app, on a store filled by the real dataflow from a workload."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest
from archwatch.api.app import create_app
from archwatch.api.settings import Settings
from fastapi.testclient import TestClient

from archwatch.accounts import Accounts, Role
from archwatch.kpi import time_diff_days
from archwatch.rules import CLASS_OF_CODE
from archwatch.timeutil import parse_ts
from tests.conftest import workload_store


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Any:
    store, truth = workload_store(tmp_path_factory.mktemp("api"), 2500, 17, 0.25)
    app = create_app(Settings(max_page_size=50, rate_burst=10_000, rate_per_second=10_000),
                     store=store)
    with TestClient(app, raise_server_exceptions=False) as client:
        _, password = Accounts(store).create("city-official", Role.city)
        token = client.post("/api/v1/auth/login", json={"username": "city-official",
                                                         "password": password}).json()
        client.headers["Authorization"] = f"Bearer {token['accessToken']}"
        yield client, truth
    store.close()


def truth_totals(truth: dict, keys: tuple[str, ...], **where: str) -> dict[tuple, dict]:
    out: dict[tuple, dict] = defaultdict(lambda: {"kpi": 0, "archived": 0, "archivedSucc": 0,
                                                  "archivedFail": 0, "last": None})
    for r in truth["kpi"]:
        if any(r[k] != v for k, v in where.items()):
            continue
        acc = out[tuple(r[k] for k in keys)]
        for f in ("kpi", "archived", "archivedSucc", "archivedFail"):
            acc[f] += r[f]
        if r["lastReceive"] and (acc["last"] is None or r["lastReceive"] > acc["last"]):
            acc["last"] = r["lastReceive"]
    return dict(out)


def test_task_archive_list_shape_and_numbers(world: Any) -> None:
    client, truth = world
    row = max(truth["kpi"], key=lambda r: r["kpi"])
    res = client.get("/gdtjapi/charts/taskArchiveList",
                     params={"qym": row["qym"], "deptCode": row["deptCode"], "year": row["year"],
                             "pageSize": 50})
    assert res.status_code == 200
    body = res.json()
    assert set(body) == {"code", "message", "data", "timestamp", "executeTime"}
    assert body["code"] == 200 and isinstance(body["timestamp"], int)
    data = body["data"]
    assert set(data) == {"records", "total", "pageNo", "pageSize"}
    expected = [r for r in truth["kpi"] if r["year"] == row["year"] and r["qym"] == row["qym"]
                and r["deptCode"] == row["deptCode"]]
    assert data["total"] == len({r["taskId"] for r in expected})
    got = {r["taskId"]: r for r in data["records"]}
    for e in expected:
        g = got[e["taskId"]]
        assert set(g) == {"taskId", "taskName", "qym", "deptCode", "year", "kpi", "archived",
                          "archivedSucc", "archivedFail", "UnArchived", "timeDiff",
                          "lastReceive", "lastUpdate"}
        for f in ("kpi", "archived", "archivedSucc", "archivedFail", "UnArchived", "timeDiff",
                  "lastReceive", "year"):
            assert g[f] == e[f], (f, g, e)
        assert len(g["lastUpdate"]) == 19  # YYYY-MM-DD HH:MM:SS
        assert isinstance(g["timeDiff"], float | int)


def test_task_archive_list_requires_qym_and_dept(world: Any) -> None:
    client, _ = world
    res = client.get("/gdtjapi/charts/taskArchiveList", params={"qym": "330102"})
    assert res.status_code == 400
    err = res.json()["error"]
    assert err["code"] == "invalid_parameter" and "deptCode" in err["message"]
    res = client.get("/gdtjapi/charts/taskArchiveList",
                     params={"qym": "999999", "deptCode": "nope", "year": 2025})
    assert res.status_code == 200 and res.json()["data"]["records"] == []


def test_sys_view_per_system(world: Any) -> None:
    client, truth = world
    year = truth["kpi"][0]["year"]
    body = client.get("/gdtjapi/charts/sysView", params={"year": year, "pageSize": 50}).json()
    expected = truth_totals(truth, ("systemCode",), year=year)
    recs = {r["systemCode"]: r for r in body["data"]["records"]}
    assert set(recs) == {k[0] for k in expected}
    for (code,), e in expected.items():
        assert recs[code]["kpi"] == e["kpi"] and recs[code]["archivedFail"] == e["archivedFail"]
        assert recs[code]["systemName"] and recs[code]["systemLevel"] in ("国", "省", "市")
    one = client.get("/gdtjapi/charts/sysView",
                     params={"year": year, "systemCode": code}).json()["data"]
    assert [r["systemCode"] for r in one["records"]] == [code]


def test_stats_by_year_and_region_equal_ground_truth(world: Any) -> None:
    client, truth = world
    res = client.get("/api/v1/stats", params={"groupBy": "year,qym", "pageSize": 50})
    assert res.status_code == 200
    body = res.json()
    expected = truth_totals(truth, ("year", "qym"))
    assert body["total"] == len(expected)
    for item in body["items"]:
        e = expected[(item["key"]["year"], item["key"]["qym"])]
        assert item["kpi"] == e["kpi"] and item["archived"] == e["archived"]
        assert item["archivedFail"] == e["archivedFail"]
        assert item["archiveRate"] == pytest.approx(e["archived"] / e["kpi"], abs=1e-6)
        assert item["lastReceive"] == e["last"]
        assert item["name"]  # the region's name
        assert item["names"] == {"qym": item["name"]}  # year has no display name


def test_drill_down_region_to_case(world: Any) -> None:
    client, truth = world
    year = truth["kpi"][0]["year"]
    regions = client.get("/api/v1/drill/regions",
                         params={"year": year, "sort": "archiveRate", "order": "asc"}).json()
    rates = [r["archiveRate"] for r in regions["items"]]
    assert rates == sorted(rates)  # worst archive rate first
    qym = regions["items"][0]["key"]["qym"]
    depts = client.get(f"/api/v1/drill/regions/{qym}/departments",
                       params={"year": year, "pageSize": 50}).json()
    assert sum(d["kpi"] for d in depts["items"]) == regions["items"][0]["kpi"]
    dept = depts["items"][0]["key"]["deptCode"]
    items = client.get(f"/api/v1/drill/regions/{qym}/departments/{dept}/items",
                       params={"year": year, "pageSize": 50}).json()
    task = items["items"][0]
    cases = client.get(f"/api/v1/drill/items/{task['key']['taskId']}/cases",
                       params={"year": year, "qym": qym, "deptCode": dept}).json()
    assert cases["total"] == task["kpi"]
    case_no = cases["items"][0]["caseNo"]
    trace = client.get(f"/api/v1/cases/{case_no}").json()
    assert trace["case"]["caseNo"] == case_no
    times = [e["occurredAt"] for e in trace["events"]]
    assert times == sorted(times) and trace["events"][0]["type"] in (
        "case.completed", "province.pushed")


def test_system_chain(world: Any) -> None:
    client, truth = world
    levels = client.get("/api/v1/drill/levels").json()["items"]
    assert {lv["key"]["systemLevel"] for lv in levels} <= {"国", "省", "市"}
    systems = client.get(f"/api/v1/drill/levels/{levels[0]['key']['systemLevel']}/systems",
                         params={"pageSize": 50}).json()
    code = systems["items"][0]["key"]["systemCode"]
    items = client.get(f"/api/v1/drill/systems/{code}/items", params={"pageSize": 50}).json()
    assert sum(i["kpi"] for i in items["items"]) <= systems["items"][0]["kpi"]
    assert items["total"] >= len(items["items"]) > 0


def test_anomaly_summary_and_filters_match_truth(world: Any) -> None:
    client, truth = world
    s = client.get("/api/v1/anomalies/summary").json()
    assert s["byCode"] == truth["summary"]
    for cls in ("漏", "错", "重", "link"):
        want = sum(v["total"] for c, v in truth["summary"].items() if CLASS_OF_CODE[c] == cls)
        assert s["byClass"].get(cls, {"total": 0})["total"] == want
    wrong = client.get("/api/v1/anomalies", params={"class": "错", "status": "open",
                                                    "pageSize": 20}).json()
    assert wrong["total"] == sum(v["open"] for c, v in truth["summary"].items()
                                 if CLASS_OF_CODE[c] == "错")
    assert all(a["class"] == "错" and a["resolvedAt"] is None for a in wrong["items"])
    opened = [a["openedAt"] for a in wrong["items"]]
    assert opened == sorted(opened, reverse=True)
    missing = client.get("/api/v1/anomalies",
                         params={"code": ["MISSING_ARCHIVE", "LATE_ARCHIVE"]}).json()
    assert missing["total"] == truth["summary"]["MISSING_ARCHIVE"]["total"] + \
        truth["summary"]["LATE_ARCHIVE"]["total"]
    assert client.get("/api/v1/anomalies", params={"code": "NO_SUCH"}).json()["total"] == 0
    bad = client.get("/api/v1/anomalies", params={"class": "x"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_parameter"


def test_time_range_filter(world: Any) -> None:
    client, truth = world
    times = sorted(parse_ts(a["openedAt"]) for a in truth["anomalies"])
    mid = times[len(times) // 2]
    from archwatch.timeutil import to_iso_utc

    before = client.get("/api/v1/anomalies", params={"openedTo": to_iso_utc(mid)}).json()
    after = client.get("/api/v1/anomalies", params={"openedFrom": to_iso_utc(mid)}).json()
    assert before["total"] + after["total"] == len(times)
    assert before["total"] == sum(t < mid for t in times)


def test_pages_are_capped_and_validated(world: Any) -> None:
    client, _ = world
    res = client.get("/api/v1/anomalies", params={"pageSize": 10_000})
    assert res.status_code == 200 and res.json()["pageSize"] == 50
    assert len(res.json()["items"]) == 50
    for bad in ({"pageNo": 0}, {"pageSize": -1}, {"pageNo": "x"}):
        r = client.get("/api/v1/anomalies", params=bad)
        assert r.status_code == 400 and "error" in r.json()


def test_errors_have_one_shape_and_no_traces(world: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    client, _ = world
    r = client.get("/api/v1/cases/NO-SUCH-CASE")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = client.get("/api/v1/stats", params={"groupBy": "year,planet"})
    assert r.status_code == 400 and "planet" in r.json()["error"]["message"]
    r = client.get("/api/v1/nowhere")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    store = client.app.state.store

    def boom(*_a: Any, **_k: Any) -> Any:
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(store, "query", boom)
    # a fresh read cache: earlier tests' answers would otherwise spare the broken store
    monkeypatch.setattr(client.app.state, "reads", None)
    monkeypatch.setattr(client.app.state.accounts, "get",
                        lambda _u: _city())
    r = client.get("/api/v1/anomalies/summary")
    assert r.status_code == 500
    assert "secret" not in r.text and "Traceback" not in r.text
    assert r.json()["error"]["code"] == "internal_error"


def test_archive_checks_and_daily_log(world: Any) -> None:
    client, truth = world
    failed = next(a for a in truth["anomalies"] if a["code"] == "CHECK_FAILED")
    checks = client.get(f"/api/v1/archives/{failed['archiveNo']}/checks").json()
    assert checks and checks[0]["passed"] is False
    assert checks[0]["failedProperties"][0] in ("真实性", "完整性", "可用性", "安全性")
    code = truth["kpi"][0]["systemCode"]
    log = client.get(f"/api/v1/systems/{code}/daily-log").json()
    assert log and sum(d["received"] for d in log) == sum(
        r["archived"] for r in truth["kpi"] if r["systemCode"] == code)
    assert client.get(f"/api/v1/systems/{code}/daily-log",
                      params={"from": "2025-02-01", "to": "2025-01-01"}).status_code == 400


def test_openapi_documents_every_route(world: Any) -> None:
    client, _ = world
    spec = client.get("/openapi.json").json()
    for path in ("/gdtjapi/charts/taskArchiveList", "/gdtjapi/charts/sysView", "/api/v1/stats",
                 "/api/v1/anomalies/summary", "/api/v1/cases/{caseNo}"):
        assert path in spec["paths"]
        op = next(iter(spec["paths"][path].values()))
        assert op.get("description") or op.get("summary")
    assert client.get("/docs").status_code == 200


def test_time_diff_matches_truth_for_one_item(world: Any) -> None:
    client, truth = world
    row = next(r for r in truth["kpi"] if r["archived"] > 1)
    res = client.get("/api/v1/stats", params={
        "groupBy": "taskId", "year": row["year"], "qym": row["qym"], "deptCode": row["deptCode"],
        "systemCode": row["systemCode"], "pageSize": 50}).json()
    got = next(i for i in res["items"] if i["key"]["taskId"] == row["taskId"])
    assert got["timeDiff"] == row["timeDiff"]
    assert time_diff_days(0, 0) == 0


def _city() -> object:
    from archwatch.accounts import Account

    return Account("city-official", Role.city)


def test_interface_errors_are_grouped_into_incidents(world: Any) -> None:
    client, truth = world
    incidents = client.get("/api/v1/interface-errors").json()
    assert incidents == [{
        "receiverId": "recv-330110", "errorCode": "E503", "qym": "330110",
        "endpoint": "/archive/receive", "count": 1,
        "firstSeen": incidents[0]["firstSeen"], "lastSeen": incidents[0]["firstSeen"],
        "lastMessage": "上游超时"}]
    assert client.get("/api/v1/interface-errors",
                      params={"receiverId": "recv-330109"}).json() == []


def test_cached_answers_follow_every_write(world: Any) -> None:
    """Statistics and anomaly reads are cached until the store's next write: a row the
    dataflow writes shows at once (no time-to-live to wait out)."""
    client, _ = world
    store = client.app.state.store
    before = client.get("/api/v1/anomalies", params={"code": "MISSING_ARCHIVE"}).json()["total"]
    assert client.get("/api/v1/anomalies",
                      params={"code": "MISSING_ARCHIVE"}).json()["total"] == before
    assert client.app.state.reads.hits > 0
    row = {"anomaly_id": "cache-test", "code": "MISSING_ARCHIVE", "class": "漏",
           "case_no": "CACHE-TEST", "archive_no": "", "receiver_id": "", "qym": "330102",
           "dept_code": "", "system_code": "", "task_code": "", "opened_at": "2025-01-01 00:00:00",
           "resolved_at": None, "detail": "", "src": "test", "version": 1, "is_deleted": 0}
    # as a dataflow shard writes one: the anomaly, and its shard's count (0014)
    count = {"code": "MISSING_ARCHIVE", "class": "漏", "qym": "330102", "dept_code": "",
             "system_code": "", "src": "test", "total": 1, "open": 1, "version": 1,
             "is_deleted": 0}
    store.insert("anomaly", [row])
    store.insert("anomaly_count", [count])
    assert client.get("/api/v1/anomalies",
                      params={"code": "MISSING_ARCHIVE"}).json()["total"] == before + 1
    store.insert("anomaly", [{**row, "version": 2, "is_deleted": 1}])  # withdrawn again
    store.insert("anomaly_count", [{**count, "version": 2, "is_deleted": 1}])
    assert client.get("/api/v1/anomalies",
                      params={"code": "MISSING_ARCHIVE"}).json()["total"] == before
