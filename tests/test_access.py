"""Accounts and scopes: every endpoint × every role, no cross-area read, ever."""

from __future__ import annotations

from typing import Any

import pytest
from archwatch.api.app import create_app
from archwatch.api.auth import Principal, issue_token
from archwatch.api.settings import Settings
from fastapi.testclient import TestClient

from archwatch.accounts import AccountError, Accounts, Role
from archwatch.store import ServerStore, StoreError
from tests.conftest import workload_store
from tests.kafka_helpers import serve_app


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Any:
    store, truth = workload_store(tmp_path_factory.mktemp("access"), 800, 31, 0.4)
    acc = Accounts(store)
    row = max(truth["kpi"], key=lambda r: r["kpi"])
    other = next(r for r in truth["kpi"] if r["qym"] != row["qym"])
    users = {
        "admin": acc.create("admin", Role.sysadmin)[1],
        "city": acc.create("city", Role.city)[1],
        "district": acc.create("district", Role.district, qym=row["qym"])[1],
        "dept": acc.create("dept", Role.department, dept_code=row["deptCode"])[1],
        "sys": acc.create("sys", Role.system, system_code=row["systemCode"])[1],
        "sysdept": acc.create("sysdept", Role.system, dept_code=other["deptCode"])[1],
        "auditor": acc.create("auditor", Role.auditor, qym=other["qym"])[1],
        "cityauditor": acc.create("cityauditor", Role.auditor)[1],
    }
    app = create_app(Settings(rate_burst=100_000, rate_per_second=100_000), store=store)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, truth, users, row, other, store
    store.close()


SCOPE = {"district": ("qym",), "dept": ("deptCode",), "sys": ("systemCode",),
         "sysdept": ("deptCode",), "auditor": ("qym",)}


def headers(client: TestClient, users: dict[str, str], who: str) -> dict[str, str]:
    secret = users[who]
    if secret.startswith("aw_"):
        return {"Authorization": f"Bearer {secret}"}
    r = client.post("/api/v1/auth/login", json={"username": who, "password": secret})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['accessToken']}"}


def own_scope(who: str, row: dict, other: dict) -> dict[str, str]:
    src = other if who in ("sysdept", "auditor") else row
    return {dim: src[dim] for dim in SCOPE.get(who, ())}


def endpoints(truth: dict, row: dict) -> list[tuple[str, dict]]:
    year = row["year"]
    case_anomaly = next(a for a in truth["anomalies"] if a["code"] == "CHECK_FAILED")
    return [
        ("/gdtjapi/charts/taskArchiveList", {"qym": row["qym"], "deptCode": row["deptCode"],
                                             "year": year}),
        ("/gdtjapi/charts/sysView", {"year": year}),
        ("/api/v1/stats", {"groupBy": "year,qym,deptCode,systemCode", "pageSize": 200}),
        ("/api/v1/drill/regions", {"year": year}),
        (f"/api/v1/drill/regions/{row['qym']}/departments", {"year": year}),
        (f"/api/v1/drill/regions/{row['qym']}/departments/{row['deptCode']}/items", {}),
        ("/api/v1/drill/levels", {}),
        (f"/api/v1/drill/systems/{row['systemCode']}/items", {}),
        (f"/api/v1/drill/items/{row['taskId']}/cases", {"pageSize": 200}),
        ("/api/v1/anomalies", {"pageSize": 200}),
        ("/api/v1/anomalies/summary", {}),
        (f"/api/v1/cases/{case_anomaly['caseNo']}", {}),
        (f"/api/v1/archives/{case_anomaly['archiveNo']}/checks", {}),
        (f"/api/v1/systems/{row['systemCode']}/daily-log", {}),
    ]


def rows_of(body: Any) -> list[dict]:
    """Every record an answer contains, whatever its shape."""
    if isinstance(body, list):
        return body
    if "data" in body and isinstance(body["data"], dict):
        return body["data"]["records"]
    if "items" in body:
        return [{**i, **i.get("key", {})} for i in body["items"]]
    if "case" in body:
        return ([body["case"]] if body["case"] else []) + body["anomalies"]
    return []


