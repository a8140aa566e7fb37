"""Read the conclusions back out of the store, in the golden files' JSON shapes."""

from __future__ import annotations

from typing import Any

from archwatch.kpi import time_diff_days
from archwatch.store import Store

# Epoch-ms text of a DateTime64(3) column, or NULL.
_MS = "toUnixTimestamp64Milli({c})"


def _iso(ms: int | None) -> str | None:
    from archwatch.timeutil import to_iso_utc

    return to_iso_utc(ms)


def _none(v: str) -> str | None:
    return v if v != "" else None


def anomalies(store: Store) -> list[dict[str, Any]]:
    rows = store.query(
        "SELECT anomaly_id, code, case_no, archive_no, receiver_id, qym, dept_code, system_code,"
        " task_code, toUnixTimestamp64Milli(opened_at) AS opened,"
        " toUnixTimestamp64Milli(resolved_at) AS resolved, detail"
        " FROM anomaly FINAL ORDER BY code, case_no, archive_no, receiver_id, opened, anomaly_id"
    )
    return [
        {
            "anomalyId": r["anomaly_id"], "code": r["code"], "caseNo": _none(r["case_no"]),
            "archiveNo": _none(r["archive_no"]), "receiverId": _none(r["receiver_id"]),
            "qym": _none(r["qym"]), "deptCode": _none(r["dept_code"]),
            "systemCode": _none(r["system_code"]), "taskCode": _none(r["task_code"]),
            "openedAt": _iso(r["opened"]), "resolvedAt": _iso(r["resolved"]),
            "detail": r["detail"],
        }
        for r in rows
    ]


def summary(store: Store) -> dict[str, dict[str, int]]:
    rows = store.query(
        "SELECT code, count() AS total, countIf(resolved_at IS NULL) AS open"
        " FROM anomaly FINAL GROUP BY code ORDER BY code"
    )
    return {r["code"]: {"total": r["total"], "open": r["open"]} for r in rows}


def cases(store: Store) -> list[dict[str, Any]]:
    rows = store.query(
        "SELECT case_no, status, toUnixTimestamp64Milli(first_received_at) AS first,"
        " archive_count FROM case_state FINAL ORDER BY case_no"
    )
    return [
        {"caseNo": r["case_no"], "status": r["status"], "firstReceivedAt": _iso(r["first"]),
         "archiveCount": r["archive_count"]}
        for r in rows
    ]


KPI_SQL = """
SELECT toString(year) AS year, qym, dept_code, system_code, task_id,
       sum(kpi) AS kpi, sum(archived) AS archived, sum(archived_succ) AS archived_succ,
       sum(archived_fail) AS archived_fail, sum(cycle_ms_sum) AS cycle_ms_sum,
       formatDateTime(max(last_receive), '%Y-%m-%d %H:%i:%S', 'Asia/Shanghai') AS last_receive
FROM kpi_task FINAL
GROUP BY year, qym, dept_code, system_code, task_id
HAVING kpi != 0
ORDER BY year, qym, dept_code, system_code, task_id
"""


def kpi_rows(store: Store) -> list[dict[str, Any]]:
    out = []
    for r in store.query(KPI_SQL):
        out.append({
            "year": r["year"], "qym": r["qym"], "deptCode": r["dept_code"],
            "systemCode": r["system_code"], "taskId": r["task_id"], "kpi": r["kpi"],
            "archived": r["archived"], "archivedSucc": r["archived_succ"],
            "archivedFail": r["archived_fail"], "UnArchived": r["kpi"] - r["archived"],
            "timeDiff": time_diff_days(r["cycle_ms_sum"], r["archived"]),
            "lastReceive": r["last_receive"],
        })
    return out


def full(store: Store, counts: dict[str, int] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if counts is not None:
        out["counts"] = counts
    out["summary"] = summary(store)
    out["anomalies"] = anomalies(store)
    out["cases"] = cases(store)
    out["kpi"] = kpi_rows(store)
    return out
