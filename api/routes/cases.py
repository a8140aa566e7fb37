"""One case's trace, one archive's four-property check history, a system's daily log."""

from __future__ import annotations

import json
from datetime import date, timedelta
from typing import Annotated

from archwatch.api.auth import KPI_COLUMNS, ReaderDep
from archwatch.api.deps import ReadsDep
from archwatch.api.errors import ApiError
from archwatch.api.models import AnomalyOut, CaseTrace, CheckOut, DailyLog, TraceEvent
from archwatch.api.queries import anomaly_out
from archwatch.api.routes.stats import case_out
from fastapi import APIRouter, Query

from archwatch.casedoc import CASE_DOCS, current
from archwatch.timeutil import to_iso_utc

router = APIRouter(prefix="/api/v1", tags=["cases"])

PROPERTIES = {"1": "真实性", "2": "完整性", "3": "可用性", "4": "安全性"}


# The trace's two primary-key reads ({c}: the case number): the case's state and its
# anomalies as pre-rendered rows (casedoc.CASE_DOCS, 0018: one column of case_doc), its
# events from event_log (ordered by entity). bench/reads.py times each.
TRACE_DOCS = CASE_DOCS
TRACE_EVENTS = ("SELECT event_id, type, toUnixTimestamp64Milli(occurred_at) AS at, source,"
                " archive_no, payload FROM event_log FINAL WHERE entity = {c:String}"
                " ORDER BY occurred_at, event_id")


@router.get("/cases/{caseNo}", response_model=CaseTrace)
def case_trace(store: ReadsDep, p: ReaderDep, caseNo: str) -> CaseTrace:  # noqa: N803
    """Every event of the case's chain in time order, its status and its anomalies."""
    docs = current(r["doc"] for r in store.query(TRACE_DOCS, {"c": caseNo}))
    state = docs.state
    visible = p.allows(state, KPI_COLUMNS) if state else not p.scope
    if not visible:  # outside the scope looks like absent
        raise ApiError(404, "not_found", f"no case {caseNo!r}")
    events = store.query(TRACE_EVENTS, {"c": caseNo})
    if not state and not events:
        raise ApiError(404, "not_found", f"no case {caseNo!r}")
    return CaseTrace(
        caseNo=caseNo,
        case=case_out(state) if state else None,
        events=[TraceEvent(eventId=e["event_id"], type=e["type"], occurredAt=to_iso_utc(e["at"]),
                           source=e["source"], archiveNo=e["archive_no"] or None,
                           payload=json.loads(e["payload"])) for e in events],
        anomalies=[AnomalyOut(**anomaly_out(a)) for a in docs.anomalies],
    )


@router.get("/archives/{archiveNo}/checks", response_model=list[CheckOut])
def archive_checks(store: ReadsDep, p: ReaderDep, archiveNo: str) -> list[CheckOut]:  # noqa: N803
    """The four-property check (四性检测) history of one archive, oldest first."""
    cond, params = p.conditions(KPI_COLUMNS)
    scope = "" if not p.scope else (
        f" AND entity IN (SELECT case_no FROM case_state FINAL WHERE {cond})")
    rows = store.query(
        "SELECT event_id, entity, toUnixTimestamp64Milli(occurred_at) AS at, payload"
        " FROM event_log FINAL WHERE archive_no = {a:String} AND type = 'archive.checked'"
        + scope + " ORDER BY occurred_at, event_id", {"a": archiveNo, **params})
    out = []
    for r in rows:
        p = json.loads(r["payload"])
        items = [str(i) for i in p.get("failedItems", [])]
        props = sorted({PROPERTIES.get(i.split("-")[1], i) if i.count("-") >= 2 else i
                        for i in items})
        out.append(CheckOut(eventId=r["event_id"], caseNo=r["entity"],
                            occurredAt=to_iso_utc(r["at"]), passed=bool(p.get("passed")),
                            failedItems=items, failedProperties=props))
    return out


@router.get("/systems/{systemCode}/daily-log", response_model=list[DailyLog])
def daily_log(
    store: ReadsDep, p: ReaderDep, systemCode: str,  # noqa: N803
    start: Annotated[date | None, Query(alias="from", description="first day (Asia/Shanghai)")] = None,  # noqa: E501
    end: Annotated[date | None, Query(alias="to", description="last day, inclusive")] = None,
) -> list[DailyLog]:
    """Archives received per day for one system's cases, with their check outcome."""
    if start and end and end < start:
        raise ApiError(400, "invalid_parameter", "to: must not be before from")
    if start and end and end - start > timedelta(days=366):
        raise ApiError(400, "invalid_parameter", "at most 366 days per request")
    p.narrow({"systemCode": systemCode})
    scope, params = p.conditions(KPI_COLUMNS)
    params["s"] = systemCode
    cond = f" AND {scope}"
    if start:
        cond += " AND day >= {d0:Date}"
        params["d0"] = start.isoformat()
    if end:
        cond += " AND day <= {d1:Date}"
        params["d1"] = end.isoformat()
    rows = store.query(
        "SELECT toString(toDate(first_received_at, 'Asia/Shanghai')) AS day, count() AS received,"
        " countIf(status = 'ARCHIVED_OK') AS passed, countIf(status = 'ARCHIVED_FAIL') AS failed,"
        " countIf(status = 'ARCHIVED_UNCHECKED') AS unchecked FROM case_state FINAL"
        " WHERE system_code = {s:String} AND first_received_at IS NOT NULL" + cond +
        " GROUP BY day ORDER BY day LIMIT 1000", params)
    return [DailyLog(**r) for r in rows]
