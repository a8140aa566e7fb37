"""Primary-key lookups of migration 0012 (projections p_case_no, p_item_keys) and the
two-step pages of the case trace, an item's cases and the anomaly list (issue #10, query
latency): each must answer exactly what a plain FINAL scan answers, on a store filled by
the real dataflow and after rows move, update, merge, and the store is reset."""

from __future__ import annotations

from typing import Any

import pytest
from archwatch.api.app import create_app
from archwatch.api.settings import Settings
from fastapi.testclient import TestClient

from tests.conftest import log_in, workload_store

NO_PROJECTIONS = " SETTINGS optimize_use_projections = 0"  # the scan the lookups replace


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Any:
    store, truth = workload_store(tmp_path_factory.mktemp("lookups"), 1500, 23, 0.3)
    app = create_app(Settings(max_page_size=50, rate_burst=10_000, rate_per_second=10_000,
                              read_cache_entries=0), store=store)
    with TestClient(app, raise_server_exceptions=False) as client:
        log_in(client, store, "city-lookups")
        yield client, store, truth
    store.close()


def _all_pages(client: TestClient, path: str, **params: Any) -> tuple[list[dict], int]:
    items: list[dict] = []
    no, total = 1, None
    while True:
        body = client.get(path, params={**params, "pageNo": no, "pageSize": 7}).json()
        if total is None:
            total = body["total"]
        if not body["items"]:
            return items, total or 0
        items.extend(body["items"])
        no += 1


def test_trace_equals_the_scan_for_every_case(world: Any) -> None:
    client, store, _ = world
    cases = [r["case_no"] for r in store.query("SELECT DISTINCT case_no FROM case_state")]
    assert len(cases) > 1000
    scanned = {r["case_no"]: r for r in store.query(
        "SELECT case_no, task_id, qym, status, archive_count FROM case_state FINAL"
        + NO_PROJECTIONS)}
    anomalies: dict[str, set[str]] = {}
    for r in store.query("SELECT case_no, anomaly_id FROM anomaly FINAL WHERE case_no != ''"
                         + NO_PROJECTIONS):
        anomalies.setdefault(r["case_no"], set()).add(r["anomaly_id"])
    assert anomalies
    for case_no in cases[::7]:
        trace = client.get(f"/api/v1/cases/{case_no}").json()
        want = scanned[case_no]
        got = trace["case"]
        assert (got["taskId"], got["qym"], got["status"], got["archiveCount"]) == (
            want["task_id"], want["qym"], want["status"], want["archive_count"])
        assert {a["anomalyId"] for a in trace["anomalies"]} == anomalies.get(case_no, set())


def test_item_cases_equal_the_scan_in_both_chains(world: Any) -> None:
    client, store, _ = world
    items = store.query(
        "SELECT task_id, year, qym, dept_code, system_code, count() AS n FROM case_state FINAL"
        " GROUP BY ALL ORDER BY n DESC LIMIT 6" + NO_PROJECTIONS)
    assert items[0]["n"] > 7  # more than one page
    for it in items:
        for params in ({"year": it["year"], "qym": it["qym"], "deptCode": it["dept_code"]},
                       {"year": it["year"], "systemCode": it["system_code"]},
                       {"systemCode": it["system_code"], "sort": "completedAt",
                        "order": "desc"}):
            got, total = _all_pages(client, f"/api/v1/drill/items/{it['task_id']}/cases",
                                    **params)
            cond = " AND ".join(
                [f"task_id = '{it['task_id']}'"]
                + [f"{col} = '{params[k]}'" for k, col in (("qym", "qym"),
                                                             ("deptCode", "dept_code"),
                                                             ("systemCode", "system_code"))
                   if k in params]
                + ([f"year = {params['year']}"] if "year" in params else []))
            order = ("completed_at DESC, case_no" if params.get("sort") == "completedAt"
                     else "case_no ASC, case_no")
            want = [r["case_no"] for r in store.query(
                f"SELECT case_no FROM case_state FINAL WHERE {cond} ORDER BY {order}"
                + NO_PROJECTIONS)]
            assert [c["caseNo"] for c in got] == want
            assert total == len(want)
    # an item that has no case at all (in either chain) is an empty page, not an error
    empty = client.get("/api/v1/drill/items/no-such-item/cases",
                       params={"systemCode": items[0]["system_code"]}).json()
    assert (empty["total"], empty["items"]) == (0, [])


def test_anomaly_pages_equal_one_final_read(world: Any) -> None:
    client, store, _ = world
    some = store.query("SELECT code, qym, case_no FROM anomaly FINAL WHERE case_no != ''"
                       " LIMIT 1")[0]
    for params, cond in (({}, "1"), ({"code": some["code"]}, f"code = '{some['code']}'"),
                         ({"qym": some["qym"], "status": "open"},
                          f"qym = '{some['qym']}' AND resolved_at IS NULL"),
                         ({"caseNo": some["case_no"]}, f"case_no = '{some['case_no']}'")):
        got, total = _all_pages(client, "/api/v1/anomalies", **params)
        want = [r["anomaly_id"] for r in store.query(
            f"SELECT anomaly_id FROM anomaly FINAL WHERE {cond}"
            " ORDER BY opened_at DESC, anomaly_id" + NO_PROJECTIONS)]
        assert [a["anomalyId"] for a in got] == want and total == len(want) > 0