@pytest.mark.parametrize("who", ["city", "district", "dept", "sys", "sysdept", "auditor"])
def test_no_role_reads_outside_its_area(world: Any, who: str) -> None:
    client, truth, users, row, other, store = world
    h = headers(client, users, who)
    scope = own_scope(who, row, other)
    seen = 0
    for path, params in endpoints(truth, row):
        r = client.get(path, params=params, headers=h)
        assert r.status_code in (200, 403, 404), (who, path, r.status_code, r.text)
        if r.status_code != 200:
            assert scope, f"{who} refused {path}"  # only scoped roles are ever refused
            continue
        for rec in rows_of(r.json()):
            for dim, own in scope.items():
                if rec.get(dim) is not None:
                    assert rec[dim] == own, (who, path, dim, rec)
                    seen += 1
        if path.endswith("/checks") and scope:
            case = next(a for a in truth["anomalies"] if a["code"] == "CHECK_FAILED")
            visible = all(
                {"qym": case["qym"], "deptCode": case["deptCode"],
                 "systemCode": case["systemCode"]}[d] == v for d, v in scope.items())
            assert (r.json() != []) == visible
    if who != "city":
        assert seen > 0  # the checks above did see scoped rows
    summary = client.get("/api/v1/anomalies/summary", headers=h).json()
    total = sum(v["total"] for v in summary["byCode"].values())
    want = sum(1 for a in truth["anomalies"]
               if all(a.get(d) == v for d, v in scope.items()))
    assert total == want


def test_parameters_cannot_widen_a_scope(world: Any) -> None:
    client, truth, users, row, other, _ = world
    h = headers(client, users, "district")
    r = client.get("/gdtjapi/charts/taskArchiveList",
                   params={"qym": other["qym"], "deptCode": other["deptCode"]}, headers=h)
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    r = client.get("/api/v1/anomalies", params={"qym": other["qym"]}, headers=h)
    assert r.status_code == 403
    r = client.get(f"/api/v1/drill/regions/{other['qym']}/departments", headers=h)
    assert r.status_code == 403
    h = headers(client, users, "sys")
    r = client.get("/gdtjapi/charts/sysView", params={"systemCode": "SYS-OTHER"}, headers=h)
    assert r.status_code == 403


def test_authentication_is_required_everywhere_but_health_and_docs(world: Any) -> None:
    client, truth, _users, row, _, _ = world
    for path, params in endpoints(truth, row):
        r = client.get(path, params=params)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized", path
    assert client.get("/healthz").status_code == 200
    assert client.get("/openapi.json").status_code == 200
    bad = client.get("/api/v1/anomalies", headers={"Authorization": "Bearer nonsense"})
    assert bad.status_code == 401


def test_only_the_administrator_opens_accounts_and_cannot_read_cases(world: Any) -> None:
    client, _truth, users, _, _, _ = world
    admin = headers(client, users, "admin")
    r = client.post("/api/v1/admin/users", headers=admin,
                    json={"username": "newdist", "role": "district", "qym": "330106"})
    assert r.status_code == 201 and len(r.json()["password"]) >= 10
    assert "password_hash" not in r.text
    r = client.post("/api/v1/admin/users", headers=admin,
                    json={"username": "bad", "role": "district"})
    assert r.status_code == 400 and "qym" in r.json()["error"]["message"]
    assert client.get("/api/v1/anomalies", headers=admin).status_code == 403
    for who in ("city", "district", "auditor", "sys"):
        h = headers(client, users, who)
        assert client.get("/api/v1/admin/users", headers=h).status_code == 403
        assert client.post("/api/v1/admin/users", headers=h,
                           json={"username": "x", "role": "city"}).status_code == 403


ADMIN_ONLY = [  # (method, path, json): webhook subscriptions and delivery status
    ("GET", "/api/v1/admin/webhooks", None),
    ("POST", "/api/v1/admin/webhooks", {"webhookId": "matrix", "url": "http://127.0.0.1:9/h"}),
    ("GET", "/api/v1/admin/webhooks/matrix", None),
    ("PUT", "/api/v1/admin/webhooks/matrix", {"webhookId": "matrix",
                                              "url": "http://127.0.0.1:9/h2",
                                              "codes": ["RECEIVER_DOWN"]}),
    ("GET", "/api/v1/admin/webhooks/matrix/deliveries", None),
    ("POST", "/api/v1/admin/webhooks/matrix/deliveries/t-" + "0" * 32 + "/retry", None),
    ("GET", "/api/v1/admin/notifier", None),
    ("DELETE", "/api/v1/admin/webhooks/matrix", None),
]


def test_webhook_administration_is_for_the_administrator_only(world: Any) -> None:
    client, _truth, users, _, _, _ = world
    for who in ("city", "district", "dept", "sys", "auditor", "cityauditor"):
        h = headers(client, users, who)
        for method, path, body in ADMIN_ONLY:
            r = client.request(method, path, headers=h, json=body)
            assert r.status_code == 403, (who, method, path, r.status_code)
    for method, path, body in ADMIN_ONLY:
        assert client.request(method, path, json=body).status_code == 401, path
    admin = headers(client, users, "admin")
    codes = [client.request(method, path, headers=admin, json=body).status_code
             for method, path, body in ADMIN_ONLY]
    assert codes == [200, 201, 200, 200, 200, 404, 200, 204]  # no such delivery: 404
    created = client.post("/api/v1/admin/webhooks", headers=admin,
                          json={"webhookId": "matrix2", "url": "http://127.0.0.1:9/h"}).json()
    assert len(created["secret"]) >= 32  # shown once
    listed = client.get("/api/v1/admin/webhooks/matrix2", headers=admin).json()
    assert listed["secret"] is None and created["secret"] not in str(listed)
    bad = client.post("/api/v1/admin/webhooks", headers=admin,
                      json={"webhookId": "x", "url": "ftp://example.org/"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_parameter"


def test_disable_and_rekey_take_effect_at_once(world: Any) -> None:
    client, _truth, users, _, _, store = world
    admin = headers(client, users, "admin")
    acc = Accounts(store)
    _, pw = acc.create("temp", Role.city)
    h = {"Authorization": "Bearer " + client.post(
        "/api/v1/auth/login", json={"username": "temp", "password": pw}).json()["accessToken"]}
    assert client.get("/api/v1/anomalies/summary", headers=h).status_code == 200
    assert client.post("/api/v1/admin/users/temp/disable", headers=admin).status_code == 200
    assert client.get("/api/v1/anomalies/summary", headers=h).status_code == 403
    client.post("/api/v1/admin/users/temp/enable", headers=admin)
    _, token = acc.create("tempsys", Role.system, system_code="SYS-X")
    new = client.post("/api/v1/admin/users/tempsys/rekey", headers=admin, json={}).json()
    assert new["token"] != token
    old = client.get("/api/v1/anomalies/summary", headers={"Authorization": f"Bearer {token}"})
    assert old.status_code == 401
    ok = client.get("/api/v1/anomalies/summary",
                    headers={"Authorization": f"Bearer {new['token']}"})
    assert ok.status_code == 200
    with pytest.raises(AccountError):
        acc.create("temp", Role.city)


def test_expired_sessions_and_login_throttling(world: Any) -> None:
    client, _truth, users, _, _, _ = world
    token, _ = issue_token(Principal("city", Role.city), client.app.state.settings.jwt_secret,
                           -10)
    r = client.get("/api/v1/anomalies", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401 and "expired" in r.json()["error"]["message"]
    _, pw = Accounts(client.app.state.store).create("victim", Role.city)
    for _ in range(5):
        r = client.post("/api/v1/auth/login", json={"username": "victim", "password": "wrong!!"})
        assert r.status_code == 401
    r = client.post("/api/v1/auth/login", json={"username": "victim", "password": pw})
    assert r.status_code == 429  # locked, even with the right password


def test_rate_limit_and_body_cap(world: Any) -> None:
    store = world[-1]  # chDB: one store directory open per process at a time
    _, token = Accounts(store).create("busy", Role.system, system_code="S")
    app = create_app(Settings(rate_per_second=1, rate_burst=3, max_body_bytes=1000), store=store)
    with TestClient(app, raise_server_exceptions=False) as client:
        h = {"Authorization": f"Bearer {token}"}
        codes = [client.get("/api/v1/anomalies/summary", headers=h).status_code
                 for _ in range(6)]
        assert codes[:3] == [200, 200, 200] and 429 in codes[3:]
        r = client.post("/api/v1/auth/login", content=b"x" * 5000,
                        headers={"Content-Type": "application/json"})
        assert r.status_code == 413


# --------------------------------------------------------------------- auditor SQL

def sql(client: TestClient, user: str, password: str, query: str) -> Any:
    return client.post("/", content=query.encode(), auth=(user, password))


def test_auditor_sql_is_scoped_and_read_only(world: Any) -> None:
    client, truth, users, _row, other, _ = world
    r = sql(client, "auditor", users["auditor"],
            "SELECT DISTINCT qym FROM anomaly FINAL ORDER BY qym FORMAT CSV")
    assert r.status_code == 200, r.text
    assert r.text.split() in ([], [f'"{other["qym"]}"'])
    r = sql(client, "auditor", users["auditor"],
            "SELECT DISTINCT qym FROM kpi_task FINAL FORMAT TSV")
    assert r.text.split() == [other["qym"]]
    r = sql(client, "cityauditor", users["cityauditor"],
            "SELECT count(DISTINCT qym) FROM kpi_task FINAL FORMAT TSV")
    assert int(r.text) > 1
    refused = [
        "INSERT INTO anomaly (anomaly_id) VALUES ('x')",
        "DROP TABLE anomaly",
        "ALTER TABLE case_state DELETE WHERE 1",
        "SET readonly = 0",
        "SELECT * FROM anomaly SETTINGS additional_table_filters = {}",
        "SELECT count() FROM merge(currentDatabase(), '^anomaly$')",
        "SELECT * FROM file('/etc/passwd', 'LineAsString')",
        "SELECT * FROM url('http://127.0.0.1:9/x', 'CSV')",
        "SELECT * FROM account",
        "SELECT password_hash FROM default.account",
        "SELECT (SELECT any(token_hash) FROM account)",
        "SELECT * FROM system.users",
        "SELECT * FROM event_log LIMIT 1",
        "WITH a AS (SELECT * FROM audit_log) SELECT * FROM a",
        # the copy by case number (0018): not narrowed to the auditor's region
        "SELECT doc FROM case_doc WHERE kind = 1",
    ]
    for q in refused:
        r = sql(client, "auditor", users["auditor"], q)
        assert r.status_code in (400, 403), (q, r.status_code, r.text)
        assert "DB::Exception" in r.text and "Traceback" not in r.text
    assert sql(client, "auditor", "wrong-password", "SELECT 1").status_code == 401
    assert sql(client, "dept", users["dept"], "SELECT 1").status_code == 403
    assert client.get("/ping").text == "Ok.\n"


def test_clickhouse_connect_backend_against_the_endpoint(world: Any) -> None:
    """The project's server backend (clickhouse-connect) speaks to the embedded store
    through the HTTP endpoint unchanged, under the auditor's row filter."""
    client, _truth, users, _row, other, _ = world
    with serve_app(client.app) as base:
        host = base.removeprefix("http://")
        remote = ServerStore(f"http://auditor:{users['auditor']}@{host}/default")
        rows = remote.query("SELECT qym, count() AS n FROM kpi_task FINAL GROUP BY qym")
        assert [r["qym"] for r in rows] == [other["qym"]]
        text = remote.query_text("SELECT count() FROM case_state FINAL", "TabSeparated")
        assert int(text) > 0
        with pytest.raises(StoreError):
            remote.command("DROP TABLE anomaly")
        remote.close()


def test_concurrent_requests_share_one_account_lookup(world: Any,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """When the remembered principal has expired, the requests arriving together wait for
    one store lookup of the credential instead of each running their own."""
    import asyncio
    import threading

    import httpx
    from archwatch.api import auth

    client, _, users, _, _, _ = world
    h = headers(client, users, "city")
    app = client.app
    app.state.principals.clear()
    calls: list[int] = []
    release = threading.Event()
    real = auth._lookup

    def slow_lookup(request: Any, cred: Any) -> Principal:
        calls.append(1)
        release.wait(10)  # held until every request has arrived
        return real(request, cred)

    monkeypatch.setattr(auth, "_lookup", slow_lookup)
    arrived: list[int] = []
    remembered = auth._remembered

    def counted(request: Any) -> Any:
        arrived.append(1)  # get_principal runs on to its await without yielding
        return remembered(request)

    monkeypatch.setattr(auth, "_remembered", counted)

    async def go() -> list[int]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://t") as c:
            reqs = [asyncio.ensure_future(c.get("/api/v1/drill/regions", headers=h))
                    for _ in range(8)]
            deadline = asyncio.get_running_loop().time() + 10
            while len(arrived) < 8:  # every request past its cache check
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.01)
            release.set()
            return [r.status_code for r in await asyncio.gather(*reqs)]

    assert asyncio.run(go()) == [200] * 8
    assert len(calls) == 1
    assert app.state.principals.inflight == {}
